//! Rate limits on what an attacker would repeat: failed sign-ins per user and
//! per source address, failed client authentications and grants per client
//! and per address. Token buckets that failures drain and time refills;
//! successes cost nothing, so a busy, honest client is never slowed.
//!
//! Memory is bounded: past [`MAX_KEYS`] buckets, the fullest (least
//! interesting) are dropped first.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most buckets kept per limiter.
pub const MAX_KEYS: usize = 100_000;

/// One kind of limit: `burst` failures at once, refilled at `per_minute`.
pub struct Limiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Limiter {
    /// A limiter allowing `burst` failures, refilled at `per_minute`.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(since).as_secs_f64() * self.per_second).min(self.burst)
    }

    /// `Err(wait)` when `key` has no failure left to spend.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        // A poisoned lock (a panic while it was held) refuses: fail closed.
        let Ok(buckets) = self.buckets.lock() else {
            return Err(Duration::from_secs(1));
        };
        match buckets.get(key) {
            Some((tokens, since)) => {
                let level = self.level(*tokens, *since, now);
                if level >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64(
                        (1.0 - level) / self.per_second.max(f64::MIN_POSITIVE),
                    ))
                }
            }
            None => Ok(()),
        }
    }

    /// Spends one failure of `key`.
    pub fn charge(&self, key: &str) {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // Drop the buckets that have refilled: they limit nothing.
            let (burst, per_second) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, since)| {
                (*tokens + now.duration_since(*since).as_secs_f64() * per_second) < burst
            });
            if buckets.len() >= MAX_KEYS {
                return;
            }
        }
        let level = match buckets.get(key) {
            Some((tokens, since)) => self.level(*tokens, *since, now),
            None => self.burst,
        };
        buckets.insert(key.to_owned(), ((level - 1.0).max(0.0), now));
    }
}

/// Every limit of the provider.
pub struct Limits {
    /// Failed sign-ins per user name.
    pub sign_in_user: Limiter,
    /// Failed sign-ins per source address.
    pub sign_in_ip: Limiter,
    /// Failed token requests (client authentication, grants) per client.
    pub token_client: Limiter,
    /// Failed token requests per source address.
    pub token_ip: Limiter,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sign_in_user: Limiter::new(5, 5),
            sign_in_ip: Limiter::new(20, 20),
            token_client: Limiter::new(20, 60),
            token_ip: Limiter::new(50, 120),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_drain_the_bucket_and_successes_cost_nothing() {
        let limiter = Limiter::new(3, 1);
        for _ in 0..100 {
            assert!(limiter.check("alice").is_ok(), "checks alone never drain");
        }
        for _ in 0..3 {
            assert!(limiter.check("alice").is_ok());
            limiter.charge("alice");
        }
        let wait = limiter.check("alice").unwrap_err();
        assert!(
            wait > Duration::from_secs(30),
            "refilled at one a minute: {wait:?}"
        );
        assert!(limiter.check("bob").is_ok(), "keys are independent");
    }
}
