//! Every registration entry in memory, kept current from the datastore's change
//! feed one entry at a time: a change costs one read, never a full reload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use zt_identity::SpiffeId;
use zt_store::{Entry, Selector, Store, StoreError};

/// How many changes are read per round trip when catching up.
const CHANGE_BATCH: u32 = 1000;

/// The entry cache.
pub struct EntryCache {
    store: Store,
    entries: RwLock<HashMap<String, Entry>>,
    /// Position in the change feed the cache reflects; bumped on every applied change.
    version: watch::Sender<u64>,
}

impl EntryCache {
    /// Loads every entry. The feed position is read first, so a change racing the
    /// load is applied again afterwards (applying a change twice is harmless).
    pub async fn load(store: Store) -> Result<Arc<Self>, StoreError> {
        let seq = store.latest_change().await?;
        let entries = store
            .list_entries(None, None)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect();
        let (version, _) = watch::channel(seq);
        Ok(Arc::new(Self {
            store,
            entries: RwLock::new(entries),
            version,
        }))
    }

    /// Wakes after every applied change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// How many entries are cached.
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether no entry is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry with this ID.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.entries.read().ok()?.get(id).cloned()
    }

    /// The entries an agent may issue: those whose parent is the agent itself, or a
    /// node alias whose selectors are all among the agent's.
    pub fn authorized_for(&self, agent: &SpiffeId, agent_selectors: &[Selector]) -> Vec<Entry> {
        let Ok(entries) = self.entries.read() else {
            return Vec::new();
        };
        let mut parents = vec![agent.clone()];
        parents.extend(
            entries
                .values()
                .filter(|e| e.spec.node && e.spec.selectors.iter().all(|s| agent_selectors.contains(s)))
                .map(|e| e.spec.spiffe_id.clone()),
        );
        let mut authorized: Vec<Entry> = entries
            .values()
            .filter(|e| !e.spec.node && parents.contains(&e.spec.parent_id))
            .cloned()
            .collect();
        authorized.sort_by(|a, b| a.id.cmp(&b.id));
        authorized
    }

    /// Applies the datastore's changes as they come, until `stop`.
    pub async fn follow(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes = self.store.watch_changes();
        loop {
            if let Err(e) = self.catch_up().await {
                tracing::error!(error = %e, "entry cache could not read the change feed");
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Applies every change after the cache's position.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        loop {
            let from = *self.version.borrow();
            let changes = self.store.changes_since(from, CHANGE_BATCH).await?;
            let Some(last) = changes.last().map(|c| c.seq) else {
                return Ok(());
            };
            for change in changes.iter().filter(|c| c.kind == "entry") {
                let current = self.store.entry(&change.subject).await?;
                if let Ok(mut entries) = self.entries.write() {
                    match current {
                        Some(entry) => entries.insert(entry.id.clone(), entry),
                        None => entries.remove(&change.subject),
                    };
                }
            }
            self.version.send_replace(last);
        }
    }
}
