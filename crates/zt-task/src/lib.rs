//! Supervision of a process's long-lived tasks (change-feed listeners, followers,
//! pollers, shippers): none may end silently. A supervised task that ends before
//! shutdown — it returned, or it panicked — is logged at error, counted in
//! `task_restarts_total{task}`, reported down (so `/readyz` turns red) and started
//! again after a backoff. A task that heals itself, such as a listener that
//! reconnects, reports its outages the same way through a [`Reporter`].

#![forbid(unsafe_code)]

pub mod files;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The first wait before a restart; doubled after each run shorter than [`HEALTHY_RUN`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long was healthy: the next restart waits [`FIRST_BACKOFF`] again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// The label of the task metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: &'static str,
}

/// The long-lived tasks of one process; cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks {
    /// Every task by name, and whether it is up now.
    up: Arc<Mutex<BTreeMap<&'static str, bool>>>,
    restarts: Family<TaskLabel, Counter>,
    up_gauge: Family<TaskLabel, Gauge>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tasks(down: {:?})", self.down())
    }
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `task_restarts` (a counter, `_total` in the exposition) and
    /// `task_up` (1 or 0), both labelled `task`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "task_restarts",
            "Times a background task ended (returned, panicked or lost its connection) and was restarted",
            self.restarts.clone(),
        );
        registry.register(
            "task_up",
            "Whether a background task is running (1) or down awaiting its restart (0)",
            self.up_gauge.clone(),
        );
    }

    /// The tasks that are down now, by name; empty when all run.
    pub fn down(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(name, _)| *name)
            .collect()
    }

    /// How often `task` was restarted.
    pub fn restarts(&self, task: &'static str) -> u64 {
        self.restarts.get_or_create(&TaskLabel { task }).get()
    }

    /// A handle through which a self-healing task reports on itself.
    pub fn reporter(&self, task: &'static str) -> Reporter {
        let reporter = Reporter {
            tasks: self.clone(),
            task,
        };
        // Exposed from the start: a sample at 0, not a missing one.
        drop(self.restarts.get_or_create(&TaskLabel { task }));
        reporter.set_up(true);
        reporter
    }

    /// Runs the task `make()` returns until `stop` turns true, and again whenever it
    /// ends before that (returns or panics): logged at error, counted, reported
    /// down, restarted after a backoff from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`].
    /// The task itself must end when `stop` turns true.
    pub fn spawn<F, Fut>(
        &self,
        task: &'static str,
        mut stop: watch::Receiver<bool>,
        mut make: F,
    ) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let reporter = self.reporter(task);
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                let ended = tokio::spawn(make()).await;
                if *stop.borrow() {
                    return;
                }
                let how = match ended {
                    Ok(()) => "ended".to_owned(),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                    Err(e) => format!("was cancelled: {e}"),
                };
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                reporter.down(&how, backoff);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                reporter.restarted();
            }
        })
    }

    /// As [`Tasks::spawn`], for a task that never ends by itself (a follower
    /// that reconnects forever) and holds nothing that must be finished: it is
    /// dropped where it waits when `stop` turns true.
    pub fn spawn_until_stop<F, Fut>(
        &self,
        task: &'static str,
        stop: watch::Receiver<bool>,
        mut make: F,
    ) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let inner = stop.clone();
        self.spawn(task, stop, move || {
            let run = make();
            let mut stop = inner.clone();
            async move {
                tokio::select! {
                    () = run => {}
                    _ = stop.wait_for(|stop| *stop) => {}
                }
            }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.up.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How one task reports its outages; see [`Tasks::reporter`].
#[derive(Clone, Debug)]
pub struct Reporter {
    tasks: Tasks,
    task: &'static str,
}

impl Reporter {
    /// The task stopped working (`why`) and will try again after `retry_in`:
    /// logged at error, counted as a restart, and down until [`Reporter::restarted`].
    pub fn down(&self, why: &str, retry_in: Duration) {
        tracing::error!(
            task = self.task,
            retry_in_ms = retry_in.as_millis(),
            "background task {why}: restarting it"
        );
        self.tasks
            .restarts
            .get_or_create(&TaskLabel { task: self.task })
            .inc();
        self.set_up(false);
    }

    /// The task runs again.
    pub fn restarted(&self) {
        tracing::info!(task = self.task, "background task restarted");
        self.set_up(true);
    }

    fn set_up(&self, up: bool) {
        self.tasks.lock().insert(self.task, up);
        self.tasks
            .up_gauge
            .get_or_create(&TaskLabel { task: self.task })
            .set(i64::from(up));
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_or_panics_is_counted_reported_and_restarted() {
        let tasks = Tasks::new();
        let (stop, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let (ran, mut ran_rx) = watch::channel(0u32);
        let (counter, inner) = (runs.clone(), stop_rx.clone());
        let handle = tasks.spawn("flaky", stop_rx, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let (ran, mut stop) = (ran.clone(), inner.clone());
            async move {
                ran.send_replace(n);
                match n {
                    1 => (),
                    2 => panic!("second run fails"),
                    _ => {
                        let _ = stop.wait_for(|stop| *stop).await;
                    }
                }
            }
        });
        ran_rx.wait_for(|n| *n == 3).await.unwrap();
        assert_eq!(tasks.restarts("flaky"), 2);
        assert!(tasks.down().is_empty(), "the third run is up");
        stop.send_replace(true);
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3, "not restarted after a clean stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_ending_at_shutdown_is_not_restarted() {
        let tasks = Tasks::new();
        let (stop, stop_rx) = watch::channel(false);
        let inner = stop_rx.clone();
        let handle = tasks.spawn("clean", stop_rx, move || {
            let mut stop = inner.clone();
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }
        });
        stop.send_replace(true);
        handle.await.unwrap();
        assert_eq!(tasks.restarts("clean"), 0);
        assert!(tasks.down().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_never_ends_is_dropped_at_stop_and_not_restarted() {
        let tasks = Tasks::new();
        let (stop, stop_rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        let handle = tasks.spawn_until_stop("forever", stop_rx, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending()
        });
        tokio::task::yield_now().await;
        stop.send_replace(true);
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(tasks.restarts("forever"), 0);
    }

    #[test]
    fn a_reporter_turns_readiness_red_until_restarted_and_counts() {
        let tasks = Tasks::new();
        let feed = tasks.reporter("change_feed");
        assert!(tasks.down().is_empty());
        feed.down("lost its connection", FIRST_BACKOFF);
        assert_eq!(tasks.down(), vec!["change_feed"]);
        feed.restarted();
        assert!(tasks.down().is_empty());
        assert_eq!(tasks.restarts("change_feed"), 1);
        let mut registry = Registry::with_prefix("zt_test");
        tasks.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("zt_test_task_restarts_total{task=\"change_feed\"} 1"),
            "{text}"
        );
        assert!(text.contains("zt_test_task_up{task=\"change_feed\"} 1"), "{text}");
    }
}
