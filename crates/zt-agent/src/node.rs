//! The agent's side of the agent API: node attestation with a join token, renewal
//! of its own SVID at half-life, the sync stream, and signing an SVID for every
//! entry it may issue (again at half-life, with jitter, or at once when revoked).
//!
//! While the server is unreachable nothing is forgotten: the workloads keep the
//! SVIDs and bundle the agent holds until they expire, and the agent reconnects
//! with exponential backoff. When the server says the agent is no longer attested
//! (evicted, banned, revoked), it drops every identity and waits for a new join
//! token, without a restart.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};
use zt_api::agent::agent_client::AgentClient;
use zt_api::agent::{
    AgentSvid, AttestJoinTokenRequest, Entry, RenewAgentRequest, SignX509SvidRequest, SyncRequest,
};
use zt_ca::store::{PRIVATE_MODE, PUBLIC_MODE, write_atomically};
use zt_identity::{Bundle, BundleSet, SpiffeId, TrustDomain};
use zt_tls::{PeerMatcher, TlsVersions};

use crate::cache::{Cache, Status as ServeStatus, X509Material};
use crate::{AgentError, now, stopped};

/// The agent's own SVID, key and bundle in its data dir.
const AGENT_CERT_FILE: &str = "agent.crt";
const AGENT_KEY_FILE: &str = "agent.key";
const BUNDLE_FILE: &str = "bundle.jwks";
/// SVIDs signed at once; the rest wait for a slot.
const MAX_SIGNING: usize = 16;
/// How long an entry whose signing failed waits before it is tried again.
const SIGN_RETRY: u64 = 5;
/// Backoff between attempts to reach the server.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Where the node loop finds its server and its join tokens.
pub struct NodeConfig {
    /// The agent API of `zt server`.
    pub server: SocketAddr,
    /// The SPIFFE ID the server must present.
    pub server_id: SpiffeId,
    /// A join token given on the command line.
    pub join_token: Option<String>,
    /// A file holding a join token, read again whenever the agent needs to attest.
    pub join_token_file: Option<PathBuf>,
    /// Where the agent keeps its SVID, key and last bundle.
    pub data_dir: PathBuf,
}

/// The agent's own identity.
#[derive(Clone)]
struct NodeIdentity {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    not_before: u64,
    not_after: u64,
}

impl NodeIdentity {
    fn renew_at(&self) -> u64 {
        self.not_before + (self.not_after.saturating_sub(self.not_before)) / 2
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, String> {
        zt_identity::x509::private_key_from_pem(self.key_pem.as_bytes())
    }
}

/// Why a session with the server ended.
enum SessionEnd {
    /// The agent's SVID was renewed, or the bundle changed: start over with it.
    Refresh,
    /// The server no longer accepts this agent.
    Evicted(String),
    /// The server could not be reached or failed.
    Unreachable(String),
    /// The agent is stopping.
    Stopped,
}

/// The node loop's state.
pub struct Node {
    config: NodeConfig,
    trust_domain: TrustDomain,
    identity: Option<NodeIdentity>,
    used_tokens: HashSet<String>,
    cache: Cache,
    status: ServeStatus,
    snapshots: watch::Sender<crate::cache::Snapshot>,
    link: watch::Sender<Option<AgentClient<Channel>>>,
    stop: watch::Receiver<bool>,
}

impl Node {
    /// A node loop starting from `trust_bundle` or, if newer, the bundle and SVID it
    /// kept in its data dir.
    pub fn new(
        config: NodeConfig,
        trust_bundle: Bundle,
        snapshots: watch::Sender<crate::cache::Snapshot>,
        link: watch::Sender<Option<AgentClient<Channel>>>,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, AgentError> {
        let trust_domain = trust_bundle.trust_domain().clone();
        let kept_bundle = match std::fs::read(config.data_dir.join(BUNDLE_FILE)) {
            Ok(bytes) => Some(Bundle::parse_jwks(trust_domain.clone(), &bytes).map_err(|e| {
                AgentError::DataDir(format!("{}: {e}", config.data_dir.join(BUNDLE_FILE).display()))
            })?),
            Err(_) => None,
        };
        let identity = load_identity(&config, &trust_domain)?;
        Ok(Self {
            cache: Cache::with_bundle(kept_bundle.unwrap_or(trust_bundle)),
            trust_domain,
            identity,
            used_tokens: HashSet::new(),
            status: ServeStatus::Starting,
            config,
            snapshots,
            link,
            stop,
        })
    }

    /// Runs until the agent stops.
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if *self.stop.borrow() {
                return;
            }
            let identity = match self.identity.clone().filter(|i| now() < i.not_after) {
                Some(identity) => identity,
                None => {
                    if self.identity.take().is_some() {
                        tracing::warn!("the agent's SVID expired: attesting again");
                        self.forget_identity();
                    }
                    match self.attest().await {
                        Ok(identity) => {
                            backoff = BACKOFF_MIN;
                            self.identity = Some(identity.clone());
                            identity
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "node attestation failed");
                            if self.pause(backoff).await {
                                return;
                            }
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            continue;
                        }
                    }
                }
            };
            let end = self.session(&identity).await;
            self.link.send_replace(None);
            match end {
                SessionEnd::Refresh => backoff = BACKOFF_MIN,
                SessionEnd::Stopped => return,
                SessionEnd::Evicted(reason) => {
                    tracing::warn!(target: "zt::audit", agent = %identity.id, reason, "no longer attested: serving no identities until attested again");
                    self.identity = None;
                    self.forget_identity();
                }
                SessionEnd::Unreachable(reason) => {
                    tracing::warn!(reason, retry_in = ?backoff, "zt server unreachable: serving cached SVIDs");
                    if self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Attests with the next unused join token.
    async fn attest(&mut self) -> Result<NodeIdentity, String> {
        let token = self.next_token()?;
        let (key_pem, csr) = zt_ca::key_and_csr().map_err(|e| e.to_string())?;
        let tls = zt_tls::client_config_anonymous(self.bundles(), self.server_matcher(), TlsVersions::Tls13)
            .map_err(|e| e.to_string())?;
        let channel = zt_api::channel(self.config.server, Arc::new(tls)).map_err(|e| e.to_string())?;
        let answer = AgentClient::new(channel)
            .attest_join_token(AttestJoinTokenRequest {
                token: token.clone(),
                csr,
            })
            .await;
        let answer = match answer {
            Ok(answer) => answer.into_inner(),
            Err(status) => {
                if status.code() == Code::PermissionDenied {
                    // Used, expired or unknown: trying it again cannot help.
                    self.used_tokens.insert(token);
                }
                return Err(format!("{}: {}", code_name(status.code()), status.message()));
            }
        };
        self.used_tokens.insert(token);
        let identity = self.accept_agent_svid(answer, key_pem)?;
        tracing::info!(target: "zt::audit", agent = %identity.id, "attested to zt server with a join token");
        Ok(identity)
    }

    /// The join token to try: the command line's, then the token file's; each only once.
    fn next_token(&self) -> Result<String, String> {
        if let Some(token) = &self.config.join_token
            && !self.used_tokens.contains(token)
        {
            return Ok(token.clone());
        }
        if let Some(path) = &self.config.join_token_file {
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("join token file {}: {e}", path.display()))?;
            let token = token.trim();
            if !token.is_empty() && !self.used_tokens.contains(token) {
                return Ok(token.to_owned());
            }
            return Err(format!(
                "no unused join token: write a new one to {}",
                path.display()
            ));
        }
        Err("no unused join token: restart with a new --join-token, or use --join-token-file".into())
    }

    /// Checks an SVID the server signed for the agent, keeps it and its bundle on disk.
    fn accept_agent_svid(&mut self, answer: AgentSvid, key_pem: String) -> Result<NodeIdentity, String> {
        let svid = answer.svid.ok_or("the server sent no SVID")?;
        let chain: Vec<CertificateDer<'static>> = svid.cert_chain.into_iter().map(Into::into).collect();
        let leaf = chain.first().ok_or("the server sent an empty chain")?;
        let summary = zt_identity::x509::summarize(leaf).map_err(|e| e.to_string())?;
        let id = summary.spiffe_id.map_err(|e| e.to_string())?;
        if let Some(bundle) = answer.bundle {
            let bundle = Bundle::parse_jwks(self.trust_domain.clone(), &bundle.jwks)
                .map_err(|e| format!("bundle from the server: {e}"))?;
            self.cache = Cache::with_bundle(bundle);
        }
        let identity = NodeIdentity {
            id,
            chain,
            key_pem,
            not_before: summary.not_before,
            not_after: summary.not_after,
        };
        self.save(&identity)?;
        Ok(identity)
    }

    fn save(&self, identity: &NodeIdentity) -> Result<(), String> {
        let dir = &self.config.data_dir;
        let chain: String = identity.chain.iter().map(zt_identity::x509::to_pem).collect();
        let mut files = vec![
            (dir.join(AGENT_CERT_FILE), chain.into_bytes(), PUBLIC_MODE),
            (
                dir.join(AGENT_KEY_FILE),
                identity.key_pem.clone().into_bytes(),
                PRIVATE_MODE,
            ),
        ];
        if let Some(bundle) = self.cache.bundle() {
            files.push((
                dir.join(BUNDLE_FILE),
                bundle.to_jwks().map_err(|e| e.to_string())?.into_bytes(),
                PUBLIC_MODE,
            ));
        }
        write_atomically(&files).map_err(|e| e.to_string())
    }

    fn save_bundle(&self) {
        let Some(bundle) = self.cache.bundle() else { return };
        let result = bundle.to_jwks().map_err(|e| e.to_string()).and_then(|jwks| {
            write_atomically(&[(
                self.config.data_dir.join(BUNDLE_FILE),
                jwks.into_bytes(),
                PUBLIC_MODE,
            )])
            .map_err(|e| e.to_string())
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "could not keep the bundle in the data dir");
        }
    }

    /// Evicted or expired: no identity is served any more, and none is kept on disk.
    fn forget_identity(&mut self) {
        for file in [AGENT_CERT_FILE, AGENT_KEY_FILE] {
            let _ = std::fs::remove_file(self.config.data_dir.join(file));
        }
        self.cache.clear_identities();
        self.status = ServeStatus::NotAttested;
        self.publish();
    }

    /// One connection's life: sync, sign, renew, until something ends it.
    async fn session(&mut self, identity: &NodeIdentity) -> SessionEnd {
        let client = match self.client(identity) {
            Ok(client) => client,
            Err(e) => return SessionEnd::Unreachable(e),
        };
        let mut stream = match client.clone().sync(SyncRequest {}).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => return classify(&status),
        };
        self.link.send_replace(Some(client.clone()));
        let authorities_at_start = self.cache.bundle().map(|b| b.x509_authorities().to_vec());
        let mut signing: JoinSet<(Entry, Result<X509Material, Status>)> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut failed: HashMap<String, u64> = HashMap::new();
        let mut stop = self.stop.clone();
        loop {
            let now = now();
            failed.retain(|_, retry_at| *retry_at > now);
            for entry in self.cache.due(now) {
                if in_flight.len() >= MAX_SIGNING {
                    break;
                }
                if in_flight.contains(&entry.id) || failed.contains_key(&entry.id) {
                    continue;
                }
                in_flight.insert(entry.id.clone());
                signing.spawn(sign(client.clone(), entry, self.cache.bundle().cloned()));
            }
            let deadline = [self.cache.next_deadline(now), failed.values().min().copied()]
                .into_iter()
                .flatten()
                .filter(|t| *t > now)
                .min();
            let sleep = deadline.map_or(Duration::from_secs(3600), |t| Duration::from_secs(t - now));
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(sync)) => {
                        if let Err(e) = self.cache.apply_sync(sync, &self.trust_domain) {
                            return SessionEnd::Unreachable(e);
                        }
                        self.cache.drop_invalid(now);
                        self.status = ServeStatus::Serving;
                        self.publish();
                        let authorities = self.cache.bundle().map(|b| b.x509_authorities().to_vec());
                        if authorities != authorities_at_start {
                            self.save_bundle();
                            // New connections must trust the new authorities.
                            return SessionEnd::Refresh;
                        }
                    }
                    Ok(None) => return SessionEnd::Unreachable("the sync stream ended".into()),
                    Err(status) => return classify(&status),
                },
                Some(done) = signing.join_next(), if !signing.is_empty() => {
                    let Ok((entry, result)) = done else { continue };
                    in_flight.remove(&entry.id);
                    match result {
                        Ok(svid) => {
                            self.cache.insert_svid(&entry.id, svid);
                            self.publish();
                        }
                        Err(status) if matches!(status.code(), Code::Unavailable | Code::Unknown) => {
                            return SessionEnd::Unreachable(status.message().to_owned());
                        }
                        Err(status) => {
                            tracing::warn!(entry = entry.id, spiffe_id = entry.spiffe_id, error = %status.message(), "could not get an SVID signed");
                            failed.insert(entry.id, now + SIGN_RETRY);
                        }
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(identity.renew_at().saturating_sub(now))) => {
                    return self.renew(client, identity).await;
                }
                _ = tokio::time::sleep(sleep) => {
                    if self.cache.drop_invalid(crate::now()) {
                        self.publish();
                    }
                }
                () = stopped(&mut stop) => return SessionEnd::Stopped,
            }
        }
    }

    /// An mTLS client of the agent API presenting `identity`.
    fn client(&self, identity: &NodeIdentity) -> Result<AgentClient<Channel>, String> {
        let tls = zt_tls::client_config(
            identity.chain.clone(),
            identity.key()?,
            self.bundles(),
            self.server_matcher(),
            TlsVersions::Tls13,
        )
        .map_err(|e| e.to_string())?;
        let channel = zt_api::channel(self.config.server, Arc::new(tls)).map_err(|e| e.to_string())?;
        Ok(AgentClient::new(channel))
    }

    async fn renew(&mut self, mut client: AgentClient<Channel>, identity: &NodeIdentity) -> SessionEnd {
        let (key_pem, csr) = match zt_ca::key_and_csr() {
            Ok(pair) => pair,
            Err(e) => return SessionEnd::Unreachable(e.to_string()),
        };
        match client.renew_agent(RenewAgentRequest { csr }).await {
            Ok(answer) => match self.accept_agent_svid_keeping_cache(answer.into_inner(), key_pem) {
                Ok(renewed) => {
                    tracing::info!(agent = %identity.id, until = renewed.not_after, "agent SVID renewed");
                    self.identity = Some(renewed);
                    SessionEnd::Refresh
                }
                Err(e) => SessionEnd::Unreachable(e),
            },
            Err(status) => classify(&status),
        }
    }

    /// As [`Node::accept_agent_svid`], keeping the workload SVIDs held.
    fn accept_agent_svid_keeping_cache(
        &mut self,
        mut answer: AgentSvid,
        key_pem: String,
    ) -> Result<NodeIdentity, String> {
        // The bundle arrives on the sync stream too; taking it here would reset the cache.
        answer.bundle = None;
        self.accept_agent_svid(answer, key_pem)
    }

    /// Waits `period`, still dropping SVIDs that expire meanwhile; true if stopping.
    async fn pause(&mut self, period: Duration) -> bool {
        let until = tokio::time::Instant::now() + period;
        let mut stop = self.stop.clone();
        loop {
            let now = now();
            let next = self
                .cache
                .next_deadline(now)
                .map_or(period, |t| Duration::from_secs(t - now));
            let wake = until.min(tokio::time::Instant::now() + next);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {
                    if self.cache.drop_invalid(crate::now()) {
                        self.publish();
                    }
                    if tokio::time::Instant::now() >= until {
                        return false;
                    }
                }
                () = stopped(&mut stop) => return true,
            }
        }
    }

    fn publish(&self) {
        self.snapshots
            .send_replace(self.cache.snapshot(self.status.clone()));
    }

    fn bundles(&self) -> Arc<BundleSet> {
        let mut set = BundleSet::default();
        if let Some(bundle) = self.cache.bundle() {
            set.insert((**bundle).clone());
        }
        Arc::new(set)
    }

    fn server_matcher(&self) -> PeerMatcher {
        PeerMatcher::OneOf(vec![self.config.server_id.clone()])
    }
}

/// Has the server sign an SVID for `entry`, for a fresh key.
/// Has the server sign an SVID for `entry`, for a fresh key, and checks what comes
/// back before any workload sees it: it verifies against `bundle`, names the
/// entry's SPIFFE ID, and certifies the key the agent made.
async fn sign(
    mut client: AgentClient<Channel>,
    entry: Entry,
    bundle: Option<Arc<Bundle>>,
) -> (Entry, Result<X509Material, Status>) {
    let result = async {
        let (key_pem, csr) = zt_ca::key_and_csr().map_err(|e| Status::internal(e.to_string()))?;
        let signed_at = now();
        let svid = client
            .sign_x509_svid(SignX509SvidRequest {
                entry_id: entry.id.clone(),
                csr,
            })
            .await?
            .into_inner();
        let chain: Vec<CertificateDer<'static>> = svid.cert_chain.into_iter().map(Into::into).collect();
        let bundle = bundle.ok_or_else(|| Status::internal("no bundle to verify the SVID with"))?;
        let verified = zt_identity::verify_x509_svid(
            &chain,
            bundle.as_ref(),
            rustls::pki_types::UnixTime::now(),
            zt_identity::Purpose::ClientAuth,
        )
        .map_err(|e| Status::internal(format!("the SVID signed for entry {}: {e}", entry.id)))?;
        if verified.spiffe_id().to_string() != entry.spiffe_id {
            return Err(Status::internal(format!(
                "the SVID signed for entry {} names {}, not {}",
                entry.id,
                verified.spiffe_id(),
                entry.spiffe_id
            )));
        }
        let leaf = chain
            .first()
            .ok_or_else(|| Status::internal("the server sent an empty chain"))?;
        let summary = zt_identity::x509::summarize(leaf).map_err(|e| Status::internal(e.to_string()))?;
        let key = zt_identity::x509::private_key_from_pem(key_pem.as_bytes()).map_err(Status::internal)?;
        let certified =
            zt_identity::x509::subject_public_key(leaf).map_err(|e| Status::internal(e.to_string()))?;
        if zt_ca::public_key_of(&key).map_err(|e| Status::internal(e.to_string()))? != certified {
            return Err(Status::internal(format!(
                "the SVID signed for entry {} certifies another key",
                entry.id
            )));
        }
        let life = summary.not_after.saturating_sub(signed_at);
        Ok(X509Material {
            spiffe_id: entry.spiffe_id.clone(),
            chain,
            key_pkcs8: key.secret_der().to_vec(),
            // As the server lists revoked serials: lowercase hex, no separators.
            serial: zt_identity::x509::hex_compact(&summary.serial),
            not_before: summary.not_before,
            not_after: summary.not_after,
            rotate_at: signed_at + life / 2 - jitter(life / 10),
            revision: entry.revision,
        })
    }
    .await;
    (entry, result)
}

/// A random number of seconds in `0..=max`, so that SVIDs signed together do not
/// all rotate in the same second.
fn jitter(max: u64) -> u64 {
    let mut bytes = [0u8; 8];
    if max == 0 || aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0;
    }
    u64::from_le_bytes(bytes) % (max + 1)
}

fn classify(status: &Status) -> SessionEnd {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated => SessionEnd::Evicted(status.message().to_owned()),
        code => SessionEnd::Unreachable(format!("{}: {}", code_name(code), status.message())),
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}

/// The agent SVID kept in the data dir, if there is a valid one.
fn load_identity(
    config: &NodeConfig,
    trust_domain: &TrustDomain,
) -> Result<Option<NodeIdentity>, AgentError> {
    let cert_path = config.data_dir.join(AGENT_CERT_FILE);
    let key_path = config.data_dir.join(AGENT_KEY_FILE);
    let (Ok(cert), Ok(key_pem)) = (std::fs::read(&cert_path), std::fs::read_to_string(&key_path)) else {
        return Ok(None);
    };
    let bad = |what: &PathBuf, e: String| AgentError::DataDir(format!("{}: {e}", what.display()));
    let chain = zt_identity::x509::certificates_from_pem(&cert).map_err(|e| bad(&cert_path, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad(&cert_path, "no certificate".into()))?;
    let summary = zt_identity::x509::summarize(leaf).map_err(|e| bad(&cert_path, e.to_string()))?;
    let id = summary.spiffe_id.map_err(|e| bad(&cert_path, e.to_string()))?;
    if id.trust_domain() != trust_domain {
        return Err(bad(
            &cert_path,
            format!("{id} is not in trust domain {trust_domain}"),
        ));
    }
    zt_identity::x509::private_key_from_pem(key_pem.as_bytes()).map_err(|e| bad(&key_path, e))?;
    if now() >= summary.not_after {
        return Ok(None);
    }
    tracing::info!(agent = %id, "resuming with the agent SVID kept in the data dir");
    Ok(Some(NodeIdentity {
        id,
        chain,
        key_pem,
        not_before: summary.not_before,
        not_after: summary.not_after,
    }))
}
