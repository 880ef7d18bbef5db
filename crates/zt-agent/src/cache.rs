//! What the agent holds for its workloads: the entries it may issue, an X.509-SVID
//! for each, the bundle and the revocations, as the server last sent them. The
//! node loop changes it; the Workload API reads the [`Snapshot`]s it publishes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use zt_api::agent::{Entry, PolicySet, RevokedId, SyncResponse};
use zt_identity::{Bundle, TrustDomain};

/// An X.509-SVID held for an entry, with its private key.
#[derive(Clone, PartialEq, Eq)]
pub struct X509Material {
    /// The SPIFFE ID it names.
    pub spiffe_id: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
    /// Lowercase hex, no separators.
    pub serial: String,
    /// notBefore, unix seconds.
    pub not_before: u64,
    /// notAfter, unix seconds.
    pub not_after: u64,
    /// When it is renewed: half its life after it was signed, less a random jitter.
    pub rotate_at: u64,
    /// The revision of the entry it was signed for.
    pub revision: u64,
}

impl std::fmt::Debug for X509Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "X509Material({}, serial {})", self.spiffe_id, self.serial)
    }
}

/// An entry and the SVID held for it, if any yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The registration entry.
    pub entry: Entry,
    /// Its current SVID; `None` while the first one is being signed.
    pub svid: Option<Arc<X509Material>>,
}

/// Whether the agent can serve identities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    /// Starting: not yet attested or not yet synced once.
    #[default]
    Starting,
    /// Serving what it holds (maybe from cache while the server is unreachable).
    Serving,
    /// Evicted, banned or its own SVID expired: serves nothing until attested again.
    NotAttested,
}

/// What the Workload API serves, published whole on every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Whether there is anything to serve.
    pub status: Status,
    /// Every entry the agent may issue, with its SVID.
    pub identities: Arc<Vec<Identity>>,
    /// The trust domain's bundle.
    pub bundle: Option<Arc<Bundle>>,
    /// Revocation lists (DER), one per authority, for the Workload API's `crl` field.
    pub crls: Arc<Vec<Vec<u8>>>,
    /// The revoked SPIFFE IDs, sorted by ID, for the revocations feed.
    pub revoked_ids: Arc<Vec<RevokedId>>,
    /// The newest authorization policies, for the proxies.
    pub policies: Option<Arc<PolicySet>>,
}

/// The agent's working state.
#[derive(Default)]
pub struct Cache {
    entries: BTreeMap<String, Entry>,
    svids: HashMap<String, Arc<X509Material>>,
    revoked_serials: HashSet<String>,
    /// SPIFFE ID → cutoff: SVIDs with an earlier notBefore are revoked.
    revoked_ids: HashMap<String, u64>,
    bundle: Option<Arc<Bundle>>,
    crls: Arc<Vec<Vec<u8>>>,
    /// As the server sent them, sorted by ID.
    revoked_id_list: Arc<Vec<RevokedId>>,
    policies: Option<Arc<PolicySet>>,
}

impl Cache {
    /// A cache starting from a known bundle (from the data dir, or the trust bundle).
    pub fn with_bundle(bundle: Bundle) -> Self {
        Self {
            bundle: Some(Arc::new(bundle)),
            ..Self::default()
        }
    }

    /// Takes in the server's state: entries no longer listed lose their SVIDs.
    pub fn apply_sync(&mut self, sync: SyncResponse, trust_domain: &TrustDomain) -> Result<(), String> {
        if let Some(bundle) = sync.bundle {
            let parsed = Bundle::parse_jwks(trust_domain.clone(), &bundle.jwks)
                .map_err(|e| format!("bundle from the server: {e}"))?;
            self.bundle = Some(Arc::new(parsed));
        }
        self.entries = sync.entries.into_iter().map(|e| (e.id.clone(), e)).collect();
        self.svids.retain(|id, _| self.entries.contains_key(id));
        self.revoked_serials = sync.revoked_serials.into_iter().collect();
        let mut revoked_ids = sync.revoked_ids;
        revoked_ids.sort_by(|a, b| a.spiffe_id.cmp(&b.spiffe_id));
        self.revoked_ids = revoked_ids
            .iter()
            .map(|r| (r.spiffe_id.clone(), u64::try_from(r.issued_before).unwrap_or(0)))
            .collect();
        self.revoked_id_list = Arc::new(revoked_ids);
        self.crls = Arc::new(sync.crls);
        // Sent only when they change: absent keeps what the agent has.
        if let Some(policies) = sync.policies {
            self.policies = Some(Arc::new(policies));
        }
        Ok(())
    }

    /// The bundle, if one is known.
    pub fn bundle(&self) -> Option<&Arc<Bundle>> {
        self.bundle.as_ref()
    }

    /// Entries that need an SVID signed now: none yet, signed for an older
    /// revision, due for rotation, or revoked.
    pub fn due(&self, now: u64) -> Vec<Entry> {
        self.entries
            .values()
            .filter(|entry| match self.svids.get(&entry.id) {
                None => true,
                Some(svid) => {
                    svid.revision != entry.revision || now >= svid.rotate_at || self.is_revoked(svid)
                }
            })
            .cloned()
            .collect()
    }

    /// Keeps a freshly signed SVID, if its entry is still there.
    pub fn insert_svid(&mut self, entry_id: &str, svid: X509Material) {
        if self.entries.contains_key(entry_id) {
            self.svids.insert(entry_id.to_owned(), Arc::new(svid));
        }
    }

    /// Drops SVIDs that expired or were revoked: nothing invalid is ever served.
    /// Returns whether anything was dropped.
    pub fn drop_invalid(&mut self, now: u64) -> bool {
        let before = self.svids.len();
        let revoked_serials = &self.revoked_serials;
        let revoked_ids = &self.revoked_ids;
        self.svids
            .retain(|_, svid| now < svid.not_after && !revoked(revoked_serials, revoked_ids, svid));
        self.svids.len() != before
    }

    /// The next moment after `now` something is due on its own: a rotation or an
    /// expiry (a rotation already overdue, say while the server is down, does not
    /// hide the expiry behind it).
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.svids
            .values()
            .flat_map(|s| [s.rotate_at, s.not_after])
            .filter(|t| *t > now)
            .min()
    }

    /// Forgets everything but the bundle: the agent was evicted.
    pub fn clear_identities(&mut self) {
        self.entries.clear();
        self.svids.clear();
    }

    /// What the Workload API should serve now.
    pub fn snapshot(&self, status: Status) -> Snapshot {
        let identities = self
            .entries
            .values()
            .map(|entry| Identity {
                entry: entry.clone(),
                svid: self.svids.get(&entry.id).cloned(),
            })
            .collect();
        Snapshot {
            status,
            identities: Arc::new(identities),
            bundle: self.bundle.clone(),
            crls: self.crls.clone(),
            revoked_ids: self.revoked_id_list.clone(),
            policies: self.policies.clone(),
        }
    }

    fn is_revoked(&self, svid: &X509Material) -> bool {
        revoked(&self.revoked_serials, &self.revoked_ids, svid)
    }
}

fn revoked(serials: &HashSet<String>, ids: &HashMap<String, u64>, svid: &X509Material) -> bool {
    serials.contains(&svid.serial)
        || ids
            .get(&svid.spiffe_id)
            .is_some_and(|cutoff| svid.not_before < *cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zt_api::agent::RevokedId;

    fn entry(id: &str, revision: u64) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: format!("spiffe://example.org/{id}"),
            selectors: vec!["unix:uid:0".into()],
            revision,
            ..Entry::default()
        }
    }

    fn svid(id: &str, serial: &str, revision: u64) -> X509Material {
        X509Material {
            spiffe_id: format!("spiffe://example.org/{id}"),
            chain: Vec::new(),
            key_pkcs8: Vec::new(),
            serial: serial.into(),
            not_before: 100,
            not_after: 200,
            rotate_at: 150,
            revision,
        }
    }

    fn sync(entries: Vec<Entry>) -> SyncResponse {
        SyncResponse {
            entries,
            ..SyncResponse::default()
        }
    }

    #[test]
    fn due_covers_new_changed_rotating_and_revoked_entries() {
        let td = TrustDomain::parse("example.org").unwrap();
        let mut cache = Cache::default();
        cache
            .apply_sync(sync(vec![entry("a", 1), entry("b", 1)]), &td)
            .unwrap();
        assert_eq!(cache.due(120).len(), 2);
        cache.insert_svid("a", svid("a", "0a", 1));
        cache.insert_svid("b", svid("b", "0b", 1));
        assert!(cache.due(120).is_empty());
        assert_eq!(cache.due(150).len(), 2, "half-life reached");

        cache
            .apply_sync(sync(vec![entry("a", 2), entry("b", 1)]), &td)
            .unwrap();
        assert_eq!(
            cache.due(120).iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );

        let mut revoking = sync(vec![entry("a", 1), entry("b", 1)]);
        revoking.revoked_serials = vec!["0b".into()];
        cache.apply_sync(revoking, &td).unwrap();
        assert_eq!(
            cache.due(120).iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(cache.drop_invalid(120));
        assert!(cache.snapshot(Status::Serving).identities[1].svid.is_none());
    }

    #[test]
    fn id_revocation_uses_not_before() {
        let td = TrustDomain::parse("example.org").unwrap();
        let mut cache = Cache::default();
        let mut state = sync(vec![entry("a", 1)]);
        state.revoked_ids = vec![RevokedId {
            spiffe_id: "spiffe://example.org/a".into(),
            issued_before: 100,
        }];
        cache.apply_sync(state.clone(), &td).unwrap();
        cache.insert_svid("a", svid("a", "0a", 1));
        assert!(
            cache.due(120).is_empty(),
            "notBefore 100 is not before the cutoff 100"
        );
        state.revoked_ids[0].issued_before = 101;
        cache.apply_sync(state, &td).unwrap();
        assert_eq!(cache.due(120).len(), 1);
    }

    #[test]
    fn removed_entries_lose_their_svids_and_expired_ones_go() {
        let td = TrustDomain::parse("example.org").unwrap();
        let mut cache = Cache::default();
        cache
            .apply_sync(sync(vec![entry("a", 1), entry("b", 1)]), &td)
            .unwrap();
        cache.insert_svid("a", svid("a", "0a", 1));
        cache.insert_svid("b", svid("b", "0b", 1));
        cache.apply_sync(sync(vec![entry("a", 1)]), &td).unwrap();
        cache.insert_svid("b", svid("b", "0b", 1));
        let snapshot = cache.snapshot(Status::Serving);
        assert_eq!(snapshot.identities.len(), 1);
        assert!(!cache.drop_invalid(199));
        assert_eq!(cache.next_deadline(120), Some(150));
        assert_eq!(
            cache.next_deadline(150),
            Some(200),
            "an overdue rotation does not hide the expiry"
        );
        assert!(cache.drop_invalid(200));
        assert_eq!(cache.next_deadline(0), None);
    }
}
