//! `zt bench`: figures for BENCHMARKS.md, measured on the machine it runs on.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rustls_pki_types::UnixTime;
use zt_ca::{Authority, DEFAULT_CA_TTL, DEFAULT_JWT_SVID_TTL, DEFAULT_X509_SVID_TTL, KeyType, SvidRequest};
use zt_identity::{Purpose, SpiffeId, TrustDomain, verify_jwt_svid, verify_x509_svid};

use super::now;

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// SPIFFE ID parsing, SVID verification, minting and issuance.
    Identity(BenchIdentity),
    /// zt server through its agent API: signing throughput and entry propagation.
    Server(BenchServer),
    /// zt agent: entry created → SVID on a workload's stream, Workload API call latency.
    Agent(BenchAgent),
    /// AuthorizationPolicy evaluation in process, with 1 to 10 000 policies.
    Policy(BenchPolicy),
    /// Rego decisions in process (the seed's policy).
    Pdp(BenchPdp),
}

#[derive(Args)]
pub(crate) struct BenchIdentity {
    /// Timed calls per operation (issuance is capped at 2000).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) iterations: usize,
}

#[derive(Args)]
pub(crate) struct BenchServer {
    /// Entries of other agents stored before the server starts.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) entries: usize,
    /// Concurrent signing callers, each on its own connection.
    #[arg(long, default_value_t = 16)]
    pub(crate) callers: usize,
    /// Length of the signing run, seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Entry changes timed to the sync stream.
    #[arg(long, default_value_t = 200)]
    pub(crate) changes: usize,
    /// A postgres:// URL to bench on PostgreSQL instead of SQLite (its database should be empty).
    #[arg(long)]
    pub(crate) datastore: Option<String>,
}

#[derive(Args)]
pub(crate) struct BenchAgent {
    /// Entries created and timed to the workload's X.509-SVID stream.
    #[arg(long, default_value_t = 200)]
    pub(crate) changes: usize,
    /// Workload API calls timed.
    #[arg(long, default_value_t = 500)]
    pub(crate) calls: usize,
}

#[derive(Args)]
pub(crate) struct BenchPolicy {
    /// Decisions timed per line.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) iterations: usize,
}

#[derive(Args)]
pub(crate) struct BenchPdp {
    /// Decisions timed per line.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) iterations: usize,
}

/// `zt bench identity`: the identity operations on every hot path.
pub fn identity(args: BenchIdentity) -> anyhow::Result<ExitCode> {
    let n = args.iterations.max(1);
    let now = now();
    let ca = Authority::generate(
        TrustDomain::parse("example.org")?,
        KeyType::EcP256,
        DEFAULT_CA_TTL,
        now,
    )?;
    let bundle = ca.bundle()?;
    let id = SpiffeId::parse("spiffe://example.org/ns/production/sa/payment-service")?;
    let request = SvidRequest {
        spiffe_id: id.clone(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![],
        ttl: DEFAULT_X509_SVID_TTL,
    };
    let svid = ca.issue_x509_svid(&request, now)?;
    let audience = vec!["spiffe://example.org/billing".to_owned()];
    let token = ca.mint_jwt_svid(&id, &audience, DEFAULT_JWT_SVID_TTL, now)?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now));

    println!(
        "{:<28} {:>10} {:>10} {:>14}",
        "operation", "p50", "p99", "ops/s (1 core)"
    );
    report(
        "parse SPIFFE ID",
        &measure(n, || {
            black_box(
                SpiffeId::parse(black_box("spiffe://example.org/ns/production/sa/payment-service")).is_ok(),
            );
        }),
    );
    report(
        "verify X.509-SVID",
        &measure(n, || {
            black_box(verify_x509_svid(&svid.chain, &bundle, at, Purpose::ClientAuth).is_ok());
        }),
    );
    report(
        "verify JWT-SVID (ES256)",
        &measure(n, || {
            black_box(verify_jwt_svid(&token, &bundle, &audience[0], now).is_ok());
        }),
    );
    report(
        "mint JWT-SVID (ES256)",
        &measure(n, || {
            black_box(
                ca.mint_jwt_svid(&id, &audience, DEFAULT_JWT_SVID_TTL, now)
                    .is_ok(),
            );
        }),
    );
    report(
        "issue X.509-SVID (+keygen)",
        &measure(n.min(2000), || {
            black_box(ca.issue_x509_svid(&request, now).is_ok());
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Times each of `n` calls of `op`, sorted.
fn measure(n: usize, mut op: impl FnMut()) -> Vec<Duration> {
    for _ in 0..n.min(100) {
        op(); // warm-up
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples
}

fn report(name: &str, sorted: &[Duration]) {
    let at = |q: f64| {
        sorted
            .get(((sorted.len() - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let total: Duration = sorted.iter().sum();
    let ops = sorted.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "{name:<28} {:>10} {:>10} {:>14.0}",
        fmt(at(0.5)),
        fmt(at(0.99)),
        ops
    );
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}

/// `zt bench server`: a real `zt server` in this process on loopback, driven
/// through its agent API as agents drive it: SVID signing throughput with
/// concurrent callers, and the delay from an entry created (admin API) to the
/// entry arriving on an agent's sync stream, with `--entries` already stored.
pub fn server(args: BenchServer) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(bench_server(args))
}

async fn bench_server(args: BenchServer) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;
    use zt_api::agent::agent_client::AgentClient;
    use zt_api::agent::{AttestJoinTokenRequest, SignX509SvidRequest, SyncRequest};
    use zt_identity::BundleSet;
    use zt_store::Store;
    use zt_tls::{PeerMatcher, TlsVersions};

    let td = TrustDomain::parse("example.org")?;
    let agent_id = SpiffeId::parse("spiffe://example.org/agent/bench")?;
    let dir = tempfile::tempdir()?;
    let location = args.datastore.clone().unwrap_or_else(|| {
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
    for chunk in (0..args.entries).collect::<Vec<_>>().chunks(10_000) {
        let specs = chunk
            .iter()
            .map(|i| spec(format!("spiffe://example.org/workload/{i}"), &others))
            .collect::<anyhow::Result<Vec<_>>>()?;
        store.import_entries(specs, now()).await?;
    }
    if args.entries > 0 {
        println!("stored {} entries in {:.1?}", args.entries, started.elapsed());
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
    let svid = attested.svid.context("attestation answered no SVID")?;
    let chain = svid.cert_chain.into_iter().map(Into::into).collect();
    let key = zt_identity::x509::private_key_from_pem(key_pem.as_bytes()).map_err(anyhow::Error::msg)?;
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
    let window = Duration::from_secs(args.seconds.max(1));
    let started = Instant::now();
    let mut callers = Vec::new();
    for c in 0..args.callers.max(1) {
        let mut client = AgentClient::new(zt_api::channel(agent_addr, mtls.clone())?);
        let (csrs, entry_id) = (csrs.clone(), entry.id.clone());
        callers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = c;
            while started.elapsed() < window {
                let request = SignX509SvidRequest {
                    entry_id: entry_id.clone(),
                    csr: csrs[i % csrs.len()].clone(),
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
    for caller in callers {
        latencies.extend(caller.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    println!(
        "{:<44} {:>10.0} SVIDs/s  (p50 {}, p99 {}, {} callers, {:.1?})",
        "sign X.509-SVID through the agent API",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        fmt(percentile(&latencies, 0.5)),
        fmt(percentile(&latencies, 0.99)),
        args.callers.max(1),
        elapsed
    );

    // Propagation: entry created through the admin API → on the agent's sync stream.
    let mut agent = AgentClient::new(zt_api::channel(agent_addr, mtls)?);
    let mut sync = agent.sync(SyncRequest {}).await?.into_inner();
    sync.message().await?.context("sync stream ended")?;
    let mut delays = Vec::new();
    for i in 0..args.changes {
        let t = Instant::now();
        let created = tokio::time::timeout(
            Duration::from_secs(10),
            admin.create_entry(&spec(format!("spiffe://example.org/bench/new/{i}"), &agent_id)?),
        )
        .await
        .context("no answer to an entry create within 10 s")??;
        loop {
            let state = tokio::time::timeout(Duration::from_secs(10), sync.message())
                .await
                .context("no sync message within 10 s")??
                .context("sync stream ended")?;
            if state.entries.iter().any(|e| e.id == created.id) {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    print_delays(
        "entry created → agent sync stream",
        delays,
        &format!("changes, {} entries stored", args.entries + args.changes + 1),
    );
    server.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// A `zt server` running in this process on loopback ports.
struct InProcessServer {
    admin: zt_server::client::AdminClient,
    agent_addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), zt_server::ServerError>>,
}

impl InProcessServer {
    /// Starts it on `datastore` and waits until its admin API answers.
    async fn start(
        data_dir: std::path::PathBuf,
        datastore: String,
        td: &TrustDomain,
    ) -> anyhow::Result<Self> {
        let free_port = || -> anyhow::Result<std::net::SocketAddr> {
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
            anyhow::ensure!(Instant::now() < deadline, "zt server did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            admin,
            agent_addr,
            stop,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}

/// `zt bench agent`: a real `zt server` and `zt agent` in this process, this
/// process as the workload on the Workload API socket: the delay from an entry
/// created on the server to its SVID on a watching workload's stream, and the
/// latency of Workload API calls (attestation included).
pub fn agent(args: BenchAgent) -> anyhow::Result<ExitCode> {
    // The audit line of each policy version applied would drown the figures.
    super::init_logging("warn,zt::audit=error");
    super::runtime()?.block_on(bench_agent(args))
}

async fn bench_agent(args: BenchAgent) -> anyhow::Result<ExitCode> {
    use zt_server::api::{BundleFormat, CreateJoinToken};
    use zt_workload::client::WorkloadClient;

    let td = TrustDomain::parse("example.org")?;
    let agent_id = SpiffeId::parse("spiffe://example.org/agent/bench")?;
    let dir = tempfile::tempdir()?;
    let location = dir
        .path()
        .join(zt_server::SQLITE_FILE)
        .to_string_lossy()
        .into_owned();
    let server = InProcessServer::start(dir.path().join("data"), location, &td).await?;
    let token = server
        .admin
        .create_join_token(&CreateJoinToken {
            spiffe_id: Some(agent_id.to_string()),
            ttl_secs: 600,
        })
        .await?
        .token;
    let trust_bundle =
        zt_identity::Bundle::parse(server.admin.bundle(BundleFormat::Pem).await?.as_bytes(), None)?;
    let socket = dir.path().join("api.sock");
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(zt_agent::run(
        zt_agent::AgentConfig {
            node: zt_agent::NodeConfig {
                server: server.agent_addr,
                server_id: zt_agent::server_id(&trust_bundle)?,
                join_token: Some(token),
                join_token_file: None,
                data_dir: dir.path().join("agent"),
            },
            trust_bundle,
            socket: socket.clone(),
        },
        async {
            let _ = agent_stopped.await;
        },
    ));

    // This process is the workload: entries select it by uid.
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        .context("no Uid in /proc/self/status")?;
    let selector = format!("unix:uid:{uid}");
    let spec = |id: String| workload_entry(&id, &agent_id, &selector);
    server
        .admin
        .create_entry(&spec("spiffe://example.org/bench/first".into())?)
        .await?;
    let client = WorkloadClient::new(&socket).map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match client.x509_svids().await {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => anyhow::bail!("the agent never served the first SVID: {e}"),
        }
    };
    stream.message().await?.context("the X.509-SVID stream ended")?;

    let mut delays = Vec::new();
    for i in 0..args.changes {
        let id = format!("spiffe://example.org/bench/new/{i}");
        let t = Instant::now();
        server.admin.create_entry(&spec(id.clone())?).await?;
        loop {
            let update = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .context("no Workload API update within 10 s")??
                .context("the X.509-SVID stream ended")?;
            if update.svids.iter().any(|s| s.spiffe_id == id) {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    print_delays("entry created → SVID on the workload stream", delays, "entries");

    // Policy propagation: a version applied on the server → on zt agent's policy
    // stream, which proxies follow (compiling it there takes microseconds).
    let mut policies = client.policies().await?;
    let mut delays = Vec::new();
    for i in 0..args.changes.min(100) {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: bench}}\nspec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/v{i}\"]\n"
        );
        let files = vec![zt_store::PolicyFile {
            name: "bench.yaml".into(),
            text,
        }];
        let t = Instant::now();
        let applied = server
            .admin
            .apply_policies(&zt_server::api::ApplyPolicies { files })
            .await?;
        loop {
            let set = tokio::time::timeout(Duration::from_secs(10), policies.message())
                .await
                .context("no policy update within 10 s")??
                .context("the policy stream ended")?;
            if set.version == applied.version {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    print_delays(
        "policy applied → on the proxies' policy stream",
        delays,
        "versions",
    );

    // Call latency with one SVID (a fresh client per measure would add the connect).
    let one = WorkloadClient::new(&socket).map_err(anyhow::Error::msg)?;
    let mut fetches = Vec::new();
    let mut jwts = Vec::new();
    for _ in 0..args.calls {
        let t = Instant::now();
        one.fetch_x509_svids().await?;
        fetches.push(t.elapsed());
        let t = Instant::now();
        one.fetch_jwt_svids(
            vec!["bench".into()],
            Some("spiffe://example.org/bench/first".into()),
        )
        .await?;
        jwts.push(t.elapsed());
    }
    for (name, mut latencies) in [
        ("FetchX509SVID (attest + all SVIDs)", fetches),
        ("FetchJWTSVID (attest + one cached token)", jwts),
    ] {
        latencies.sort_unstable();
        println!(
            "{name:<44} p50 {}, p99 {}  ({} calls; the caller has {} entries)",
            fmt(percentile(&latencies, 0.5)),
            fmt(percentile(&latencies, 0.99)),
            latencies.len(),
            args.changes + 1
        );
    }
    let _ = stop_agent.send(());
    agent.await??;
    server.stop().await?;
    Ok(ExitCode::SUCCESS)
}

/// A workload entry of the benches: one selector, SPIRE's default TTLs.
fn workload_entry(id: &str, parent: &SpiffeId, selector: &str) -> anyhow::Result<zt_store::EntrySpec> {
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

/// One line: p50, p99 and max of `delays`, and how many there were (of `what`).
fn print_delays(name: &str, mut delays: Vec<Duration>, what: &str) {
    delays.sort_unstable();
    println!(
        "{name:<44} p50 {}, p99 {}, max {}  ({} {what})",
        fmt(percentile(&delays, 0.5)),
        fmt(percentile(&delays, 0.99)),
        fmt(delays.last().copied().unwrap_or_default()),
        delays.len(),
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// `zt bench policy`: one request decided by AuthorizationPolicies in process,
/// for sets of 1, 100, 1 000 and 10 000 policies.
pub fn policy(args: BenchPolicy) -> anyhow::Result<ExitCode> {
    let n = args.iterations.max(1);
    println!(
        "{:<52} {:>10} {:>10} {:>14}",
        "policies (layout) — request", "p50", "p99", "ops/s (1 core)"
    );
    for size in [1usize, 100, 1_000, 10_000] {
        // Realistic: ten policies per namespace, each selecting one app.
        let spread = policy_set(size, |i| (format!("ns-{}", i / 10), Some(format!("app-{i}"))))?;
        let workload = spread.for_workload("ns-0", &[("app".to_owned(), "app-0".to_owned())].into());
        bench_requests(&format!("{size} (10 per namespace)"), &workload, 0, n);
        // Every policy applies to the one workload: found through the index of
        // the principals policies name, exact...
        let all = policy_set(size, |_| ("ns-0".to_owned(), None))?;
        let workload = all.for_workload("ns-0", &Default::default());
        bench_requests(&format!("{size} (all on one workload)"), &workload, size - 1, n);
        // ...or patterns (`*/ns/…/sa/…`, indexed by suffix).
        let patterns = policy_set(size, |_| ("ns-0".to_owned(), Some("*".to_owned())))?;
        let workload = patterns.for_workload("ns-0", &Default::default());
        bench_requests(
            &format!("{size} (all on one workload, patterns)"),
            &workload,
            size - 1,
            n,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `size` ALLOW policies, the `i`th placed by `place` (namespace, app selector;
/// an app of `*` means no selector and a principal pattern instead of an exact
/// one), each allowing one caller to POST two paths.
fn policy_set(
    size: usize,
    place: impl Fn(usize) -> (String, Option<String>),
) -> anyhow::Result<zt_policy::PolicySet> {
    let mut yaml = String::new();
    for i in 0..size {
        let (namespace, app) = place(i);
        let pattern = app.as_deref() == Some("*");
        let selector = app
            .filter(|_| !pattern)
            .map(|app| format!("  selector:\n    matchLabels:\n      app: {app}\n"))
            .unwrap_or_default();
        let principal = if pattern {
            format!("*/ns/{namespace}/sa/caller-{i}")
        } else {
            format!("cluster.local/ns/{namespace}/sa/caller-{i}")
        };
        yaml.push_str(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p-{i}\n  namespace: {namespace}\nspec:\n{selector}  rules:\n  - from:\n    - source:\n        principals: [\"{principal}\"]\n    to:\n    - operation:\n        methods: [\"POST\"]\n        paths: [\"/api/v1/charges\", \"/api/v1/refunds/*\"]\n---\n"
        ));
    }
    let sources = [zt_policy::load::Source {
        name: "bench.yaml".into(),
        text: yaml,
    }];
    let policies = zt_policy::load::parse(&sources).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(zt_policy::PolicySet::new(
        policies,
        zt_policy::DEFAULT_ROOT_NAMESPACE,
    ))
}

/// Times an allowed request (by policy `allowed_by`) and a denied one.
fn bench_requests(layout: &str, workload: &zt_policy::WorkloadPolicies, allowed_by: usize, n: usize) {
    let request = |caller: &str| -> zt_policy::Request {
        zt_policy::Request {
            source: zt_policy::request::Source {
                principal: Some(format!("spiffe://cluster.local/ns/ns-0/sa/{caller}")),
                namespace: None,
                ip: Some(std::net::IpAddr::from([10, 0, 0, 7])),
            },
            destination: zt_policy::request::Destination {
                namespace: "ns-0".into(),
                port: Some(8080),
                ..Default::default()
            },
            request: Some(zt_policy::request::Http {
                method: "POST".into(),
                path: "/api/v1/refunds/7?full=1".into(),
                host: "billing.ns-0.svc".into(),
                headers: [("content-type".to_owned(), "application/json".to_owned())].into(),
                auth: None,
            }),
            protocol: zt_policy::request::Protocol::Http,
            connection: None,
        }
    };
    let allowed = request(&format!("caller-{allowed_by}"));
    let denied = request("intruder");
    assert_eq_decision(workload, &allowed, zt_policy::Verdict::Allow);
    assert_eq_decision(workload, &denied, zt_policy::Verdict::Deny);
    for (what, request) in [("allowed", &allowed), ("denied", &denied)] {
        let samples = measure(n, || {
            black_box(workload.evaluate(black_box(request)));
        });
        let at = |q: f64| percentile(&samples, q);
        let total: Duration = samples.iter().sum();
        println!(
            "{:<52} {:>10} {:>10} {:>14.0}",
            format!("{layout} — {what}"),
            fmt(at(0.5)),
            fmt(at(0.99)),
            samples.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE)
        );
    }
}

/// A benchmark that measures the wrong thing is worse than none.
fn assert_eq_decision(
    workload: &zt_policy::WorkloadPolicies,
    request: &zt_policy::Request,
    want: zt_policy::Verdict,
) {
    let got = workload.evaluate(request);
    if got.decision != want {
        eprintln!(
            "zt bench policy: expected {want}, got {} ({})",
            got.decision, got.reason
        );
        std::process::exit(1);
    }
}

/// `zt bench pdp`: the seed's Rego policy decided in process (a clone of the
/// prepared engine per decision, as the API does).
pub fn pdp(args: BenchPdp) -> anyhow::Result<ExitCode> {
    let text = include_str!("../../../../examples/rego/allow.rego");
    let policies = zt_policy::rego::RegoPolicies::compile(
        [("allow.rego".to_owned(), text.to_owned())].into(),
        serde_json::Value::Null,
        zt_policy::rego::DEFAULT_EVAL_LIMIT,
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let input = |principal: &str| serde_json::json!({"principal": principal, "method": "POST", "path": "/api/v1/charges"});
    let allowed = input("spiffe://cluster.local/ns/production/sa/payment-service");
    let denied = input("spiffe://cluster.local/ns/production/sa/orders");
    for (want, input) in [(true, &allowed), (false, &denied)] {
        let got = policies.query(&["authz", "allow"], Some(input))?;
        anyhow::ensure!(
            got == Some(serde_json::Value::Bool(want)),
            "expected {want}, got {got:?}"
        );
    }
    println!(
        "{:<28} {:>10} {:>10} {:>14}",
        "decision (seed policy)", "p50", "p99", "ops/s (1 core)"
    );
    for (name, input) in [("allowed", &allowed), ("denied", &denied)] {
        report(
            name,
            &measure(args.iterations.max(1), || {
                black_box(
                    policies
                        .query(black_box(&["authz", "allow"]), Some(black_box(input)))
                        .is_ok(),
                );
            }),
        );
    }
    Ok(ExitCode::SUCCESS)
}
