//! `zt up`: the whole mesh on one machine, in one foreground process. It runs
//! `zt server` (SQLite in DIR), a `zt agent` joined with a fresh token, and two
//! demo services — an app built into zt behind a `zt proxy` each, every proxy
//! with its own SVID from the Workload API — and applies the example policies
//! with `zt policy apply`. Ctrl-C stops everything in order; running it again
//! reuses DIR: the datastore, the agent's SVID, the (possibly edited) policies.

mod children;
mod demo;
mod layout;
mod state;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use zt_identity::SpiffeId;
use zt_server::api::{BundleFormat, CreateJoinToken, EntryFilter};
use zt_server::client::AdminClient;
use zt_store::{EntrySpec, Selector};

use self::children::Supervised;
use self::layout::{AGENT_ID, Layout, MAX_PORT_OFFSET, Service, TRUST_DOMAIN};
use self::state::{Component, Probe, State};

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where everything lives: datastore, sockets, certificates, policies, decision
    /// logs, process logs. The next run reuses it.
    #[arg(long, default_value = "zt-up")]
    pub(crate) dir: PathBuf,
    /// The loopback ports: zt server's health and metrics on BASE+80 and agent API on
    /// BASE+81; per service (one, two): mTLS inbound BASE+1, +2; outbound to the other
    /// service BASE+11, +12; proxy admin BASE+21, +22; app BASE+31, +32.
    #[arg(long, default_value_t = 7000)]
    pub(crate) port_base: u16,
    /// Show what runs in --dir and whether it is healthy, as `zt status` does.
    #[arg(long)]
    pub(crate) status: bool,
}

#[derive(Args)]
pub(crate) struct UpDirArgs {
    /// The directory `zt up` runs in.
    #[arg(long, default_value = "zt-up")]
    pub(crate) dir: PathBuf,
}

/// The policies a new DIR starts with (`examples/mesh/policies`).
const POLICIES: &[(&str, &str)] = &[
    (
        "public.yaml",
        include_str!("../../../../../examples/mesh/policies/public.yaml"),
    ),
    (
        "internal.yaml",
        include_str!("../../../../../examples/mesh/policies/internal.yaml"),
    ),
];

/// How long each part may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is probed while waiting, and children watched after.
const POLL: Duration = Duration::from_millis(50);
const WATCH: Duration = Duration::from_millis(500);

/// Lifetime of the certificates minted for callers outside the mesh, and how
/// often they are renewed while `zt up` runs.
const CLIENT_CERT_TTL: Duration = Duration::from_secs(3600);
const CLIENT_CERT_RENEWAL: Duration = Duration::from_secs(1800);

/// How long the agent's join token is valid (it is used only if the agent has
/// no valid SVID of its own from an earlier run).
const JOIN_TOKEN_TTL: u64 = 600;

/// `zt up`.
pub fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    if args.status {
        return status(UpDirArgs { dir: args.dir });
    }
    if args.port_base.checked_add(MAX_PORT_OFFSET).is_none() || args.port_base == 0 {
        anyhow::bail!(
            "--port-base {}: zt up uses ports BASE+1 to BASE+{MAX_PORT_OFFSET}; choose 1 to {}",
            args.port_base,
            u16::MAX - MAX_PORT_OFFSET
        );
    }
    let absolute = std::path::absolute(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    Layout::new(absolute, args.port_base).check_socket_paths()?;
    // A directory this run makes and never brings up is not left behind.
    let new = !args.dir.exists();
    let (code, came_up) = match prepare_dir(&args.dir) {
        Ok(dir) => bring_up(&Layout::new(dir, args.port_base)),
        Err(e) => (Err(e), false),
    };
    if new && !came_up && args.dir.exists() {
        match std::fs::remove_dir_all(&args.dir) {
            Ok(()) => println!("zt up: removed {}, which this run made", args.dir.display()),
            Err(e) => eprintln!("zt up: {}: not removed: {e}", args.dir.display()),
        }
    }
    code
}

/// Takes DIR's lock, checks the ports, and runs the mesh until it stops; says
/// whether it ever came up.
fn bring_up(layout: &Layout) -> (anyhow::Result<ExitCode>, bool) {
    let lock = match layout.check_socket_paths().and_then(|()| lock(layout)) {
        Ok(lock) => lock,
        Err(e) => return (Err(e), false),
    };
    if let Err(e) = check_ports_free(layout) {
        return (Err(e), false);
    }
    super::init_logging("warn");
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(e) => return (Err(e), false),
    };
    let (code, came_up) = runtime.block_on(run(layout));
    // The demo apps' tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // No pid is left for a later `zt down` to find (one that dies leaves its own,
    // which counts only while the lock is held).
    let _ = lock.set_len(0);
    (code, came_up)
}

/// `zt status` (and `zt up --status`).
pub fn status(args: UpDirArgs) -> anyhow::Result<ExitCode> {
    let layout = layout_of(&args)?;
    if !layout.state().exists() && lock_held(&layout.lock()) {
        println!("zt up is starting in {}: not ready yet", layout.dir.display());
        return Ok(ExitCode::FAILURE);
    }
    Ok(if state::report(&layout.dir, &layout.state())? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How long `zt down` waits for `zt up` to stop: each of its four children has
/// 10 s to stop before it is killed.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// `zt down`: SIGTERM to the `zt up` that holds DIR's lock (its pid is in the
/// lock file), then waits until the lock is released.
pub fn down(args: UpDirArgs) -> anyhow::Result<ExitCode> {
    let layout = layout_of(&args)?;
    let lock = layout.lock();
    // The pid is read before the lock is probed, so that a held lock vouches for
    // it: it is the holder's (or, for the microseconds a new zt up takes to write
    // its own after taking the lock, that of one that died without clearing it).
    let pid = read_pid(&lock);
    if !lock_held(&lock) {
        println!(
            "zt up is not running in {}: nothing to stop",
            layout.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let pid = pid.with_context(|| {
        format!(
            "{}: zt up is starting there and has not written its pid yet; try again",
            lock.display()
        )
    })?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).with_context(|| {
        format!(
            "stopping zt up (pid {}) in {}",
            pid.as_raw_pid(),
            layout.dir.display()
        )
    })?;
    println!(
        "zt up (pid {}) in {} is stopping…",
        pid.as_raw_pid(),
        layout.dir.display()
    );
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while lock_held(&lock) {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "zt up (pid {}) still runs {DOWN_TIMEOUT:?} after SIGTERM; its output says why",
                pid.as_raw_pid()
            );
        }
        std::thread::sleep(POLL);
    }
    println!("zt up in {} has stopped", layout.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// The layout of `--dir` for the commands that look at a `zt up` there: the
/// directory need not exist (ports do not matter to them).
fn layout_of(args: &UpDirArgs) -> anyhow::Result<Layout> {
    let dir = std::path::absolute(&args.dir).with_context(|| format!("--dir {}", args.dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    Ok(Layout::new(dir, 0))
}

/// The pid a `zt up` wrote in its lock file, if there is one.
fn read_pid(lock: &Path) -> Option<rustix::process::Pid> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(lock)
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    rustix::process::Pid::from_raw(text.trim().parse().ok()?)
}

/// Whether a `zt up` holds the lock of its directory (it has started and not
/// yet stopped). Probed with a shared lock, held for no longer than the probe.
fn lock_held(path: &Path) -> bool {
    std::fs::File::open(path)
        .is_ok_and(|file| matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// Creates DIR (0700) and its subdirectories, all 0700 (keys, tokens, logs and
/// the agent's socket are in them): ones of this user's left open to others are
/// tightened, another user's refused, and the way to the agent's socket must be
/// one no one else can change. Returns DIR's canonical path, which is what the
/// kernel reports for the proxies' executables.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let flag = || format!("--dir {}", dir.display());
    zt_fs::private_dir(dir).with_context(flag)?;
    let dir = dir.canonicalize().with_context(flag)?;
    for sub in ["bin", "logs", "decisions", "clients", "agent"] {
        zt_fs::private_dir(&dir.join(sub)).with_context(flag)?;
    }
    zt_fs::check_path(&dir.join("agent"), zt_fs::Owners::RootAndSelf).with_context(flag)?;
    Ok(dir)
}

/// How long `zt up` tries for its directory's lock before it says another runs
/// there: `zt status` and `zt down` probe the lock by holding it shared for an
/// instant, which must not pass for a running `zt up`.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// One `zt up` per directory; the lock file holds its pid, for `zt down`.
fn lock(layout: &Layout) -> anyhow::Result<std::fs::File> {
    use std::io::Write as _;
    let path = layout.lock();
    let file = zt_fs::open_private(
        &path,
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
    )?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "--dir {}: zt up is already running there (`zt status --dir {}` shows it)",
                layout.dir.display(),
                layout.dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| path.display().to_string());
            }
        }
    }
    file.set_len(0)
        .and_then(|()| (&file).write_all(std::process::id().to_string().as_bytes()))
        .with_context(|| path.display().to_string())?;
    Ok(file)
}

/// Every port must be free before anything starts, so that a clash is one clear
/// error rather than a half-started mesh.
fn check_ports_free(layout: &Layout) -> anyhow::Result<()> {
    for (addr, what) in layout.ports() {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            anyhow::bail!(
                "port {} ({what}): {e}; stop what holds it, or move every zt up port with --port-base (now {})",
                addr.port(),
                layout.port_base()
            );
        }
    }
    Ok(())
}

/// The running mesh: children in the order they started.
struct Mesh {
    children: Vec<Supervised>,
}

impl Mesh {
    /// Stops every child, last started first.
    async fn stop(&mut self) {
        while let Some(mut child) = self.children.pop() {
            let how = child.stop().await;
            println!("  stopped {} (pid {}, {how})", child.name, child.pid);
        }
    }

    /// What the first child that has exited says, if any has.
    fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().find_map(Supervised::exit_report)
    }

    fn last(&mut self) -> anyhow::Result<&mut Supervised> {
        self.children.last_mut().context("no child started")
    }
}

/// Runs the mesh until it is stopped or a part fails; says whether it ever
/// came up.
async fn run(layout: &Layout) -> (anyhow::Result<ExitCode>, bool) {
    let mut mesh = Mesh { children: Vec::new() };
    let started = start(layout, &mut mesh).await;
    let came_up = started.is_ok();
    let outcome = match started {
        Ok(()) => supervise(layout, &mut mesh).await,
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        eprintln!("zt up: {e:#}");
        println!("zt up: stopping what was started");
    }
    mesh.stop().await;
    let _ = std::fs::remove_file(layout.state());
    if came_up {
        println!(
            "zt up: stopped; {} is kept for the next run",
            layout.dir.display()
        );
    }
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    };
    (Ok(code), came_up)
}

/// Starts every part, waits for each to be ready, and records what runs.
async fn start(layout: &Layout, mesh: &mut Mesh) -> anyhow::Result<()> {
    let started = Instant::now();
    let reused = layout.server_dir().join(zt_server::SQLITE_FILE).exists();
    println!(
        "zt up: {} ({})",
        layout.dir.display(),
        if reused {
            "reusing its datastore, agent SVID and policies"
        } else {
            "new"
        }
    );
    let wrote_policies = write_default_policies(&layout.policies())?;
    let mut starting = Starting {
        layout,
        exe: std::env::current_exe().context("finding the zt executable")?,
        mesh,
        components: Vec::new(),
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
        wait_for_policy_version(proxy, service, version).await?;
    }
    step(
        "policies",
        None,
        &format!(
            "zt policy apply {}{}: {said}; in force at both proxies",
            layout.policies().display(),
            if wrote_policies { " (zt's examples)" } else { "" },
        ),
    );

    mint_client_certs(layout, &admin).await?;
    step(
        "client certs",
        None,
        &format!(
            "{} (for callers outside the mesh; renewed every {} min)",
            layout.dir.join("clients").display(),
            CLIENT_CERT_RENEWAL.as_secs() / 60
        ),
    );

    let state = State {
        pid: std::process::id(),
        started_at: super::timestamp(super::now()),
        components: starting.components,
    };
    state.save(&layout.state())?;
    print_guide(layout, started.elapsed());
    Ok(())
}

/// The parts started so far, and what starts the next.
struct Starting<'a> {
    layout: &'a Layout,
    exe: PathBuf,
    mesh: &'a mut Mesh,
    components: Vec<Component>,
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
    ) -> anyhow::Result<u32> {
        let child = Supervised::spawn(name, program, args, &self.layout.log(log))?;
        self.mesh.children.push(child);
        let child = self.mesh.last()?;
        wait_healthy(child, &probe).await?;
        self.components.push(Component {
            name: child.name.clone(),
            pid: child.pid,
            probe,
            log: Some(child.log.clone()),
        });
        Ok(child.pid)
    }

    /// The control plane.
    async fn server(&mut self) -> anyhow::Result<()> {
        let layout = self.layout;
        let (http, agent_api) = (layout.server_http().to_string(), layout.agent_api().to_string());
        let data_dir = layout.server_dir();
        let args: [&OsStr; 9] = [
            "server".as_ref(),
            "--trust-domain".as_ref(),
            TRUST_DOMAIN.as_ref(),
            "--data-dir".as_ref(),
            data_dir.as_os_str(),
            "--http".as_ref(),
            http.as_ref(),
            "--agent-api".as_ref(),
            agent_api.as_ref(),
        ];
        let probe = Probe::Http {
            addr: layout.server_http(),
            path: "/readyz".into(),
        };
        let exe = self.exe.clone();
        let pid = self.run("zt server", &exe, &args, "server", probe).await?;
        step(
            "zt server",
            Some(pid),
            &format!(
                "trust domain {TRUST_DOMAIN}, SQLite in {}, agent API {agent_api}",
                data_dir.display()
            ),
        );
        Ok(())
    }

    /// The agent, joined with a fresh token, and the entries of the workloads it serves.
    async fn agent(&mut self, admin: &AdminClient) -> anyhow::Result<()> {
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
            (
                bundle_file.clone(),
                bundle.into_bytes(),
                zt_ca::store::PUBLIC_MODE,
            ),
            (
                token_file.clone(),
                token.token.into_bytes(),
                zt_ca::store::PRIVATE_MODE,
            ),
        ])?;
        for service in layout.services() {
            let binary = layout.proxy_binary(service.name);
            link_executable(&self.exe, &binary)?;
            let changed = register(admin, &service, &binary).await?;
            step(
                "entry",
                None,
                &format!(
                    "{} for unix:path:{}{}",
                    service.spiffe_id,
                    binary.display(),
                    if changed { "" } else { " (unchanged)" }
                ),
            );
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
        step(
            "zt agent",
            Some(pid),
            &format!("{AGENT_ID}, Workload API unix://{}", socket.display()),
        );
        Ok(())
    }

    /// A demo service: its app, in this process, behind its own proxy.
    async fn service(&mut self, service: &Service) -> anyhow::Result<()> {
        let app = demo::bind(service.name, service.app).await?;
        tokio::spawn(app);
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
        step(
            &name,
            Some(pid),
            &format!(
                "{} at https://localhost:{}, app {}",
                service.spiffe_id,
                service.inbound.port(),
                service.app
            ),
        );
        Ok(())
    }
}

/// Runs until Ctrl-C (or SIGTERM), watching the children; a child that exits is
/// an error that stops the rest.
async fn supervise(layout: &Layout, mesh: &mut Mesh) -> anyhow::Result<()> {
    let admin = AdminClient::new(layout.admin_socket());
    let mut watch = tokio::time::interval(WATCH);
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + CLIENT_CERT_RENEWAL,
        CLIENT_CERT_RENEWAL,
    );
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                println!("\nzt up: stopping");
                return Ok(());
            }
            _ = watch.tick() => {
                if let Some(report) = mesh.exited() {
                    anyhow::bail!(report);
                }
            }
            _ = renew.tick() => {
                if let Err(e) = mint_client_certs(layout, &admin).await {
                    eprintln!("zt up: renewing the client certificates: {e:#}");
                }
            }
        }
    }
}

/// One line of progress: what is ready.
fn step(what: &str, pid: Option<u32>, detail: &str) {
    let pid = pid.map(|pid| format!("pid {pid}")).unwrap_or_default();
    println!("  ok  {what:18} {pid:10} {detail}");
}

/// Probes until `probe` passes; fails if the child exits or the time runs out.
async fn wait_healthy(child: &mut Supervised, probe: &Probe) -> anyhow::Result<()> {
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
            anyhow::bail!(report);
        }
        if Instant::now() > deadline {
            anyhow::bail!(child.failure(&format!("was not ready after {READY_TIMEOUT:?} ({probe}: {why})")));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the proxy of `service` enforces policy `version` (its
/// `zt_proxy_policy_version` metric).
async fn wait_for_policy_version(
    proxy: &mut Supervised,
    service: &Service,
    version: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let admin = service.admin;
    loop {
        let current = tokio::task::spawn_blocking(move || state::http_get(admin, "/metrics"))
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
            anyhow::bail!(proxy.failure(&format!(
                "did not receive policy version {version} (it has {current:?})"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Writes the example policies into a new DIR; an existing policy directory
/// (perhaps edited) is left as it is. Returns whether it wrote them.
fn write_default_policies(dir: &Path) -> anyhow::Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    // Written beside it and renamed into place: never a half-written directory.
    let staging = dir.with_extension("new");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| staging.display().to_string())?;
    let files: Vec<_> = POLICIES
        .iter()
        .map(|(name, text)| {
            (
                staging.join(name),
                text.as_bytes().to_vec(),
                zt_ca::store::PUBLIC_MODE,
            )
        })
        .collect();
    write_files(&files)?;
    std::fs::rename(&staging, dir).with_context(|| dir.display().to_string())?;
    Ok(true)
}

fn write_files(files: &[(PathBuf, Vec<u8>, u32)]) -> anyhow::Result<()> {
    zt_ca::store::write_atomically(files).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Makes `link` the same executable as `exe`: a hard link, replaced when zt was
/// rebuilt since (a copy, made again each run, where a hard link cannot be made).
fn link_executable(exe: &Path, link: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| a.dev() == b.dev() && a.ino() == b.ino();
    let exe_meta = std::fs::metadata(exe).with_context(|| exe.display().to_string())?;
    if std::fs::metadata(link).is_ok_and(|link_meta| same(&exe_meta, &link_meta)) {
        return Ok(());
    }
    let temporary = link.with_extension("new");
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(exe, &temporary).is_err() {
        std::fs::copy(exe, &temporary)
            .with_context(|| format!("copying {} to {}", exe.display(), temporary.display()))?;
    }
    std::fs::rename(&temporary, link).with_context(|| link.display().to_string())
}

/// Makes sure `service` has exactly its entry: under the agent, for this user's
/// processes running its proxy binary. Returns whether it changed anything.
async fn register(admin: &AdminClient, service: &Service, binary: &Path) -> anyhow::Result<bool> {
    let selectors = [
        format!("unix:uid:{}", effective_uid()?),
        format!("unix:path:{}", binary.display()),
    ];
    let spec = EntrySpec {
        spiffe_id: SpiffeId::parse(&service.spiffe_id)?,
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
            spiffe_id: Some(service.spiffe_id.clone()),
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
fn effective_uid() -> anyhow::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:")?.split_whitespace().nth(1)?.parse().ok())
        .context("/proc/self/status: no Uid line")
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
async fn apply_policies(layout: &Layout, exe: &Path, admin: &AdminClient) -> anyhow::Result<(u64, String)> {
    let output = tokio::process::Command::new(exe)
        .arg("policy")
        .arg("apply")
        .arg(layout.policies())
        .arg("--socket")
        .arg(layout.admin_socket())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running zt policy apply")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = stderr.trim();
        anyhow::bail!(
            "zt policy apply {}: {}",
            layout.policies().display(),
            said.strip_prefix("zt: ").unwrap_or(said)
        );
    }
    let applied = admin
        .policies()
        .await?
        .context("no policy version after zt policy apply")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = stdout.lines().last().unwrap_or_default().to_owned();
    Ok((applied.version, said))
}

/// Certificates for each service's identity, for callers outside the mesh
/// (curl, Python requests): DIR/clients/SERVICE/{svid,key,bundle}.pem.
async fn mint_client_certs(layout: &Layout, admin: &AdminClient) -> anyhow::Result<()> {
    for service in layout.services() {
        let id = SpiffeId::parse(&service.spiffe_id)?;
        let request = super::entry::MintRequest {
            spiffe_id: &id,
            ttl: CLIENT_CERT_TTL,
            dns_names: &[],
        };
        super::entry::mint_to_dir(admin, &request, &layout.client_certs(service.name)).await?;
    }
    Ok(())
}

/// What to try next, with commands that work when pasted.
fn print_guide(layout: &Layout, took: Duration) {
    let services = layout.services();
    let (one, two) = (&services[0], &services[1]);
    let certs = |s: &Service| {
        let dir = layout.client_certs(s.name);
        format!(
            "--cacert {0}/bundle.pem --cert {0}/svid.pem --key {0}/key.pem",
            dir.display()
        )
    };
    let socket = layout.admin_socket();
    println!(
        "
zt up: ready in {:.1} s. Try, from another terminal:

  # service-one's app calls service-two through its sidecar (mTLS as service-one): allowed
  curl -s http://{one_out}/internal
  # service-two's app calls service-one's /internal: denied (403)
  curl -s http://{two_out}/internal
  # /public is open to every mesh identity
  curl -s http://{two_out}/public

  # From outside the mesh, with a certificate zt server minted for service-one: allowed
  curl -s {one_certs} https://localhost:{two_in}/internal
  # ... and for service-two, with a forged X-Client-CN header: still denied (403)
  curl -s {two_certs} -H 'X-Client-CN: service-one' https://localhost:{one_in}/internal

Decisions, hash-chained, one log per proxy (and shipped to zt server):
  zt audit query {denials} --decision DENY
  zt audit verify {denials}
Policies: edit {policies}/*.yaml, then: zt policy apply {policies} --socket {socket}
Admin commands: export ZT_ADMIN_SOCKET={socket}
Logs of each process: {logs}/. Status: zt status --dir {dir}. Stop: Ctrl-C, or zt down --dir {dir}.",
        took.as_secs_f64(),
        one_out = one.outbound,
        two_out = two.outbound,
        one_certs = certs(one),
        two_certs = certs(two),
        one_in = one.inbound.port(),
        two_in = two.inbound.port(),
        denials = layout.decision_log(one.name).display(),
        policies = layout.policies().display(),
        socket = socket.display(),
        logs = layout.dir.join("logs").display(),
        dir = layout.dir.display(),
    );
}
