//! Where the proxy's own SVID and trust bundle come from, kept current: the SPIFFE
//! Workload API (`zt agent`, or any SPIFFE agent), or files for development,
//! reloaded when they change. Every change is published whole on a watch channel;
//! new handshakes use the newest identity, open connections keep theirs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use zt_identity::{Bundle, BundleSet, SpiffeId};
use zt_task::Tasks;

use crate::follow;

/// The proxy's SVID, its key and the bundles it trusts.
pub struct Identity {
    /// The SPIFFE ID of the SVID.
    pub spiffe_id: SpiffeId,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The SVID's private key.
    pub key: PrivateKeyDer<'static>,
    /// The bundles peers are verified against.
    pub bundles: Arc<BundleSet>,
    /// Serials (big-endian bytes) of revoked SVIDs, from the signed CRLs the
    /// Workload API pushes: peers presenting one are refused and cut off.
    pub revoked: Arc<HashSet<Vec<u8>>>,
    /// SPIFFE ID → unix seconds: its SVIDs with an earlier notBefore are revoked
    /// (`zt revoke --spiffe-id`), from zt agent's revocations feed.
    pub revoked_ids: Arc<HashMap<String, u64>>,
    /// The SVID's notBefore, unix seconds.
    pub not_before: u64,
    /// The SVID's notAfter, unix seconds: the proxy stops being able to
    /// handshake then unless a rotated SVID replaces this one.
    pub not_after: u64,
}

/// What revocation looks at in a peer's SVID.
#[derive(Debug)]
pub struct PeerSvid {
    /// Big-endian.
    pub serial: Vec<u8>,
    /// The verified SPIFFE ID.
    pub spiffe_id: String,
    /// notBefore, unix seconds.
    pub not_before: u64,
}

impl Identity {
    /// Whether a peer's SVID is revoked, by serial or by SPIFFE ID.
    pub fn is_revoked(&self, peer: &PeerSvid) -> bool {
        self.revoked.contains(&peer.serial)
            || self
                .revoked_ids
                .get(&peer.spiffe_id)
                .is_some_and(|cutoff| peer.not_before < *cutoff)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.spiffe_id)
    }
}

/// Why an identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct IdentityError {
    /// The file, flag or endpoint at fault.
    pub what: String,
    /// What is wrong.
    pub reason: String,
}

/// Where the identity comes from.
#[derive(Debug, Clone)]
pub enum IdentitySource {
    /// The SPIFFE Workload API on this Unix socket.
    WorkloadApi(PathBuf),
    /// Development files: certificate chain (PEM), key (PEM), bundle (PEM or JWKS).
    Files {
        /// `--cert`.
        cert: PathBuf,
        /// `--key`.
        key: PathBuf,
        /// `--bundle`.
        bundle: PathBuf,
    },
}

/// The current identity (`None` until there is one), kept current by a task.
pub type IdentityWatch = watch::Receiver<Option<Arc<Identity>>>;

/// Publishes identities.
type Publisher = Arc<watch::Sender<Option<Arc<Identity>>>>;

impl IdentitySource {
    /// Starts following the source, as the supervised task `identity`. Files
    /// must load now (a typo should fail at start, not silently later); the
    /// Workload API may come up after the proxy.
    pub fn follow(self, tasks: &Tasks, stop: watch::Receiver<bool>) -> Result<IdentityWatch, IdentityError> {
        match self {
            IdentitySource::Files { cert, key, bundle } => {
                let first = load_files(&cert, &key, &bundle)?;
                let (tx, rx) = watch::channel(Some(Arc::new(first)));
                let tx = Arc::new(tx);
                tasks.spawn_until_stop("identity", stop, move || {
                    follow_files(cert.clone(), key.clone(), bundle.clone(), tx.clone())
                });
                Ok(rx)
            }
            IdentitySource::WorkloadApi(socket) => {
                let (tx, rx) = watch::channel(None);
                let tx = Arc::new(tx);
                tasks.spawn_until_stop("identity", stop, move || {
                    let (socket, tx) = (socket.clone(), tx.clone());
                    async move {
                        follow::reconnecting("Workload API", &socket, || stream_identities(&socket, &tx))
                            .await;
                    }
                });
                Ok(rx)
            }
        }
    }
}

/// Reads the three files and checks that they belong together: the chain is an
/// SVID that verifies against the bundle, and the key is its key.
pub fn load_files(cert: &Path, key: &Path, bundle: &Path) -> Result<Identity, IdentityError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path).map_err(|e| IdentityError {
            what: format!("{flag} {}", path.display()),
            reason: e.to_string(),
        })
    };
    let fail = |flag: &str, path: &Path, reason: String| IdentityError {
        what: format!("{flag} {}", path.display()),
        reason,
    };
    let chain = zt_identity::x509::certificates_from_pem(&read("--cert", cert)?)
        .map_err(|e| fail("--cert", cert, e))?;
    let key_der =
        zt_identity::x509::private_key_from_pem(&read("--key", key)?).map_err(|e| fail("--key", key, e))?;
    let parsed = Bundle::parse(&read("--bundle", bundle)?, None)
        .map_err(|e| fail("--bundle", bundle, e.to_string()))?;
    let mut bundles = BundleSet::default();
    bundles.insert(parsed);
    assemble(chain, key_der, Arc::new(bundles)).map_err(|e| fail("--cert", cert, e))
}

/// Checks an SVID and its key against the bundles.
fn assemble(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: Arc<BundleSet>,
) -> Result<Identity, String> {
    let now = rustls::pki_types::UnixTime::now();
    let verified =
        zt_identity::verify_x509_svid(&chain, bundles.as_ref(), now, zt_identity::Purpose::ServerAuth)
            .map_err(|e| format!("not a valid SVID for the bundle: {e}"))?;
    let leaf = chain.first().ok_or("no certificate")?;
    let key_public = zt_ca::public_key_of(&key).map_err(|e| format!("unusable private key: {e}"))?;
    if key_public != zt_identity::x509::subject_public_key(leaf).map_err(|e| e.to_string())? {
        return Err("the key does not belong to the certificate".into());
    }
    Ok(Identity {
        spiffe_id: verified.spiffe_id().clone(),
        chain,
        key,
        bundles,
        revoked: Arc::default(),
        revoked_ids: Arc::default(),
        not_before: verified.not_before(),
        not_after: verified.not_after(),
    })
}

/// Reloads the files when they change. A half-replaced set (new cert, old
/// key) does not load; it is tried again on the next change, and the last good
/// identity stays in use meanwhile.
async fn follow_files(cert: PathBuf, key: PathBuf, bundle: PathBuf, tx: Publisher) {
    zt_task::files::on_change(&[&cert, &key, &bundle], || match load_files(&cert, &key, &bundle) {
        Ok(identity) => {
            tracing::info!(spiffe_id = %identity.spiffe_id, "identity reloaded from files");
            tx.send_replace(Some(Arc::new(identity)));
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "identity files changed but do not load; keeping the previous identity");
            false
        }
    })
    .await;
}

/// Follows the X.509-SVID stream and, from zt agent, the revoked SPIFFE IDs,
/// publishing an identity on every update of either. With the feed, nothing is
/// published before its first answer: a revoked peer gets no window at start.
async fn stream_identities(socket: &Path, tx: &Publisher) -> Result<(), String> {
    let client = zt_workload::WorkloadClient::new(socket)?;
    let mut svids = client.x509_svids().await.map_err(|s| s.message().to_owned())?;
    let mut feed = match client.revoked_ids().await {
        Ok(feed) => Some(feed),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::warn!(
                "the Workload API is not zt agent's: revocations by SPIFFE ID are not followed, only the serials of its CRLs"
            );
            None
        }
        Err(status) => return Err(status.message().to_owned()),
    };
    let mut revoked_ids: Option<Arc<HashMap<String, u64>>> = feed.is_none().then(Arc::default);
    let mut last_svids = None;
    loop {
        tokio::select! {
            update = svids.message() => {
                let update = update.map_err(|s| s.message().to_owned())?;
                last_svids = Some(update.ok_or("the Workload API ended the stream")?);
            }
            update = async { feed.as_mut()?.message().await.transpose() }, if feed.is_some() => {
                let update = update
                    .ok_or("the revocations feed ended")?
                    .map_err(|s| s.message().to_owned())?;
                let ids = update
                    .revoked_ids
                    .into_iter()
                    .map(|r| (r.spiffe_id, u64::try_from(r.issued_before).unwrap_or(0)))
                    .collect();
                revoked_ids = Some(Arc::new(ids));
            }
        }
        if let (Some(update), Some(revoked_ids)) = (&last_svids, &revoked_ids) {
            let mut identity = identity_of(update, tx)?;
            identity.revoked_ids = revoked_ids.clone();
            tracing::info!(spiffe_id = %identity.spiffe_id, "identity from the Workload API");
            tx.send_replace(Some(Arc::new(identity)));
        }
    }
}

/// The identity of an X.509-SVID update: its first SVID, the bundle, and the
/// serials of the CRLs that verify.
fn identity_of(
    update: &zt_api::workload::X509svidResponse,
    tx: &watch::Sender<Option<Arc<Identity>>>,
) -> Result<Identity, String> {
    let decoded = zt_workload::svid::decode(update).map_err(|e| e.to_string())?;
    let svid = decoded
        .svids
        .into_iter()
        .next()
        .ok_or("the Workload API sent no SVID")?;
    let leaf_id = zt_identity::x509::summarize(svid.chain.first().ok_or("empty SVID")?)
        .map_err(|e| e.to_string())?
        .spiffe_id
        .map_err(|e| e.to_string())?;
    let mut bundle = Bundle::new(leaf_id.trust_domain().clone());
    for authority in svid.bundle {
        bundle.add_x509_authority(authority).map_err(|e| e.to_string())?;
    }
    let mut revoked = HashSet::new();
    for crl in &decoded.crls {
        match zt_identity::x509::crl_revoked_serials(crl, bundle.x509_authorities()) {
            Ok(serials) => revoked.extend(serials),
            // Only a list its own authorities signed is believed; but not
            // believing it must not un-revoke anything: what was revoked stays.
            Err(e) => {
                tracing::error!(error = %e, "a revocation list from the Workload API does not verify; keeping the previous revocations");
                if let Some(previous) = tx.borrow().as_ref() {
                    revoked.extend(previous.revoked.iter().cloned());
                }
            }
        }
    }
    let mut bundles = BundleSet::default();
    bundles.insert(bundle);
    let mut identity = assemble(svid.chain, svid.key, Arc::new(bundles))?;
    identity.revoked = Arc::new(revoked);
    Ok(identity)
}
