//! zt server through its agent API, as agents drive it: SVID signing
//! throughput with concurrent callers, and entry propagation to a sync stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zt_api::agent::agent_client::AgentClient;
use zt_api::agent::{AttestJoinTokenRequest, SignX509SvidRequest, SyncRequest};
use zt_identity::{BundleSet, SpiffeId, TrustDomain};
use zt_store::Store;
use zt_tls::{PeerMatcher, TlsVersions};

use crate::{Error, Figure, Samples, now, workload_entry};

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct ServerBench {
    /// Entries of other agents stored before the server starts.
    pub entries: usize,
    /// Concurrent signing callers, each on its own connection.
    pub callers: usize,
    /// Length of the signing run.
    pub window: Duration,
    /// Entry changes timed to the sync stream.
    pub changes: usize,
    /// A postgres:// URL to bench on instead of SQLite in a temporary directory.
    pub datastore: Option<String>,
}

/// A real `zt server` in this process on loopback, driven through its agent
/// API: reports [`Figure::Stored`] (if entries were stored first),
/// [`Figure::Throughput`] of signing, and [`Figure::Delays`] from an entry
/// created (admin API) to the entry on an agent's sync stream.
pub async fn run(bench: ServerBench, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let td = TrustDomain::parse("example.org")?;
    let agent_id = SpiffeId::parse("spiffe://example.org/agent/bench")?;
    let dir = tempfile::tempdir()?;
    let location = bench.datastore.clone().unwrap_or_else(|| {
        dir.path()
            .join(zt_server::SQLITE_FILE)
            .to_string_lossy()
            .into_owned()
    });

    // Entries of other agents, stored before the server starts, as an existing deployment's.
    let store = Store::open(&location).await?;
    let spec = |id: String, parent: &SpiffeId| workload_entry(&id, parent, "unix:uid:1000");
    let others = SpiffeId::parse("spiffe://example.org/agent/others")?;
    let started = Instant::now();
    for chunk in (0..bench.entries).collect::<Vec<_>>().chunks(10_000) {
        let specs = chunk
            .iter()
            .map(|i| spec(format!("spiffe://example.org/workload/{i}"), &others))
            .collect::<Result<Vec<_>, _>>()?;
        store.import_entries(specs, now()).await?;
    }
    if bench.entries > 0 {
        report(Figure::Stored {
            entries: bench.entries,
            took: started.elapsed(),
        });
    }
    let token = store
        .create_join_token(Some(&agent_id), Duration::from_secs(600), now())
        .await?;
    drop(store);

    let server = InProcessServer::start(dir.path().join("data"), location, &td).await?;
    let (admin, agent_addr) = (&server.admin, server.agent_addr);

    // Attest as an agent, then talk mTLS with the agent SVID.
    let bundle = zt_identity::Bundle::parse(
        admin.bundle(zt_server::api::BundleFormat::Pem).await?.as_bytes(),
        None,
    )?;
    let mut bundles = BundleSet::default();
    bundles.insert(bundle);
    let bundles = Arc::new(bundles);
    let server_id = PeerMatcher::OneOf(vec![SpiffeId::from_parts(&td, "/zt/server")?]);
    let anonymous = zt_tls::client_config_anonymous(bundles.clone(), server_id.clone(), TlsVersions::Tls13)?;
    let (key_pem, csr) = zt_ca::key_and_csr()?;
    let attested = AgentClient::new(zt_api::channel(agent_addr, Arc::new(anonymous))?)
        .attest_join_token(AttestJoinTokenRequest { token, csr })
        .await?
        .into_inner();
    let svid = attested
        .svid
        .ok_or_else(|| Error::Failed("attestation answered no SVID".into()))?;
    let chain = svid.cert_chain.into_iter().map(Into::into).collect();
    let key = zt_identity::x509::private_key_from_pem(key_pem.as_bytes()).map_err(Error::Failed)?;
    let mtls = Arc::new(zt_tls::client_config(
        chain,
        key,
        bundles,
        server_id,
        TlsVersions::Tls13,
    )?);
    let entry = admin
        .create_entry(&spec("spiffe://example.org/bench/signed".into(), &agent_id)?)
        .await?;

    // Signing throughput: `callers` concurrent callers, each on its own connection.
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..32)
            .map(|_| zt_ca::key_and_csr().map(|(_, csr)| csr))
            .collect::<Result<_, _>>()?,
    );
    let window = bench.window.max(Duration::from_secs(1));
    let callers = bench.callers.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut client = AgentClient::new(zt_api::channel(agent_addr, mtls.clone())?);
        let (csrs, entry_id) = (csrs.clone(), entry.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while started.elapsed() < window {
                let request = SignX509SvidRequest {
                    entry_id: entry_id.clone(),
                    csr: csrs.get(i % csrs.len()).cloned().unwrap_or_default(),
                };
                let t = Instant::now();
                tokio::time::timeout(Duration::from_secs(10), client.sign_x509_svid(request))
                    .await
                    .map_err(|_| {
                        tonic::Status::deadline_exceeded("no answer to a signing call within 10 s")
                    })??;
                latencies.push(t.elapsed());
                i += 1;
            }
            Ok::<_, tonic::Status>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    report(Figure::Throughput {
        name: "sign X.509-SVID through the agent API".into(),
        elapsed: started.elapsed(),
        samples: Samples::new(latencies),
        callers,
    });

    // Propagation: entry created through the admin API → on the agent's sync stream.
    let ended = || Error::Failed("sync stream ended".into());
    let mut agent = AgentClient::new(zt_api::channel(agent_addr, mtls)?);
    let mut sync = agent.sync(SyncRequest {}).await?.into_inner();
    sync.message().await?.ok_or_else(ended)?;
    let mut delays = Vec::new();
    for i in 0..bench.changes {
        let t = Instant::now();
        let created = tokio::time::timeout(
            Duration::from_secs(10),
            admin.create_entry(&spec(format!("spiffe://example.org/bench/new/{i}"), &agent_id)?),
        )
        .await
        .map_err(Error::timeout("no answer to an entry create within 10 s"))??;
        loop {
            let state = tokio::time::timeout(Duration::from_secs(10), sync.message())
                .await
                .map_err(Error::timeout("no sync message within 10 s"))??
                .ok_or_else(ended)?;
            if state.entries.iter().any(|e| e.id == created.id) {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    report(Figure::Delays {
        name: "entry created → agent sync stream".into(),
        samples: Samples::new(delays),
        what: format!("changes, {} entries stored", bench.entries + bench.changes + 1),
    });
    server.stop().await?;
    Ok(())
}

/// A `zt server` running in this process on loopback ports.
pub(crate) struct InProcessServer {
    pub(crate) admin: zt_server::client::AdminClient,
    pub(crate) agent_addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), zt_server::ServerError>>,
}

impl InProcessServer {
    /// Starts it on `datastore` and waits until its admin API answers.
    pub(crate) async fn start(
        data_dir: std::path::PathBuf,
        datastore: String,
        td: &TrustDomain,
    ) -> Result<Self, Error> {
        Self::start_with(data_dir, datastore, td, None).await
    }

    /// [`Self::start`], serving the OpenID Provider too when `idp` is given.
    pub(crate) async fn start_with(
        data_dir: std::path::PathBuf,
        datastore: String,
        td: &TrustDomain,
        idp: Option<zt_server::IdpSettings>,
    ) -> Result<Self, Error> {
        let free_port = || -> Result<std::net::SocketAddr, Error> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        let config = zt_server::ServerConfig {
            data_dir,
            datastore: Some(datastore),
            trust_domain: td.clone(),
            http_addr: free_port()?,
            ca_ttl: Duration::from_secs(24 * 3600),
            ca_key_type: zt_ca::KeyType::EcP256,
            agent_addr: free_port()?,
            agent_ttl: Duration::from_secs(3600),
            pdp: None,
            idp,
            devices: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let agent_addr = config.agent_addr;
        let admin = zt_server::client::AdminClient::new(config.data_dir.join(zt_server::ADMIN_SOCKET));
        let task = tokio::spawn(zt_server::run(config, async {
            let _ = stopped.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::time::timeout(Duration::from_secs(5), admin.count_entries())
            .await
            .map_or(true, |r| r.is_err())
        {
            if Instant::now() >= deadline {
                return Err(Error::Failed("zt server did not become ready".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            admin,
            agent_addr,
            stop,
            task,
        })
    }

    /// Stops it and waits until it has stopped.
    pub(crate) async fn stop(self) -> Result<(), Error> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}
