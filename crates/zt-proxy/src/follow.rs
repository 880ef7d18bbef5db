//! Following what changes outside the proxy, the two ways it is done: a stream
//! from zt agent, reconnected with backoff whenever it ends, and files, polled
//! for a change of name, size or modification time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The first wait after a failed attempt to reach zt agent.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest wait.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How often files are checked for changes.
pub(crate) const FILE_POLL: Duration = Duration::from_secs(1);

/// Waits that double from [`RETRY_MIN`] to [`RETRY_MAX`] while attempts fail.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(RETRY_MIN)
    }

    /// The wait before the next attempt; the one after is longer.
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(RETRY_MAX);
        wait
    }

    /// An attempt worked: the next failure waits the least again.
    pub(crate) fn reset(&mut self) {
        self.0 = RETRY_MIN;
    }
}

/// Runs `stream` again and again: each run follows a stream until it ends
/// (`Ok`: it had worked, the backoff starts over) or fails (`Err`, logged with
/// `what`). Never returns; the caller's supervision cancels it at shutdown.
pub(crate) async fn reconnecting<F, Fut>(what: &'static str, socket: &Path, mut stream: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut backoff = Backoff::new();
    loop {
        match stream().await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                let retry_in = backoff.next();
                tracing::warn!(socket = %socket.display(), error = %e, ?retry_in, "{what}");
                tokio::time::sleep(retry_in).await;
                continue;
            }
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// Names, sizes and modification times of the files in `paths`, directories
/// walked: two stamps differ when anything in them changed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stamp(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Stamp {
    pub(crate) fn of(paths: &[&Path]) -> Self {
        let mut stamp = Vec::new();
        let mut pending: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        while let Some(path) = pending.pop() {
            let Ok(meta) = std::fs::metadata(&path) else {
                stamp.push((path, 0, None));
                continue;
            };
            if !meta.is_dir() {
                stamp.push((path, meta.len(), meta.modified().ok()));
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|entry| entry.path()));
            }
        }
        stamp.sort();
        Self(stamp)
    }
}

/// Calls `changed` every time something in `paths` changes, checking every
/// [`FILE_POLL`]; `changed` says whether the change was taken (a half-written
/// set is not, and is tried again on the next change). Never returns.
pub async fn on_change(paths: &[&Path], mut changed: impl FnMut() -> bool) {
    let mut last = Stamp::of(paths);
    loop {
        tokio::time::sleep(FILE_POLL).await;
        let now = Stamp::of(paths);
        if now != last && changed() {
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_and_starts_over() {
        let mut backoff = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next()).collect();
        assert_eq!(waits[0], RETRY_MIN);
        assert_eq!(waits[1], RETRY_MIN * 2);
        assert_eq!(*waits.last().unwrap(), RETRY_MAX);
        backoff.reset();
        assert_eq!(backoff.next(), RETRY_MIN);
    }

    #[test]
    fn a_stamp_changes_with_any_file_under_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.yaml"), "a").unwrap();
        let before = Stamp::of(&[dir.path()]);
        assert_eq!(before, Stamp::of(&[dir.path()]));
        std::fs::write(dir.path().join("sub/a.yaml"), "ab").unwrap();
        assert_ne!(before, Stamp::of(&[dir.path()]));
        let missing = dir.path().join("missing");
        let gone = Stamp::of(&[&missing]);
        std::fs::write(&missing, "x").unwrap();
        assert_ne!(gone, Stamp::of(&[&missing]), "a file appearing is a change");
    }
}
