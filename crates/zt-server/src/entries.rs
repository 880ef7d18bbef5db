//! Every registration entry in memory, kept current from the datastore's change
//! feed one entry at a time: a change costs one read, never a full reload. The
//! revocation cutoffs of SPIFFE IDs and the newest policy version ride along, so
//! that signing and syncing need no read.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use zt_identity::SpiffeId;
use zt_store::{Entry, PolicyVersion, Revoked, Selector, Store, StoreError};

/// How many changes are read per round trip when catching up.
const CHANGE_BATCH: u32 = 1000;

/// Entries by ID, with the indexes authorization needs.
#[derive(Default)]
struct Index {
    entries: HashMap<String, Entry>,
    /// Workload entries by parent ID.
    by_parent: HashMap<SpiffeId, BTreeSet<String>>,
    /// IDs of node alias entries.
    aliases: BTreeSet<String>,
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        self.remove(&entry.id);
        if entry.spec.node {
            self.aliases.insert(entry.id.clone());
        } else {
            self.by_parent
                .entry(entry.spec.parent_id.clone())
                .or_default()
                .insert(entry.id.clone());
        }
        self.entries.insert(entry.id.clone(), entry);
    }

    fn remove(&mut self, id: &str) {
        let Some(old) = self.entries.remove(id) else {
            return;
        };
        self.aliases.remove(id);
        if let Some(siblings) = self.by_parent.get_mut(&old.spec.parent_id) {
            siblings.remove(id);
            if siblings.is_empty() {
                self.by_parent.remove(&old.spec.parent_id);
            }
        }
    }

    /// The agent itself and the node aliases whose selectors it all has.
    fn parents_of(&self, agent: &SpiffeId, agent_selectors: &[Selector]) -> Vec<SpiffeId> {
        let mut parents = vec![agent.clone()];
        parents.extend(
            self.aliases
                .iter()
                .filter_map(|id| self.entries.get(id))
                .filter(|e| e.spec.selectors.iter().all(|s| agent_selectors.contains(s)))
                .map(|e| e.spec.spiffe_id.clone()),
        );
        parents
    }
}

/// The entry cache.
pub struct EntryCache {
    store: Store,
    entries: RwLock<Index>,
    /// SPIFFE ID → revocation cutoff: its SVIDs with an earlier notBefore are revoked.
    id_revocations: RwLock<HashMap<String, u64>>,
    /// The newest authorization policy version, if any was applied.
    policies: RwLock<Option<Arc<PolicyVersion>>>,
    /// Position in the change feed the cache reflects; bumped on every applied change.
    version: watch::Sender<u64>,
}

impl EntryCache {
    /// Loads every entry. The feed position is read first, so a change racing the
    /// load is applied again afterwards (applying a change twice is harmless).
    pub async fn load(store: Store) -> Result<Arc<Self>, StoreError> {
        let seq = store.latest_change().await?;
        let mut entries = Index::default();
        for entry in store.list_entries(None, None).await? {
            entries.insert(entry);
        }
        let id_revocations = store
            .revocations(crate::now())
            .await?
            .into_iter()
            .filter_map(|r| match r.revoked {
                Revoked::SpiffeId {
                    spiffe_id,
                    issued_before,
                } => Some((spiffe_id, issued_before)),
                Revoked::Serial(_) => None,
            })
            .collect();
        let policies = store.latest_policies().await?.map(Arc::new);
        let (version, _) = watch::channel(seq);
        Ok(Arc::new(Self {
            store,
            entries: RwLock::new(entries),
            id_revocations: RwLock::new(id_revocations),
            policies: RwLock::new(policies),
            version,
        }))
    }

    /// Wakes after every applied change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// How many entries are cached.
    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.entries.len()).unwrap_or(0)
    }

    /// Whether no entry is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry with this ID.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.entries.read().ok()?.entries.get(id).cloned()
    }

    /// The revocation cutoff of `id`, if it was revoked: an SVID signed for it now
    /// must not have an earlier notBefore. (Right after a revocation on another
    /// server this may lag by the change feed's delay; an SVID signed in that
    /// window counts as revoked and its agent asks again.)
    pub fn id_revoked_before(&self, id: &SpiffeId) -> Option<u64> {
        self.id_revocations.read().ok()?.get(&id.to_string()).copied()
    }

    /// The newest authorization policy version.
    pub fn policies(&self) -> Option<Arc<PolicyVersion>> {
        self.policies.read().ok()?.clone()
    }

    /// The entries an agent may issue: those whose parent is the agent itself, or a
    /// node alias whose selectors are all among the agent's; expired entries never.
    pub fn authorized_for(&self, agent: &SpiffeId, agent_selectors: &[Selector], now: u64) -> Vec<Entry> {
        let Ok(index) = self.entries.read() else {
            return Vec::new();
        };
        let mut authorized: Vec<Entry> = index
            .parents_of(agent, agent_selectors)
            .iter()
            .filter_map(|parent| index.by_parent.get(parent))
            .flatten()
            .filter_map(|id| index.entries.get(id))
            .filter(|e| !expired(e, now))
            .cloned()
            .collect();
        authorized.sort_by(|a, b| a.id.cmp(&b.id));
        authorized.dedup_by(|a, b| a.id == b.id);
        authorized
    }

    /// The entry `id` if the agent may issue it: cost grows with the number of node
    /// aliases, not of entries.
    pub fn authorized_entry(
        &self,
        id: &str,
        agent: &SpiffeId,
        agent_selectors: &[Selector],
        now: u64,
    ) -> Option<Entry> {
        let index = self.entries.read().ok()?;
        let entry = index.entries.get(id)?;
        if entry.spec.node || expired(entry, now) {
            return None;
        }
        index
            .parents_of(agent, agent_selectors)
            .contains(&entry.spec.parent_id)
            .then(|| entry.clone())
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
            for change in &changes {
                match change.kind.as_str() {
                    "entry" => {
                        let current = self.store.entry(&change.subject).await?;
                        if let Ok(mut index) = self.entries.write() {
                            match current {
                                Some(entry) => index.insert(entry),
                                None => index.remove(&change.subject),
                            }
                        }
                    }
                    "revocation" => {
                        let Some(id) = change.subject.strip_prefix("id:") else {
                            continue;
                        };
                        let Ok(parsed) = SpiffeId::parse(id) else { continue };
                        let cutoff = self.store.id_revoked_before(&parsed, crate::now()).await?;
                        if let Ok(mut revoked) = self.id_revocations.write() {
                            match cutoff {
                                Some(cutoff) => revoked.insert(id.to_owned(), cutoff),
                                None => revoked.remove(id),
                            };
                        }
                    }
                    "policy" => {
                        let latest = self.store.latest_policies().await?.map(Arc::new);
                        if let Ok(mut policies) = self.policies.write() {
                            *policies = latest;
                        }
                    }
                    _ => {}
                }
            }
            self.version.send_replace(last);
        }
    }
}

/// An entry past its `expires_at` issues nothing.
fn expired(entry: &Entry, now: u64) -> bool {
    entry.spec.expires_at.is_some_and(|at| at <= now)
}
