//! Files followed by polling: a change of name, size or modification time of
//! anything under the paths (directories walked) is a change. Polling, not
//! inotify: it sees files replaced by rename, on any file system, and costs a
//! few `stat`s a second.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often files are checked for changes.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Names, sizes and modification times of the files in `paths`, directories
/// walked: two stamps differ when anything in them changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Stamp(Vec<(PathBuf, u64, Option<SystemTime>)>);

impl Stamp {
    /// The stamp of everything under `paths` now.
    pub fn of(paths: &[&Path]) -> Self {
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
