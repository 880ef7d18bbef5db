//! zt's hot paths measured on the machine this runs on, for BENCHMARKS.md
//! (`zt bench`): each bench reports its [`Figure`]s one by one, as they are
//! measured, and the caller prints them.

#![forbid(unsafe_code)]

pub mod agent;
pub mod analyze;
pub mod devices;
mod error;
pub mod identity;
pub mod observe;
pub mod pdp;
pub mod policy;
pub mod server;
pub mod tokens;

use std::time::{Duration, Instant};

pub use error::Error;
use zt_identity::SpiffeId;

/// One measured figure: one line of `zt bench`'s output.
#[derive(Debug, Clone)]
pub enum Figure {
    /// Each call of one operation timed: p50, p99 and calls per second on one core.
    Calls {
        /// The operation.
        name: String,
        /// Each call's time.
        samples: Samples,
    },
    /// Changes timed from where they are made to where they arrive: p50, p99
    /// and max, and how many.
    Delays {
        /// What travels where.
        name: String,
        /// Each change's delay.
        samples: Samples,
        /// What the changes are, e.g. `entries`.
        what: String,
    },
    /// Calls of an API timed by a caller that holds `entries` entries.
    Latency {
        /// The call.
        name: String,
        /// Each call's time.
        samples: Samples,
        /// Entries the caller holds.
        entries: usize,
    },
    /// Calls made by concurrent callers for a while, and how long each took.
    Throughput {
        /// The call.
        name: String,
        /// Each call's time.
        samples: Samples,
        /// Concurrent callers.
        callers: usize,
        /// How long they called.
        elapsed: Duration,
    },
    /// Requests made by concurrent clients for a while, each on a keep-alive
    /// connection, and how long each took.
    Requests {
        /// The request.
        name: String,
        /// Each request's time.
        samples: Samples,
        /// Concurrent clients.
        callers: usize,
        /// How long they called.
        elapsed: Duration,
    },
    /// Items processed one after the other on one thread, and how long it took.
    Rate {
        /// What was done.
        name: String,
        /// How many.
        items: u64,
        /// What they are, e.g. `records`.
        what: &'static str,
        /// How long.
        took: Duration,
    },
    /// CPU time one side of a run took, from `/proc`, over the items it handled.
    Cpu {
        /// Whose.
        name: String,
        /// How much CPU time.
        cpu: Duration,
        /// Over how long a run.
        elapsed: Duration,
        /// Items handled meanwhile.
        items: u64,
        /// What they are, e.g. `report`.
        what: &'static str,
    },
    /// Entries stored before the server started, and how long storing took.
    Stored {
        /// How many.
        entries: usize,
        /// How long.
        took: Duration,
    },
}

/// Timings, sorted.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Sorts `samples`.
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    /// The `q` quantile (0 to 1), by the nearest rank below; zero if empty.
    pub fn percentile(&self, q: f64) -> Duration {
        let rank = (self.0.len().saturating_sub(1) as f64 * q) as usize;
        self.0.get(rank).copied().unwrap_or_default()
    }

    /// The longest; zero if empty.
    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Calls per second, one after the other: how many over their total time.
    pub fn per_second(&self) -> f64 {
        let total: Duration = self.0.iter().sum();
        self.0.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Times each of `n` calls of `op` (after up to 100 untimed ones).
pub fn measure(n: usize, mut op: impl FnMut()) -> Samples {
    for _ in 0..n.min(100) {
        op(); // warm-up
    }
    Samples::new(
        (0..n)
            .map(|_| {
                let start = Instant::now();
                op();
                start.elapsed()
            })
            .collect(),
    )
}

/// Seconds since the Unix epoch.
use zt_identity::clock::unix_seconds as now;

/// A workload entry of the benches: one selector, SPIRE's default TTLs.
fn workload_entry(id: &str, parent: &SpiffeId, selector: &str) -> Result<zt_store::EntrySpec, Error> {
    Ok(zt_store::EntrySpec {
        spiffe_id: SpiffeId::parse(id)?,
        parent_id: parent.clone(),
        selectors: vec![zt_store::Selector::parse(selector)?],
        x509_ttl: 3600,
        jwt_ttl: 300,
        dns_names: vec![],
        admin: false,
        node: false,
        expires_at: None,
        hint: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank_below() {
        let samples = Samples::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(samples.percentile(0.5), Duration::from_millis(50));
        assert_eq!(samples.percentile(0.99), Duration::from_millis(99));
        assert_eq!(samples.max(), Duration::from_millis(100));
        assert_eq!(Samples::default().percentile(0.5), Duration::ZERO);
    }

    #[test]
    fn measure_times_each_call() {
        let mut calls = 0;
        let samples = measure(10, || calls += 1);
        assert_eq!((samples.len(), calls), (10, 20));
        assert!(samples.per_second() > 0.0);
    }
}
