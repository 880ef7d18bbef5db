//! Device trust through zt server's device API, as devices and gateways use
//! it: posture reports accepted per second from software devices on
//! keep-alive mTLS connections, and how late a device that stopped
//! reporting is seen dropping a tier on the `/v1/states` long poll.
//!
//! The server runs in this process on a runtime of its own (threads named
//! `zt-server`), the devices and the follower on another (`bench-client`),
//! so that the CPU time of each side can be read apart from `/proc`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use zt_device::agent::{DeviceDir, Enrollment};
use zt_device::facts::{Facts, Observed};
use zt_device::key::{KeyChoice, TpmLocation};
use zt_device::report::Report;
use zt_identity::{BundleSet, SpiffeId, TrustDomain};
use zt_server::devices::DeviceStates;

use crate::{Error, Figure, Samples};

/// The best tier, held by a device that reports good facts.
const REPORTING_TIER: &str = "trusted";
/// The tier a silent device drops to.
const SILENT_TIER: &str = "basic";
/// Pre-signed reports per second of run, shared by the connections: the
/// most a round can measure (five times the goal of 5 000/s).
const SIGNED_PER_SECOND: usize = 25_000;
/// Devices enrolled at once.
const ENROLLING_AT_ONCE: usize = 16;

/// What [`run`] measures.
#[derive(Debug, Clone)]
pub struct DevicesBench {
    /// Software devices enrolled.
    pub devices: usize,
    /// Concurrent connections of the throughput run, each one device's.
    pub connections: usize,
    /// Length of each throughput round (at most 20 s: reports are signed
    /// before it, and the server refuses one sent 30 s from its clock).
    pub window: Duration,
    /// Throughput rounds.
    pub rounds: usize,
    /// Devices that report once and fall silent, timed to `/v1/states`.
    pub silent: usize,
    /// The policy's heartbeat window.
    pub heartbeat: Duration,
}

/// A real `zt server --devices` in this process (SQLite, the device decision
/// log on), `devices` software devices enrolled with test-mode tokens, then:
/// [`Figure::Delays`] from each silent device's deadline (last accepted
/// report + heartbeat window) to its new tier on the `/v1/states` long poll;
/// [`Figure::Requests`] of reports per round and [`Figure::Rate`] for the
/// median round; [`Figure::Cpu`] of the server and of the clients.
pub fn run(bench: DevicesBench, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("zt-server")
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()?;
    let result = client_rt.block_on(drive(&bench, server_rt.handle().clone(), &mut report));
    drop(client_rt);
    server_rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// The compliance policy of the bench: the example's rules but the hardware
/// key (software devices here), facts good for an hour, and `heartbeat`.
fn policy_yaml(heartbeat: Duration) -> String {
    let mut text = format!(
        "tiers: [{REPORTING_TIER}, {SILENT_TIER}, untrusted]\nheartbeat:\n  window: {}ms\n  silent_tier: {SILENT_TIER}\nrules:\n",
        heartbeat.as_millis().max(1)
    );
    for (name, fact, test, tier) in [
        ("firewall", "firewall.active", "equals: true", "basic"),
        (
            "root-disk-encrypted",
            "disk.root_encrypted",
            "equals: true",
            "basic",
        ),
        (
            "security-updates-few",
            "updates.security_pending",
            "at_most: 10",
            "basic",
        ),
        ("os-supported", "os.id", "in: [debian, ubuntu, fedora]", "basic"),
        ("os-version", "os.version_id", "version_at_least: \"12\"", "basic"),
        (
            "security-updates-none",
            "updates.security_pending",
            "at_most: 0",
            "trusted",
        ),
        ("screen-lock", "screen_lock.enabled", "equals: true", "trusted"),
        (
            "required-processes",
            "processes.required_running",
            "equals: true",
            "trusted",
        ),
    ] {
        text.push_str(&format!(
            "  - name: {name}\n    fact: {fact}\n    {test}\n    max_age: 1h\n    required_for: {tier}\n"
        ));
    }
    text
}

/// Facts that pass every rule of [`policy_yaml`], observed at `now` (seconds).
fn good_facts(now: u64) -> Facts {
    let fact = |value: Value| Observed {
        value: Some(value),
        observed_at: now,
    };
    BTreeMap::from([
        ("firewall.active".to_owned(), fact(Value::Bool(true))),
        ("disk.root_encrypted".to_owned(), fact(Value::Bool(true))),
        ("updates.security_pending".to_owned(), fact(Value::from(0))),
        ("os.id".to_owned(), fact(Value::from("debian"))),
        ("os.version_id".to_owned(), fact(Value::from("12"))),
        ("screen_lock.enabled".to_owned(), fact(Value::Bool(true))),
        ("processes.required_running".to_owned(), fact(Value::Bool(true))),
    ])
}

/// One enrolled device of the bench.
struct Device {
    dir: DeviceDir,
    config: Arc<ClientConfig>,
    /// The next sequence number to sign: above every one signed before.
    next_seq: u64,
}

impl Device {
    /// What signs `n` reports, with the next `n` sequence numbers: run it
    /// where signing may block.
    fn signer(&mut self, n: usize) -> impl FnOnce() -> Result<Vec<String>, Error> + Send + 'static {
        let key = self.dir.key().clone();
        let device_id = self.dir.identity().device_id.clone();
        let first = self.next_seq;
        self.next_seq += n as u64;
        move || {
            let now_ms = zt_identity::clock::unix_millis();
            let facts = good_facts(now_ms / 1000);
            (first..first + n as u64)
                .map(|seq| {
                    let report = Report {
                        device_id: device_id.clone(),
                        seq,
                        sent_ms: now_ms,
                        facts: facts.clone(),
                        overridden: Vec::new(),
                    };
                    Ok(report.sign(|input| key.sign(input).map_err(|e| e.to_string()))?)
                })
                .collect()
        }
    }

    fn client(&self) -> Result<zt_device::agent::Client, Error> {
        Ok(zt_device::agent::Client::new(
            &self.dir.identity().server,
            (*self.config).clone(),
        )?)
    }
}

async fn drive(
    bench: &DevicesBench,
    server_rt: tokio::runtime::Handle,
    report: &mut impl FnMut(Figure),
) -> Result<(), Error> {
    let td = TrustDomain::parse("example.org")?;
    let dir = tempfile::tempdir()?;
    let heartbeat = bench.heartbeat.max(Duration::from_millis(100));
    let policy = zt_device::compliance::Policy::from_yaml(&policy_yaml(heartbeat), "bench policy")
        .map_err(|e| Error::Failed(format!("the bench's compliance policy: {e}")))?;
    let free_port = || -> Result<std::net::SocketAddr, Error> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let devices_addr = free_port()?;
    let config = zt_server::ServerConfig {
        data_dir: dir.path().join("data"),
        datastore: Some(
            dir.path()
                .join(zt_server::SQLITE_FILE)
                .to_string_lossy()
                .into_owned(),
        ),
        trust_domain: td.clone(),
        http_addr: free_port()?,
        ca_ttl: Duration::from_secs(24 * 3600),
        ca_key_type: zt_ca::KeyType::EcP256,
        agent_addr: free_port()?,
        agent_ttl: Duration::from_secs(3600),
        pdp: None,
        idp: None,
        devices: Some(zt_server::devices::DeviceSettings {
            addr: devices_addr,
            policy: Some(policy),
            policy_path: None,
            cert_ttl: Duration::from_secs(24 * 3600),
            decision_log: Some(zt_audit::Writer::open(&dir.path().join("device-decisions.log"))?),
            state_readers: [format!("spiffe://{td}{FOLLOWER_PATH}")].into(),
        }),
    };
    let admin = zt_server::client::AdminClient::new(config.data_dir.join(zt_server::ADMIN_SOCKET));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(zt_server::run(config, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::time::timeout(Duration::from_secs(5), admin.count_entries())
        .await
        .map_or(true, |r| r.is_err())
    {
        if server.is_finished() || Instant::now() >= deadline {
            let _ = stop.send(());
            server.await??;
            return Err(Error::Failed("zt server did not become ready".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let result = measure(bench, &admin, &td, dir.path(), devices_addr, heartbeat, report).await;
    let _ = stop.send(());
    server.await??;
    result
}

async fn measure(
    bench: &DevicesBench,
    admin: &zt_server::client::AdminClient,
    td: &TrustDomain,
    dir: &Path,
    devices_addr: std::net::SocketAddr,
    heartbeat: Duration,
    report: &mut impl FnMut(Figure),
) -> Result<(), Error> {
    let server_url = format!("https://{devices_addr}");
    let bundle_pem = admin.bundle(zt_server::api::BundleFormat::Pem).await?;
    let count = bench.devices.max(bench.connections).max(bench.silent).max(1);

    // Enrollment, a few devices at a time, each in its own directory.
    let started = Instant::now();
    let mut devices = Vec::with_capacity(count);
    let mut enrolling = tokio::task::JoinSet::new();
    for i in 0..count {
        if enrolling.len() >= ENROLLING_AT_ONCE
            && let Some(done) = enrolling.join_next().await
        {
            devices.push(done??);
        }
        let (admin, url, bundle) = (admin.clone(), server_url.clone(), bundle_pem.clone());
        let device_dir = dir.join("devices").join(i.to_string());
        enrolling.spawn(async move { enroll_one(&admin, &url, &bundle, &device_dir).await });
    }
    while let Some(done) = enrolling.join_next().await {
        devices.push(done??);
    }
    let enrolled = started.elapsed();
    report(Figure::Rate {
        name: "devices enrolled (token, enrollment, certificate)".into(),
        items: count as u64,
        what: "devices",
        took: enrolled,
    });

    // Staleness first, while no other device reports.
    let silent = bench.silent.min(devices.len());
    if silent > 0 {
        let delays = staleness(admin, td, &server_url, &mut devices[..silent], heartbeat).await?;
        report(Figure::Delays {
            name: format!("silent device → /v1/states (window {heartbeat:?})"),
            samples: delays,
            what: "devices".into(),
        });
    }

    // Throughput: rounds of `connections` devices, each on its own connection.
    let connections = bench.connections.clamp(1, devices.len());
    let window = bench
        .window
        .clamp(Duration::from_secs(1), Duration::from_secs(20));
    let per_connection = (SIGNED_PER_SECOND * window.as_secs().max(1) as usize).div_ceil(connections);
    let mut rates = Vec::new();
    let (mut server_cpu, mut client_cpu, mut accepted, mut elapsed_all) =
        (Duration::ZERO, Duration::ZERO, 0u64, Duration::ZERO);
    for round in 0..bench.rounds.max(1) {
        let chosen: Vec<usize> = (0..connections)
            .map(|j| (round * connections + j) % devices.len())
            .collect();
        // Signed before the clock starts: the devices' signing is not measured.
        let mut signing = Vec::new();
        for &i in &chosen {
            let device = devices
                .get_mut(i)
                .ok_or_else(|| Error::Failed("no such device".into()))?;
            signing.push((
                device.client()?,
                tokio::task::spawn_blocking(device.signer(per_connection + 1)),
            ));
        }
        let mut work = Vec::new();
        for (client, signed) in signing {
            work.push((client, signed.await??));
        }

        // One report per connection untimed (its TLS handshake), then the window.
        let ready = Arc::new(tokio::sync::Barrier::new(work.len() + 1));
        let mut tasks = tokio::task::JoinSet::new();
        for (mut client, signed) in work {
            let ready = ready.clone();
            tasks.spawn(async move {
                let mut signed = signed.into_iter();
                let first = match signed.next() {
                    Some(first) => client
                        .post("/v1/report", first)
                        .await
                        .map(drop)
                        .map_err(Error::from),
                    None => Err(Error::Failed("no report signed".into())),
                };
                ready.wait().await;
                first?;
                let started = Instant::now();
                let mut latencies = Vec::new();
                while started.elapsed() < window {
                    let Some(body) = signed.next() else {
                        return Err(Error::Failed(
                            "the pre-signed reports ran out before the window ended".into(),
                        ));
                    };
                    let t = Instant::now();
                    client.post("/v1/report", body).await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, Error>(latencies)
            });
        }
        // Every connection up (its first report answered) before the clock starts.
        ready.wait().await;
        let cpu_before = cpu_split()?;
        let started = Instant::now();
        let mut latencies = Vec::new();
        while let Some(done) = tasks.join_next().await {
            latencies.extend(done??);
        }
        let elapsed = started.elapsed();
        let cpu_after = cpu_split()?;
        server_cpu += cpu_after.0.saturating_sub(cpu_before.0);
        client_cpu += cpu_after.1.saturating_sub(cpu_before.1);
        accepted += latencies.len() as u64;
        elapsed_all += elapsed;
        rates.push((
            latencies.len() as f64 / elapsed.as_secs_f64(),
            latencies.len() as u64,
            elapsed,
        ));
        report(Figure::Requests {
            name: format!("posture reports accepted, round {}", round + 1),
            samples: Samples::new(latencies),
            callers: connections,
            elapsed,
        });
    }
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(&(_, items, took)) = rates.get(rates.len() / 2) {
        report(Figure::Rate {
            name: format!("posture reports accepted, median of {} rounds", rates.len()),
            items,
            what: "reports",
            took,
        });
    }
    report(Figure::Cpu {
        name: "zt server CPU".into(),
        cpu: server_cpu,
        elapsed: elapsed_all,
        items: accepted,
        what: "report",
    });
    report(Figure::Cpu {
        name: "devices' CPU (client side)".into(),
        cpu: client_cpu,
        elapsed: elapsed_all,
        items: accepted,
        what: "report",
    });
    report(gateway_device_check(&TrustDomain::parse("example.org")?));
    Ok(())
}

/// What the gateway adds to each request with device trust on: the live
/// state of the client certificate's device looked up among 10 000, and
/// its two claims put in place of the token's.
fn gateway_device_check(trust_domain: &TrustDomain) -> Figure {
    const DEVICES: usize = 10_000;
    let devices = zt_gateway::devices::Devices::new(Duration::from_secs(15));
    devices.set_trust_domain(trust_domain);
    devices.replace_all(
        (0..DEVICES)
            .map(|i| zt_gateway::devices::DeviceState {
                id: format!("{i:032x}"),
                status: "active".into(),
                tier: if i % 3 == 0 { "basic" } else { "trusted" }.into(),
                reasons: Vec::new(),
            })
            .collect(),
    );
    let ids: Vec<String> = (0..DEVICES)
        .map(|i| format!("spiffe://{trust_domain}/device/{:032x}", (i * 7919) % DEVICES))
        .collect();
    let mut claims = serde_json::Map::new();
    let mut next = 0;
    let samples = crate::measure(200_000, || {
        next = (next + 1) % DEVICES;
        let device = devices.lookup(
            ids.get(next).map(String::as_str),
            zt_identity::clock::unix_millis(),
        );
        claims.extend(device.claims());
        std::hint::black_box(&claims);
    });
    Figure::Calls {
        name: format!("gateway: the live device check of one request ({DEVICES} devices)"),
        samples,
    }
}

/// Enrolls one software device in `dir` with a test-mode token.
async fn enroll_one(
    admin: &zt_server::client::AdminClient,
    server: &str,
    bundle_pem: &str,
    dir: &Path,
) -> Result<Device, Error> {
    let token = admin
        .create_device_token(&zt_server::api::CreateDeviceToken {
            owner: "bench@example.org".into(),
            ttl_secs: 3600,
            approval: false,
            test_mode: true,
        })
        .await?;
    std::fs::create_dir_all(dir)?;
    let enrolled = zt_device::agent::enroll(Enrollment {
        dir,
        server,
        bundle_pem: bundle_pem.as_bytes(),
        token: &token.token,
        key: KeyChoice::Software,
        tpm: &TpmLocation::none(),
        hardware: BTreeMap::new(),
    })
    .await?;
    if enrolled.status != "active" {
        return Err(Error::Failed(format!(
            "device {} enrolled {}, not active",
            enrolled.identity.device_id, enrolled.status
        )));
    }
    let device = DeviceDir::open(dir, &TpmLocation::none())?;
    let config = Arc::new(device.client_config()?);
    Ok(Device {
        dir: device,
        config,
        next_seq: 1,
    })
}

/// Each of `devices` reports once, the reports spread over a second, then
/// falls silent; a follower of `/v1/states` times each device's drop to the
/// silent tier from its deadline (its last accepted report, as the server
/// stamped it, plus `heartbeat`).
async fn staleness(
    admin: &zt_server::client::AdminClient,
    td: &TrustDomain,
    server_url: &str,
    devices: &mut [Device],
    heartbeat: Duration,
) -> Result<Samples, Error> {
    let mut follower = Follower::connect(admin, td, server_url).await?;
    let mut version = follower.states(0, 0).await?.version;
    let watched: HashMap<String, usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.dir.identity().device_id.clone(), i))
        .collect();

    let spread = Duration::from_secs(1);
    let mut reporting = tokio::task::JoinSet::new();
    let started = Instant::now();
    let n = devices.len() as u32;
    for (i, device) in devices.iter_mut().enumerate() {
        let body = device.signer(1)()?
            .pop()
            .ok_or_else(|| Error::Failed("no report signed".into()))?;
        let mut client = device.client()?;
        let at = started + spread * i as u32 / n.max(1);
        reporting.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            client.post("/v1/report", body).await
        });
    }

    let heartbeat_ms = heartbeat.as_millis() as u64;
    let mut delays: Vec<Option<Duration>> = vec![None; devices.len()];
    let mut seen = 0;
    let give_up = Instant::now() + spread + heartbeat + Duration::from_secs(30);
    while seen < devices.len() {
        if Instant::now() >= give_up {
            return Err(Error::Failed(format!(
                "{} of {} silent devices never seen at {SILENT_TIER} on /v1/states",
                devices.len() - seen,
                devices.len()
            )));
        }
        let states = follower.states(version, 30).await?;
        let observed_ms = zt_identity::clock::unix_millis();
        version = states.version;
        for state in states.devices {
            let (Some(&i), Some(last)) = (watched.get(&state.id), state.last_report_ms) else {
                continue;
            };
            if state.tier != SILENT_TIER {
                continue;
            }
            if let Some(slot @ None) = delays.get_mut(i) {
                *slot = Some(Duration::from_millis(
                    observed_ms.saturating_sub(last + heartbeat_ms),
                ));
                seen += 1;
            }
        }
    }
    while let Some(done) = reporting.join_next().await {
        done??;
    }
    Ok(Samples::new(delays.into_iter().flatten().collect()))
}

/// A workload of the trust domain following `/v1/states`, as the gateway does.
struct Follower {
    authority: String,
    addr: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
    sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
}

/// The follower's SPIFFE ID path, the one `--device-state-reader`.
const FOLLOWER_PATH: &str = "/bench/device-follower";

impl Follower {
    async fn connect(
        admin: &zt_server::client::AdminClient,
        td: &TrustDomain,
        server_url: &str,
    ) -> Result<Self, Error> {
        let id = SpiffeId::from_parts(td, FOLLOWER_PATH)?;
        let (minted, key_pem) = admin
            .mint_x509_svid_for_new_key(&zt_server::client::MintRequest {
                spiffe_id: &id,
                ttl: Duration::from_secs(3600),
                dns_names: &[],
            })
            .await
            .map_err(|e| Error::Failed(format!("minting the follower's SVID: {e}")))?;
        let chain = pem_certs(&minted.chain_pem)?;
        let key = zt_identity::x509::private_key_from_pem(key_pem.as_bytes()).map_err(Error::Failed)?;
        let mut bundles = BundleSet::default();
        bundles.insert(zt_identity::Bundle::parse(minted.bundle_pem.as_bytes(), None)?);
        let config = zt_tls::client_config(
            chain,
            key,
            Arc::new(bundles),
            zt_tls::PeerMatcher::MemberOf(td.clone()),
            zt_tls::TlsVersions::Tls13,
        )?;
        let authority = server_url.trim_start_matches("https://").to_owned();
        let addr: std::net::SocketAddr = authority
            .parse()
            .map_err(|_| Error::Failed(format!("{server_url}: not host:port")))?;
        Ok(Self {
            authority,
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sender: None,
        })
    }

    async fn connected(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, Error> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .connector
                .connect(ServerName::IpAddress(self.addr.ip().into()), tcp)
                .await?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                    .await
                    .map_err(|e| Error::Failed(format!("/v1/states: {e}")))?;
            tokio::spawn(connection);
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| Error::Failed("/v1/states: not connected".into()))
    }

    /// `GET /v1/states?after=AFTER&wait=WAIT`.
    async fn states(&mut self, after: u64, wait: u64) -> Result<DeviceStates, Error> {
        let failed = |e: String| Error::Failed(format!("/v1/states: {e}"));
        let request = http::Request::get(format!("/v1/states?after={after}&wait={wait}"))
            .header(http::header::HOST, &self.authority)
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed(e.to_string()))?;
        let sender = self.connected().await?;
        sender.ready().await.map_err(|e| failed(e.to_string()))?;
        let answer = tokio::time::timeout(Duration::from_secs(wait + 10), sender.send_request(request))
            .await
            .map_err(Error::timeout("no answer from /v1/states"))?
            .map_err(|e| failed(e.to_string()))?;
        let status = answer.status();
        let body = Limited::new(answer.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| failed(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(failed(format!("{status}: {}", String::from_utf8_lossy(&body))));
        }
        serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))
    }
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Failed(format!("the follower's SVID: {e}")))
}

/// CPU time of this process so far: (server side, client side). The
/// client side is the `bench-client` threads and the main thread; the
/// server side is the rest (the `zt-server` runtime and any thread it
/// started), from the process total so that ended threads still count.
fn cpu_split() -> Result<(Duration, Duration), Error> {
    let total = ticks(&std::fs::read_to_string("/proc/self/stat")?)?;
    let pid = std::process::id().to_string();
    let mut client = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // ended meanwhile
        };
        let comm = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or("", |(comm, _)| comm);
        if comm.starts_with("bench-client") || task.file_name().to_string_lossy() == pid {
            client += ticks(&stat)?;
        }
    }
    // Linux reports these in USER_HZ, 100 on every architecture zt builds for.
    let tick = |t: u64| Duration::from_millis(t * 10);
    Ok((tick(total.saturating_sub(client)), tick(client)))
}

/// utime + stime of a `/proc/…/stat` line, in clock ticks.
fn ticks(stat: &str) -> Result<u64, Error> {
    let bad = || Error::Failed("/proc stat unreadable".into());
    let (_, rest) = stat.rsplit_once(')').ok_or_else(bad)?;
    // After the command: state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field =
        |n: usize| -> Result<u64, Error> { fields.get(n - 3).and_then(|f| f.parse().ok()).ok_or_else(bad) };
    Ok(field(14)? + field(15)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_loads_and_good_facts_pass() {
        let policy = zt_device::compliance::Policy::from_yaml(&policy_yaml(Duration::from_secs(2)), "bench");
        assert!(policy.is_ok(), "{:?}", policy.err());
        assert_eq!(good_facts(1).len(), 7);
    }

    #[test]
    fn ticks_of_a_stat_line() {
        let line = "42 (bench (x) y) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15";
        assert_eq!(ticks(line).ok(), Some(11 + 12));
    }
}
