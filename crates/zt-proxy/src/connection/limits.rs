//! Connection limits checked at accept: open connections in all, and from
//! one source address.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::refusal::Refusal;

/// The slots of one listener.
pub struct Slots {
    all: Arc<Semaphore>,
    per_source: SourceSlots,
}

/// What one open connection holds; released on drop.
pub struct Held {
    _all: OwnedSemaphorePermit,
    _source: SourceSlot,
}

impl Slots {
    /// `max` connections in all, `max_per_source` from one address.
    pub fn new(max: usize, max_per_source: usize) -> Self {
        Self {
            all: Arc::new(Semaphore::new(max)),
            per_source: SourceSlots {
                max: max_per_source,
                open: Arc::default(),
            },
        }
    }

    /// The slots for one more connection from `ip`, or the limit it hits.
    pub fn acquire(&self, ip: IpAddr) -> Result<Held, Refusal> {
        let all = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::ConnectionLimit)?;
        let source = self
            .per_source
            .acquire(ip)
            .ok_or(Refusal::SourceConnectionLimit)?;
        Ok(Held {
            _all: all,
            _source: source,
        })
    }
}

/// Open connections per source address, each held by a [`SourceSlot`].
#[derive(Clone)]
struct SourceSlots {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl SourceSlots {
    /// A slot for one more connection from `ip`, unless it holds `max`.
    fn acquire(&self, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One open connection from a source; released on drop.
struct SourceSlot {
    slots: SourceSlots,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Entry::Occupied(mut entry) = open.entry(self.ip) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn each_limit_refuses_with_its_own_reason_and_slots_come_back() {
        let slots = Slots::new(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.acquire(a).unwrap();
        let _second = slots.acquire(a).unwrap();
        assert_eq!(slots.acquire(a).err(), Some(Refusal::SourceConnectionLimit));
        let _third = slots.acquire(b).unwrap();
        assert_eq!(slots.acquire(b).err(), Some(Refusal::ConnectionLimit));
        drop(first);
        assert!(
            slots.acquire(a).is_ok(),
            "a closed connection gives its slots back"
        );
        assert!(slots.per_source.open.lock().unwrap().len() <= 2);
    }
}
