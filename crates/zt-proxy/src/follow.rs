//! Following what changes outside the proxy, the two ways it is done: a stream
//! from zt agent, reconnected with backoff whenever it ends, and files, polled
//! for a change of name, size or modification time ([`zt_task::files`]).

use std::future::Future;
use std::path::Path;
use std::time::Duration;

/// The first wait after a failed attempt to reach zt agent.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// The longest wait.
const RETRY_MAX: Duration = Duration::from_secs(10);

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
}
