//! Starting the mesh in order, waiting for each part to be ready, and watching
//! it until it stops.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zt_identity::SpiffeId;
use zt_server::api::{BundleFormat, CreateJoinToken, EntryFilter};
use zt_server::client::AdminClient;
use zt_store::{EntrySpec, Selector};

use crate::Error;
use crate::children::Supervised;
use crate::layout::{self, AGENT_ID, Layout, Service, TRUST_DOMAIN};
use crate::state::{Component, Probe, State};

/// The policies a new DIR starts with (`examples/mesh/policies`).
const POLICIES: &[(&str, &str)] = &[
    (
        "public.yaml",
        include_str!("../../../examples/mesh/policies/public.yaml"),
    ),
    (
        "internal.yaml",
        include_str!("../../../examples/mesh/policies/internal.yaml"),
    ),
    (
        "gateway.yaml",
        include_str!("../../../examples/mesh/policies/gateway.yaml"),
    ),
    (
        "from-gateway.yaml",
        include_str!("../../../examples/mesh/policies/from-gateway.yaml"),
    ),
];

/// The issuer the example policies name (the default `--port-base`'s), replaced
/// by the running one's when they are written into a new DIR.
const EXAMPLE_ISSUER: &str = "https://localhost:7082";

/// How long each part may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is probed while waiting, and children watched after.
const POLL: Duration = Duration::from_millis(50);
const WATCH: Duration = Duration::from_millis(500);

/// Lifetime of the certificates minted for callers outside the mesh.
const CLIENT_CERT_TTL: Duration = Duration::from_secs(3600);

/// How often the certificates for callers outside the mesh are renewed while
/// `zt up` runs.
pub const CLIENT_CERT_RENEWAL: Duration = Duration::from_secs(1800);

/// How long the agent's join token is valid (it is used only if the agent has
/// no valid SVID of its own from an earlier run).
const JOIN_TOKEN_TTL: u64 = 600;
/// Lifetime of the demo user's invite.
const INVITE_TTL: Duration = Duration::from_secs(3600);

/// What [`run`] reports as it goes, in order, for the caller to show.
#[derive(Debug)]
pub enum Event<'a> {
    /// Starting in the layout's directory; `reused` if its datastore is from an
    /// earlier run.
    Opening {
        /// Whether the datastore, agent SVID and policies are reused.
        reused: bool,
    },
    /// This machine, enrolled as a demo device, reports its posture.
    DeviceReady {
        /// The device agent's pid.
        pid: u32,
        /// The device's ID.
        id: &'a str,
        /// `tpm` or `software`.
        key: &'a str,
        /// Its tier after its first report.
        tier: &'a str,
        /// Why not better.
        reasons: &'a [String],
    },
    /// zt server is ready.
    ServerReady {
        /// Its pid.
        pid: u32,
        /// Its data directory.
        data_dir: &'a Path,
        /// Its agent API.
        agent_api: SocketAddr,
    },
    /// A registration entry (a service's proxy, or the gateway) is in place.
    EntryRegistered {
        /// The SPIFFE ID it gives.
        spiffe_id: &'a str,
        /// The executable its entry selects.
        binary: &'a Path,
        /// Whether the entry was created or replaced (else it was already right).
        changed: bool,
    },
    /// zt agent is ready.
    AgentReady {
        /// Its pid.
        pid: u32,
        /// The Workload API socket.
        socket: &'a Path,
    },
    /// A service's proxy is ready (it holds an SVID), its app behind it.
    ProxyReady {
        /// The service.
        service: &'a Service,
        /// The proxy's pid.
        pid: u32,
    },
    /// The policies are applied and both proxies enforce them.
    PoliciesInForce {
        /// Whether zt's example policies were written into the new DIR.
        wrote_examples: bool,
        /// Whether the gateway's example policies were added to a DIR whose
        /// policies predate the gateway.
        added_gateway_policies: bool,
        /// The last line `zt policy apply` printed.
        said: &'a str,
    },
    /// The certificates for callers outside the mesh are written.
    ClientCertsMinted,
    /// The demo user, their group and the demo client exist; an invite to
    /// register their first passkey was made.
    PeopleReady {
        /// The OpenID Provider's issuer.
        issuer: &'a str,
        /// The enrollment link (one use, short-lived).
        invite_url: &'a str,
        /// The CA a browser must trust to open it.
        ca: &'a Path,
    },
    /// The access gateway is ready: it holds its SVID and enforces the
    /// policies in force, in front of service-one.
    GatewayReady {
        /// Its pid.
        pid: u32,
        /// The origin to open in a browser.
        url: &'a str,
        /// Its configuration file.
        config: &'a Path,
        /// Whether its OAuth client was (re)made, with a new secret.
        new_client: bool,
    },
    /// Everything is ready, and the state file written.
    Ready {
        /// How long it took.
        took: Duration,
    },
    /// Starting or running failed; what was started is stopped next.
    Failed(&'a Error),
    /// The shutdown signal came: stopping.
    Stopping,
    /// A child stopped.
    ChildStopped {
        /// Which.
        name: &'a str,
        /// Its pid.
        pid: u32,
        /// How it ended.
        how: &'a str,
    },
    /// Everything that came up has stopped.
    Stopped,
    /// Renewing the client certificates or the gateway's failed; the mesh runs on.
    RenewalFailed(&'a Error),
    /// A demo app stopped serving.
    AppStopped {
        /// Its service.
        service: &'static str,
        /// Why.
        error: &'a std::io::Error,
    },
}

/// Where [`run`] reports its [`Event`]s (also from the demo apps' tasks).
pub type Progress = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// The running mesh: children in the order they started.
struct Mesh {
    children: Vec<Supervised>,
}

impl Mesh {
    /// Stops every child, last started first.
    async fn stop(&mut self, progress: &Progress) {
        while let Some(mut child) = self.children.pop() {
            let how = child.stop().await;
            progress(Event::ChildStopped {
                name: &child.name,
                pid: child.pid,
                how: &how,
            });
        }
    }

    /// What the first child that has exited says, if any has.
    fn exited(&mut self) -> Option<Error> {
        self.children.iter_mut().find_map(Supervised::exit_report)
    }
}

/// How a [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Stopped by the shutdown signal, not by a failure (reported as [`Event::Failed`]).
    pub clean: bool,
    /// Everything was ready at some point.
    pub came_up: bool,
}

/// Runs the mesh of `layout` (whose directory is prepared and locked, its ports
/// free) with `exe` as zt, until `shutdown` completes or a part fails; every
/// child is stopped before it returns.
pub async fn run(
    layout: &Layout,
    exe: &Path,
    shutdown: impl Future<Output = ()>,
    progress: &Progress,
) -> Outcome {
    let mut mesh = Mesh { children: Vec::new() };
    let started = start(layout, exe, &mut mesh, progress).await;
    let came_up = started.is_ok();
    let outcome = match started {
        Ok(()) => supervise(layout, &mut mesh, shutdown, progress).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        progress(Event::Failed(e));
    }
    mesh.stop(progress).await;
    let _ = std::fs::remove_file(layout.state());
    if came_up {
        progress(Event::Stopped);
    }
    Outcome {
        clean: outcome.is_ok(),
        came_up,
    }
}

/// Starts every part, waits for each to be ready, and records what runs.
async fn start(layout: &Layout, exe: &Path, mesh: &mut Mesh, progress: &Progress) -> Result<(), Error> {
    let started = Instant::now();
    let reused = layout.server_dir().join(zt_server::SQLITE_FILE).exists();
    progress(Event::Opening { reused });
    let wrote_examples = write_default_policies(layout)?;
    let added_gateway_policies = !wrote_examples && add_gateway_policies(layout)?;
    let mut starting = Starting {
        layout,
        exe: exe.to_owned(),
        mesh,
        components: Vec::new(),
        progress,
    };
    starting.server().await?;
    let admin = AdminClient::new(layout.admin_socket());
    starting.agent(&admin).await?;
    for service in layout.services() {
        starting.service(&service).await?;
    }

    // The policies, as an operator applies them.
    let (version, said) = apply_policies(layout, &starting.exe, &admin).await?;
    let proxies = starting.mesh.children.iter_mut().skip(2);
    for (service, proxy) in layout.services().iter().zip(proxies) {
        wait_for_policy_version(proxy, service.admin, version).await?;
    }
    progress(Event::PoliciesInForce {
        wrote_examples,
        added_gateway_policies,
        said: &said,
    });

    mint_client_certs(layout, &admin).await?;
    progress(Event::ClientCertsMinted);

    let invite = demo_person(&admin).await?;
    progress(Event::PeopleReady {
        issuer: &layout.issuer(),
        invite_url: invite.url.as_deref().unwrap_or_default(),
        ca: &layout.server_bundle(),
    });

    starting.gateway(&admin, version).await?;
    starting.device(&admin).await?;

    let now = zt_identity::clock::unix_seconds();
    let state = State {
        pid: std::process::id(),
        started_at: zt_ca::rfc3339(now),
        components: starting.components,
    };
    state.save(&layout.state())?;
    progress(Event::Ready {
        took: started.elapsed(),
    });
    Ok(())
}

/// The parts started so far, and what starts the next.
struct Starting<'a> {
    layout: &'a Layout,
    exe: PathBuf,
    mesh: &'a mut Mesh,
    components: Vec<Component>,
    progress: &'a Progress,
}

impl Starting<'_> {
    /// Spawns `program args…` as `name`, waits until `probe` passes, and records
    /// it; returns its pid.
    async fn run(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&OsStr],
        log: &str,
        probe: Probe,
    ) -> Result<u32, Error> {
        let mut child = Supervised::spawn(name, program, args, &self.layout.log(log))?;
        let ready = wait_healthy(&mut child, &probe).await;
        let component = Component {
            name: child.name.clone(),
            pid: child.pid,
            probe,
            log: Some(child.log.clone()),
        };
        // Kept even if not ready, so that it is stopped with the rest.
        self.mesh.children.push(child);
        ready?;
        let pid = component.pid;
        self.components.push(component);
        Ok(pid)
    }

    /// The control plane.
    async fn server(&mut self) -> Result<(), Error> {
        let layout = self.layout;
        let (http, agent_api) = (layout.server_http().to_string(), layout.agent_api().to_string());
        let idp = layout.idp().to_string();
        let devices = layout.devices().to_string();
        let policy = layout.device_policy();
        if !policy.exists() {
            write_files(&[(
                policy.clone(),
                DEVICE_POLICY.as_bytes().to_vec(),
                zt_fs::PUBLIC_MODE,
            )])?;
        }
        let data_dir = layout.server_dir();
        let args: [&OsStr; 17] = [
            "server".as_ref(),
            "--trust-domain".as_ref(),
            TRUST_DOMAIN.as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--http".as_ref(),
            http.as_ref(),
            "--agent-api".as_ref(),
            agent_api.as_ref(),
            "--idp".as_ref(),
            idp.as_ref(),
            "--devices".as_ref(),
            devices.as_ref(),
            "--device-policy".as_ref(),
            policy.as_os_str(),
            "--device-state-reader".as_ref(),
            layout::GATEWAY_ID.as_ref(),
        ];
        let probe = Probe::Http {
            addr: layout.server_http(),
            path: "/readyz".into(),
        };
        let exe = self.exe.clone();
        let pid = self.run("zt server", &exe, &args, "server", probe).await?;
        (self.progress)(Event::ServerReady {
            pid,
            data_dir: &data_dir,
            agent_api: layout.agent_api(),
        });
        Ok(())
    }

    /// The agent, joined with a fresh token, and the entries of the workloads it serves.
    async fn agent(&mut self, admin: &AdminClient) -> Result<(), Error> {
        let layout = self.layout;
        let bundle = admin.bundle(BundleFormat::Pem).await?;
        let token = admin
            .create_join_token(&CreateJoinToken {
                spiffe_id: Some(AGENT_ID.to_owned()),
                ttl_secs: JOIN_TOKEN_TTL,
            })
            .await?;
        let (bundle_file, token_file) = (layout.server_bundle(), layout.join_token());
        write_files(&[
            (bundle_file.clone(), bundle.into_bytes(), zt_fs::PUBLIC_MODE),
            (token_file.clone(), token.token.into_bytes(), zt_fs::PRIVATE_MODE),
        ])?;
        let workloads = layout
            .services()
            .into_iter()
            .map(|service| (service.spiffe_id, layout.proxy_binary(service.name)))
            .chain([(layout::GATEWAY_ID.to_owned(), layout.gateway_binary())]);
        for (spiffe_id, binary) in workloads {
            link_executable(&self.exe, &binary)?;
            let changed = register(admin, &spiffe_id, &binary).await?;
            (self.progress)(Event::EntryRegistered {
                spiffe_id: &spiffe_id,
                binary: &binary,
                changed,
            });
        }
        let agent_api = layout.agent_api().to_string();
        let socket = layout.agent_socket();
        let data_dir = layout.agent_dir().join("data");
        let args: [&OsStr; 11] = [
            "agent".as_ref(),
            "--server".as_ref(),
            agent_api.as_ref(),
            "--trust-bundle".as_ref(),
            bundle_file.as_os_str(),
            "--join-token-file".as_ref(),
            token_file.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
        ];
        let probe = Probe::Unix {
            socket: socket.clone(),
        };
        let exe = self.exe.clone();
        let pid = self.run("zt agent", &exe, &args, "agent", probe).await?;
        (self.progress)(Event::AgentReady { pid, socket: &socket });
        Ok(())
    }

    /// A demo service: its app, in this process, behind its own proxy.
    async fn service(&mut self, service: &Service) -> Result<(), Error> {
        let app = crate::demo::bind(service.name, service.app).await?;
        let (name, progress) = (service.name, Arc::clone(self.progress));
        tokio::spawn(async move {
            if let Err(error) = app.await {
                progress(Event::AppStopped {
                    service: name,
                    error: &error,
                });
            }
        });
        self.components.push(Component {
            name: format!("{} app", service.name),
            pid: std::process::id(),
            probe: Probe::Http {
                addr: service.app,
                path: "/healthz".into(),
            },
            log: None,
        });
        let args = proxy_args(self.layout, service);
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        let name = format!("{} proxy", service.name);
        let probe = Probe::Http {
            addr: service.admin,
            path: "/readyz".into(),
        };
        let binary = self.layout.proxy_binary(service.name);
        let log = format!("{}-proxy", service.name);
        let pid = self.run(&name, &binary, &args, &log, probe).await?;
        (self.progress)(Event::ProxyReady { service, pid });
        Ok(())
    }

    /// The access gateway in front of service-one: its HTTPS certificate, its
    /// OAuth client and configuration, then the process, ready once it holds
    /// its SVID and enforces policy `version`.
    async fn gateway(&mut self, admin: &AdminClient, version: u64) -> Result<(), Error> {
        let layout = self.layout;
        mint_gateway_cert(layout, admin).await?;
        let new_client = gateway_client(layout, admin).await?;
        let config = layout.gateway_config();
        write_files(&[(
            config.clone(),
            gateway_config(layout).into_bytes(),
            zt_fs::PUBLIC_MODE,
        )])?;
        let args: [&OsStr; 3] = ["gateway".as_ref(), "--config".as_ref(), config.as_os_str()];
        let probe = Probe::Http {
            addr: layout.gateway_admin(),
            path: "/readyz".into(),
        };
        let binary = layout.gateway_binary();
        let pid = self.run("zt gateway", &binary, &args, "gateway", probe).await?;
        if let Some(gateway) = self.mesh.children.last_mut() {
            wait_for_policy_version(gateway, layout.gateway_admin(), version).await?;
        }
        (self.progress)(Event::GatewayReady {
            pid,
            url: &layout.gateway_url(),
            config: &config,
            new_client,
        });
        Ok(())
    }
}

impl Starting<'_> {
    /// This machine as a demo device: enrolled once (a software key unless
    /// there is a TPM), then its agent reporting every 2 s.
    async fn device(&mut self, admin: &AdminClient) -> Result<(), Error> {
        let layout = self.layout;
        let dir = layout.device_dir();
        if !dir.join(zt_device::agent::DEVICE_FILE).exists() {
            let owner = crate::layout::DEMO_USER;
            let token = admin
                .create_device_token(&zt_server::api::CreateDeviceToken {
                    owner: owner.to_owned(),
                    ttl_secs: 300,
                    approval: false,
                    test_mode: false,
                })
                .await?;
            let bundle = std::fs::read(layout.server_bundle()).map_err(|e| Error::Io {
                what: format!("reading {}", layout.server_bundle().display()),
                source: e,
            })?;
            let collector = zt_device::facts::Collector::new(Vec::new(), env!("CARGO_PKG_VERSION"));
            zt_device::agent::enroll(zt_device::agent::Enrollment {
                dir: &dir,
                server: &layout.devices_url(),
                bundle_pem: &bundle,
                token: &token.token,
                key: zt_device::key::KeyChoice::Auto,
                tpm: &zt_device::key::TpmLocation::from_env(),
                hardware: collector.hardware(),
            })
            .await?;
        }
        let args: [&OsStr; 6] = [
            "device".as_ref(),
            "agent".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--interval".as_ref(),
            "2s".as_ref(),
        ];
        let probe = Probe::Fresh {
            file: dir.join(zt_device::agent::LAST_REPORT_FILE),
            within_secs: 10,
        };
        let exe = self.exe.clone();
        let pid = self.run("zt device agent", &exe, &args, "device", probe).await?;
        let identity: zt_device::agent::DeviceIdentity =
            std::fs::read(dir.join(zt_device::agent::DEVICE_FILE))
                .ok()
                .and_then(|text| serde_json::from_slice(&text).ok())
                .ok_or_else(|| Error::Io {
                    what: format!("reading {}", dir.join(zt_device::agent::DEVICE_FILE).display()),
                    source: std::io::Error::other("not a device identity"),
                })?;
        let shown = admin.device(&identity.device_id).await?;
        (self.progress)(Event::DeviceReady {
            pid,
            id: &identity.device_id,
            key: &shown.device.key_type,
            tier: &shown.device.tier,
            reasons: &shown.device.tier_reasons,
        });
        Ok(())
    }
}

/// The compliance policy `zt up` starts with.
const DEVICE_POLICY: &str = include_str!("../../../examples/devices/compliance.yaml");

/// Runs until `shutdown`, watching the children; a child that exits is an error
/// that stops the rest.
async fn supervise(
    layout: &Layout,
    mesh: &mut Mesh,
    shutdown: impl Future<Output = ()>,
    progress: &Progress,
) -> Result<(), Error> {
    let admin = AdminClient::new(layout.admin_socket());
    let mut watch = tokio::time::interval(WATCH);
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + CLIENT_CERT_RENEWAL,
        CLIENT_CERT_RENEWAL,
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                progress(Event::Stopping);
                return Ok(());
            }
            _ = watch.tick() => {
                if let Some(report) = mesh.exited() {
                    return Err(report);
                }
            }
            _ = renew.tick() => {
                let renewed = match mint_client_certs(layout, &admin).await {
                    Ok(()) => mint_gateway_cert(layout, &admin).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = renewed {
                    progress(Event::RenewalFailed(&e));
                }
            }
        }
    }
}

/// Probes until `probe` passes; fails if the child exits or the time runs out.
async fn wait_healthy(child: &mut Supervised, probe: &Probe) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let check = probe.clone();
        let result = tokio::task::spawn_blocking(move || check.check())
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let why = match result {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if let Some(report) = child.exit_report() {
            return Err(report);
        }
        if Instant::now() > deadline {
            return Err(child.failure(&format!("was not ready after {READY_TIMEOUT:?} ({probe}: {why})")));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `proxy` (a service's proxy, or the gateway) enforces policy
/// `version` (the `zt_proxy_policy_version` metric on its `admin` port).
async fn wait_for_policy_version(
    proxy: &mut Supervised,
    admin: SocketAddr,
    version: u64,
) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let current = tokio::task::spawn_blocking(move || crate::state::http_get(admin, "/metrics"))
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|(_, body)| {
                body.lines()
                    .find_map(|line| line.strip_prefix("zt_proxy_policy_version "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
        if current.is_some_and(|current| current >= version) {
            return Ok(());
        }
        if proxy.exited().is_some() || Instant::now() > deadline {
            return Err(proxy.failure(&format!(
                "did not receive policy version {version} (it has {current:?})"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes the example policies into a new DIR, naming this layout's issuer; an
/// existing policy directory (perhaps edited) is left as it is. Returns whether
/// it wrote them.
fn write_default_policies(layout: &Layout) -> Result<bool, Error> {
    let dir = &layout.policies();
    if dir.exists() {
        return Ok(false);
    }
    // Written beside it and renamed into place: never a half-written directory.
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(Error::io(staging.display()))?;
    let files: Vec<_> = POLICIES
        .iter()
        .map(|(name, text)| {
            let text = text.replace(EXAMPLE_ISSUER, &layout.issuer());
            (staging.join(name), text.into_bytes(), zt_fs::PUBLIC_MODE)
        })
        .collect();
    write_files(&files)?;
    std::fs::rename(&staging, dir).map_err(Error::io(dir.display()))?;
    Ok(true)
}

/// The example policies that let people through the gateway (see
/// `examples/mesh/policies/gateway.yaml`).
const GATEWAY_POLICIES: [&str; 2] = ["gateway.yaml", "from-gateway.yaml"];

/// A DIR whose policies were written before `zt up` ran a gateway (it has never
/// written the gateway's configuration) gets the gateway's example policies
/// beside its own, once: without them no policy would select the gateway, and
/// Istio's semantics would let anyone signed in through it. Returns whether it
/// added them.
fn add_gateway_policies(layout: &Layout) -> Result<bool, Error> {
    let dir = layout.policies();
    if layout.gateway_config().exists() || GATEWAY_POLICIES.iter().any(|name| dir.join(name).exists()) {
        return Ok(false);
    }
    let files: Vec<_> = POLICIES
        .iter()
        .filter(|(name, _)| GATEWAY_POLICIES.contains(name))
        .map(|(name, text)| {
            let text = text.replace(EXAMPLE_ISSUER, &layout.issuer());
            (dir.join(name), text.into_bytes(), zt_fs::PUBLIC_MODE)
        })
        .collect();
    write_files(&files)?;
    Ok(true)
}

fn write_files(files: &[(PathBuf, Vec<u8>, u32)]) -> Result<(), Error> {
    zt_fs::write_atomically(files).map_err(Error::Write)
}

/// Makes `link` the same executable as `exe`: a hard link, replaced when zt was
/// rebuilt since (a copy, made again each run, where a hard link cannot be made).
fn link_executable(exe: &Path, link: &Path) -> Result<(), Error> {
    use std::os::unix::fs::MetadataExt as _;
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let exe_meta = std::fs::metadata(exe).map_err(Error::io(exe.display()))?;
    if std::fs::metadata(link).is_ok_and(|link_meta| same(&exe_meta, &link_meta)) {
        return Ok(());
    }
    let temporary = link.with_extension("new");
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(exe, &temporary).is_err() {
        std::fs::copy(exe, &temporary).map_err(Error::io(format!(
            "copying {} to {}",
            exe.display(),
            temporary.display()
        )))?;
    }
    std::fs::rename(&temporary, link).map_err(Error::io(link.display()))
}

/// Makes sure `spiffe_id` has exactly its entry: under the agent, for this
/// user's processes running `binary`. Returns whether it changed anything.
async fn register(admin: &AdminClient, spiffe_id: &str, binary: &Path) -> Result<bool, Error> {
    let selectors = [
        format!("unix:uid:{}", effective_uid()?),
        format!("unix:path:{}", binary.display()),
    ];
    let spec = EntrySpec {
        spiffe_id: SpiffeId::parse(spiffe_id)?,
        parent_id: SpiffeId::parse(AGENT_ID)?,
        selectors: selectors
            .iter()
            .map(|s| Selector::parse(s))
            .collect::<Result<_, _>>()?,
        x509_ttl: 3600,
        jwt_ttl: 300,
        // For callers that check host names (curl, Python requests).
        dns_names: vec!["localhost".into()],
        admin: false,
        node: false,
        expires_at: None,
        hint: None,
    }
    .normalize()?;
    let existing = admin
        .list_entries(&EntryFilter {
            spiffe_id: Some(spiffe_id.to_owned()),
            parent_id: None,
        })
        .await?;
    if let [only] = existing.as_slice()
        && only.spec == spec
    {
        return Ok(false);
    }
    for entry in existing {
        admin.delete_entry(&entry.id).await?;
    }
    admin.create_entry(&spec).await?;
    Ok(true)
}

/// The effective user ID, which the agent attests as `unix:uid`.
fn effective_uid() -> Result<u32, Error> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(Error::io("/proc/self/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
        .ok_or(Error::NoUid)
}

fn proxy_args(layout: &Layout, service: &Service) -> Vec<std::ffi::OsString> {
    let peer_inbound = layout
        .services()
        .iter()
        .find(|s| s.name == service.peer)
        .map(|s| s.inbound)
        .unwrap_or(service.inbound);
    [
        "proxy".into(),
        "--socket".into(),
        layout.agent_socket().into_os_string(),
        "--inbound".into(),
        service.inbound.to_string().into(),
        "--app".into(),
        service.app.to_string().into(),
        "--admin".into(),
        service.admin.to_string().into(),
        "--allow-spiffe-id".into(),
        format!("spiffe://{TRUST_DOMAIN}/*").into(),
        "--strip-header".into(),
        "X-Client-CN".into(),
        "--policies-from-agent".into(),
        "--label".into(),
        format!("app={}", service.name).into(),
        "--decision-log".into(),
        layout.decision_log(service.name).into_os_string(),
        "--upstream".into(),
        format!(
            "{},{peer_inbound},{}",
            service.outbound,
            layout::spiffe_id(service.peer)
        )
        .into(),
    ]
    .into()
}

/// Runs `zt policy apply DIR/policies`; returns the version in force and the
/// last line the command printed (its diff is left out of the progress).
async fn apply_policies(layout: &Layout, exe: &Path, admin: &AdminClient) -> Result<(u64, String), Error> {
    let output = tokio::process::Command::new(exe)
        .arg("policy")
        .arg("apply")
        .arg(layout.policies())
        .arg("--socket")
        .arg(layout.admin_socket())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(Error::io("running zt policy apply"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.trim();
        return Err(Error::PolicyApply {
            dir: layout.policies(),
            said: said.strip_prefix("zt: ").unwrap_or(said).to_owned(),
        });
    }
    let applied = admin.policies().await?.ok_or(Error::NoPolicyVersion)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = stdout.lines().last().unwrap_or_default().to_owned();
    Ok((applied.version, said))
}

/// The demo user (in the demo group) and the demo public client, made once and
/// kept across runs; and a fresh invite for the user's first passkey.
async fn demo_person(admin: &AdminClient) -> Result<zt_server::api::Invite, Error> {
    use crate::layout::{DEMO_CLIENT, DEMO_GROUP, DEMO_REDIRECT_URI, DEMO_USER};
    // 409: made by an earlier run, kept.
    let exists = |e: &zt_server::client::ClientError| {
        matches!(e, zt_server::client::ClientError::Refused { status: 409, .. })
    };
    if let Err(e) = admin.create_group(DEMO_GROUP).await
        && !exists(&e)
    {
        return Err(e.into());
    }
    let user = zt_store::NewUser {
        name: DEMO_USER.into(),
        email: format!("{DEMO_USER}@example.org"),
        display_name: Some("Demo User".into()),
        groups: vec![DEMO_GROUP.into()],
    };
    if let Err(e) = admin.create_user(&user).await
        && !exists(&e)
    {
        return Err(e.into());
    }
    let client = zt_store::NewClient {
        client_id: DEMO_CLIENT.into(),
        kind: zt_store::ClientKind::Public,
        jwks: None,
        redirect_uris: vec![zt_store::RedirectUri::parse(DEMO_REDIRECT_URI).map_err(Error::People)?],
        // The code flow for browsers, the device flow for a terminal.
        grant_types: vec![
            zt_store::GrantType::AuthorizationCode,
            zt_store::GrantType::RefreshToken,
            zt_store::GrantType::DeviceCode,
        ],
        backchannel_logout_uri: None,
        backchannel_logout_session_required: false,
    };
    if let Err(e) = admin.create_client(&client).await
        && !exists(&e)
    {
        return Err(e.into());
    }
    Ok(admin.create_invite(DEMO_USER, INVITE_TTL).await?)
}

/// Certificates for each service's identity, for callers outside the mesh
/// (curl, Python requests): DIR/clients/SERVICE/{svid,key,bundle}.pem.
async fn mint_client_certs(layout: &Layout, admin: &AdminClient) -> Result<(), Error> {
    for service in layout.services() {
        let id = SpiffeId::parse(&service.spiffe_id)?;
        let request = zt_server::client::MintRequest {
            spiffe_id: &id,
            ttl: CLIENT_CERT_TTL,
            dns_names: &[],
        };
        admin
            .mint_x509_svid_to_dir(&request, &layout.client_certs(service.name))
            .await?;
    }
    Ok(())
}

/// The gateway's HTTPS certificate, for `localhost`, from zt server's CA (which
/// browsers are told to trust for the OpenID Provider already):
/// DIR/gateway/tls/{svid,key,bundle}.pem. It lives [`CLIENT_CERT_TTL`] and is
/// minted again at every start and every [`CLIENT_CERT_RENEWAL`]; the gateway
/// loads the new files for new connections.
async fn mint_gateway_cert(layout: &Layout, admin: &AdminClient) -> Result<(), Error> {
    let id = SpiffeId::parse(layout::GATEWAY_ID)?;
    let request = zt_server::client::MintRequest {
        spiffe_id: &id,
        ttl: CLIENT_CERT_TTL,
        dns_names: &["localhost".to_owned()],
    };
    admin
        .mint_x509_svid_to_dir(&request, &layout.gateway_tls())
        .await?;
    Ok(())
}

/// The gateway's confidential OAuth client, with its secret in
/// DIR/gateway/client-secret (0600). Kept across runs while it is as this
/// layout needs it and its secret is there; else (another `--port-base`, the
/// secret file gone) made again, with a new secret — the server shows a secret
/// only when it makes it. Returns whether it was made.
async fn gateway_client(layout: &Layout, admin: &AdminClient) -> Result<bool, Error> {
    use zt_server::client::ClientError;
    use zt_store::{BackchannelLogoutUri, GrantType, RedirectUri};
    let url = layout.gateway_url();
    let wanted = zt_store::NewClient {
        client_id: layout::GATEWAY_CLIENT.into(),
        kind: zt_store::ClientKind::Secret,
        jwks: None,
        redirect_uris: vec![RedirectUri::parse(&format!("{url}/.zt/callback")).map_err(Error::People)?],
        grant_types: vec![
            GrantType::AuthorizationCode,
            GrantType::RefreshToken,
            GrantType::TokenExchange,
        ],
        backchannel_logout_uri: Some(
            BackchannelLogoutUri::parse(&format!("{url}/.zt/backchannel-logout")).map_err(Error::People)?,
        ),
        backchannel_logout_session_required: true,
    };
    let secret_file = layout.gateway_secret();
    match admin.client(layout::GATEWAY_CLIENT).await {
        Ok(existing) => {
            let same = existing.kind == wanted.kind
                && existing
                    .redirect_uris
                    .iter()
                    .map(String::as_str)
                    .eq(wanted.redirect_uris.iter().map(RedirectUri::as_str))
                && existing.grant_types == wanted.grant_types
                && existing.backchannel_logout_uri.as_deref()
                    == wanted
                        .backchannel_logout_uri
                        .as_ref()
                        .map(BackchannelLogoutUri::as_str);
            if same && secret_file.exists() {
                return Ok(false);
            }
            admin.delete_client(layout::GATEWAY_CLIENT).await?;
        }
        Err(ClientError::Refused { status: 404, .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let created = admin.create_client(&wanted).await?;
    let secret = created.secret.ok_or(Error::NoClientSecret)?;
    write_files(&[(secret_file, secret.into_bytes(), zt_fs::PRIVATE_MODE)])?;
    Ok(true)
}

/// The gateway's configuration (zt gateway's YAML, see `zt_gateway::config`),
/// written at every start: `/` and below go to service-one, as the gateway
/// (its SVID from the Workload API), with the person's token exchanged for
/// service-one's audience and their name and groups in headers; the policies
/// come from the agent, those of namespace `edge` that select `app=gateway`.
fn gateway_config(layout: &Layout) -> String {
    // JSON strings are YAML's double-quoted scalars: any path is safe in them.
    let quote = |text: &str| serde_json::Value::from(text).to_string();
    let path = |path: PathBuf| quote(&path.to_string_lossy());
    let tls = layout.gateway_tls();
    let services = layout.services();
    let one = &services[0];
    format!(
        "# Written by zt up at every start (edits are overwritten): zt gateway --config THIS_FILE
listen: {listen}
url: {url}
admin: {admin}
tls: {{cert: {cert}, key: {key}}}
oidc:
  issuer: {issuer}
  client_id: {client}
  client_secret_file: {secret}
  ca: {ca}
  # Bearer tokens of the gateway's own client and of zt-demo (zt login --client-id zt-demo).
  audiences: [{client}, {demo_client}]
session: {{key_file: {session}}}
identity: {{workload_api: {socket}}}
policy: {{agent: true, namespace: {namespace}, labels: {{app: gateway}}, decision_log: {decisions}}}
headers: {{X-Zt-User: preferred_username, X-Zt-Groups: groups}}
routes:
  - {{path: /, upstream: {inbound}, spiffe_id: {spiffe_id}}}
# The live tier of the device whose certificate a client presents is
# request.auth.claims[device_tier] in policies (zt-up/device/device.pem).
devices: {{server: {devices}}}
",
        listen = quote(&layout.gateway().to_string()),
        url = quote(&layout.gateway_url()),
        admin = quote(&layout.gateway_admin().to_string()),
        cert = path(tls.join("svid.pem")),
        key = path(tls.join("key.pem")),
        issuer = quote(&layout.issuer()),
        demo_client = quote(crate::layout::DEMO_CLIENT),
        client = quote(layout::GATEWAY_CLIENT),
        secret = path(layout.gateway_secret()),
        ca = path(layout.server_bundle()),
        session = path(layout.gateway_dir().join("session.key")),
        socket = path(layout.agent_socket()),
        namespace = quote(layout::GATEWAY_NAMESPACE),
        decisions = path(layout.decision_log("gateway")),
        inbound = quote(&one.inbound.to_string()),
        spiffe_id = quote(&one.spiffe_id),
        devices = quote(&layout.devices_url()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn the_gateway_configuration_is_one_zt_gateway_reads() {
        let layout = Layout::new(PathBuf::from("/tmp/zt up \"quoted\""), 7000);
        let config = zt_gateway::GatewayConfig::parse(&gateway_config(&layout), Path::new("/")).unwrap();
        assert_eq!(config.url, "https://localhost:7083");
        assert_eq!(config.redirect_uri(), "https://localhost:7083/.zt/callback");
        assert_eq!(config.oidc.issuer, "https://localhost:7082");
        assert_eq!(config.oidc.client_id, layout::GATEWAY_CLIENT);
        assert_eq!(config.oidc.ca, layout.server_bundle());
        assert_eq!(config.tls.key, layout.gateway_tls().join("key.pem"));
        assert_eq!(config.policy.namespace, "edge");
        assert_eq!(config.policy.labels["app"], "gateway");
        assert_eq!(config.routes[0].upstream, "127.0.0.1:7001");
        assert_eq!(
            config.routes[0].spiffe_id.to_string(),
            layout::spiffe_id("service-one")
        );
        assert_eq!(config.headers["X-Zt-User"], "preferred_username");
    }

    #[test]
    fn the_example_policies_name_the_running_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_owned(), 9000);
        assert!(write_default_policies(&layout).unwrap());
        let gateway = std::fs::read_to_string(layout.policies().join("gateway.yaml")).unwrap();
        assert!(gateway.contains("\"https://localhost:9082/*\""), "{gateway}");
        assert!(!gateway.contains(EXAMPLE_ISSUER), "{gateway}");
        assert!(
            !write_default_policies(&layout).unwrap(),
            "an existing directory is kept"
        );
    }

    #[test]
    fn policies_from_before_the_gateway_get_its_policies_once() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_owned(), 9000);
        assert!(write_default_policies(&layout).unwrap());
        assert!(!add_gateway_policies(&layout).unwrap(), "already there");
        for name in GATEWAY_POLICIES {
            std::fs::remove_file(layout.policies().join(name)).unwrap();
        }
        assert!(
            add_gateway_policies(&layout).unwrap(),
            "a DIR from before the gateway"
        );
        let gateway = std::fs::read_to_string(layout.policies().join("gateway.yaml")).unwrap();
        assert!(gateway.contains("https://localhost:9082/*"), "{gateway}");
        assert!(layout.policies().join("from-gateway.yaml").exists());
        // Once the gateway has run, what the policies hold is the operator's.
        for name in GATEWAY_POLICIES {
            std::fs::remove_file(layout.policies().join(name)).unwrap();
        }
        std::fs::create_dir_all(layout.gateway_dir()).unwrap();
        std::fs::write(layout.gateway_config(), "").unwrap();
        assert!(!add_gateway_policies(&layout).unwrap());
    }
}
