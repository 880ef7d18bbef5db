//! `zt up`, `zt status` and `zt down`: their arguments, progress and reports.
//! The supervisor itself — children, readiness, the directory, its lock and
//! state file, the demo apps — is the `zt-up` crate; it runs this executable's
//! subcommands as its children.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use zt_up::layout::{Layout, MAX_PORT_OFFSET, Service, TRUST_DOMAIN};
use zt_up::state::Status;
use zt_up::{Event, Progress};

#[derive(Args)]
pub(crate) struct UpArgs {
    /// Where everything lives: datastore, sockets, certificates, policies, decision
    /// logs, process logs. The next run reuses it.
    #[arg(long, default_value = "zt-up")]
    pub(crate) dir: PathBuf,
    /// The loopback ports: zt server's health and metrics on BASE+80, agent API on
    /// BASE+81, OpenID Provider on BASE+82, device API on BASE+84; the access gateway
    /// on BASE+83 (its admin BASE+23); per service (one, two): mTLS inbound BASE+1, +2; outbound to the
    /// other service BASE+11, +12; proxy admin BASE+21, +22; app BASE+31, +32.
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
    let (code, came_up) = match zt_up::prepare_dir(&args.dir) {
        Ok(dir) => bring_up(&Layout::new(dir, args.port_base)),
        Err(e) => (Err(e.into()), false),
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
    let lock = match layout.check_socket_paths().and_then(|()| zt_up::lock(layout)) {
        Ok(lock) => lock,
        Err(e) => return (Err(e.into()), false),
    };
    if let Err(e) = zt_up::check_ports_free(layout) {
        return (Err(e.into()), false);
    }
    super::init_logging("warn");
    let runtime = match super::runtime() {
        Ok(runtime) => runtime,
        Err(e) => return (Err(e), false),
    };
    let exe = match std::env::current_exe().context("finding the zt executable") {
        Ok(exe) => exe,
        Err(e) => return (Err(e), false),
    };
    let progress = progress(layout);
    let outcome = runtime.block_on(zt_up::run(layout, &exe, super::shutdown_signal(), &progress));
    // The demo apps' tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // No pid is left for a later `zt down` to find (one that dies leaves its own,
    // which counts only while the lock is held).
    let _ = lock.set_len(0);
    let code = if outcome.clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    (Ok(code), outcome.came_up)
}

/// Prints `zt up`'s progress: one line per part that is ready, then a guide.
fn progress(layout: &Layout) -> Progress {
    let dir = layout.dir.clone();
    let guide = layout.clone();
    Arc::new(move |event| match event {
        Event::Opening { reused } => println!(
            "zt up: {} ({})",
            dir.display(),
            if reused {
                "reusing its datastore, agent SVID and policies"
            } else {
                "new"
            }
        ),
        Event::ServerReady {
            pid,
            data_dir,
            agent_api,
        } => step(
            "zt server",
            Some(pid),
            &format!(
                "trust domain {TRUST_DOMAIN}, SQLite in {}, agent API {agent_api}",
                data_dir.display()
            ),
        ),
        Event::EntryRegistered {
            spiffe_id,
            binary,
            changed,
        } => step(
            "entry",
            None,
            &format!(
                "{spiffe_id} for unix:path:{}{}",
                binary.display(),
                if changed { "" } else { " (unchanged)" }
            ),
        ),
        Event::AgentReady { pid, socket } => step(
            "zt agent",
            Some(pid),
            &format!(
                "{}, Workload API unix://{}",
                zt_up::layout::AGENT_ID,
                socket.display()
            ),
        ),
        Event::ProxyReady { service, pid } => step(
            &format!("{} proxy", service.name),
            Some(pid),
            &format!(
                "{} at https://localhost:{}, app {}",
                service.spiffe_id,
                service.inbound.port(),
                service.app
            ),
        ),
        Event::PoliciesInForce {
            wrote_examples,
            added_gateway_policies,
            said,
        } => step(
            "policies",
            None,
            &format!(
                "zt policy apply {}{}: {said}; in force at both proxies",
                guide.policies().display(),
                if wrote_examples {
                    " (zt's examples)"
                } else if added_gateway_policies {
                    " (zt's examples for the gateway added: gateway.yaml, from-gateway.yaml)"
                } else {
                    ""
                },
            ),
        ),
        Event::ClientCertsMinted => step(
            "client certs",
            None,
            &format!(
                "{} (for callers outside the mesh; renewed every {} min)",
                dir.join("clients").display(),
                zt_up::CLIENT_CERT_RENEWAL.as_secs() / 60
            ),
        ),
        Event::PeopleReady {
            issuer,
            invite_url,
            ca,
        } => step(
            "people",
            None,
            &format!(
                "OpenID Provider {issuer}; user {} (group {}), public client {}; \
                 register the user's first passkey (one use, 1 h) at\n      {invite_url}\n      \
                 (your browser must trust {} for WebAuthn to work there)",
                zt_up::layout::DEMO_USER,
                zt_up::layout::DEMO_GROUP,
                zt_up::layout::DEMO_CLIENT,
                ca.display()
            ),
        ),
        Event::GatewayReady {
            pid,
            url,
            config,
            new_client,
        } => step(
            "zt gateway",
            Some(pid),
            &format!(
                "{url} in front of service-one, as {}; OAuth client {}{}, config {}\n      \
                 open {url}/ and sign in as {} with the passkey registered at the link above; \
                 {url}/internal is for group {} signed in with a passkey (amr hwk or swk), not a password",
                zt_up::layout::GATEWAY_ID,
                zt_up::layout::GATEWAY_CLIENT,
                if new_client { " (new secret)" } else { "" },
                config.display(),
                zt_up::layout::DEMO_USER,
                zt_up::layout::DEMO_GROUP,
            ),
        ),
        Event::DeviceReady {
            pid,
            id,
            key,
            tier,
            reasons,
        } => step(
            "zt device agent",
            Some(pid),
            &format!(
                "this machine is device {id} ({key} key), tier {tier}{}\n      \
                 watch it: zt device show {id}; stop this agent and the device drops to the \
                 policy's silent tier in seconds (zt-up/device-compliance.yaml)",
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", reasons.join("; "))
                }
            ),
        ),
        Event::Ready { took } => print_guide(&guide, took),
        Event::Failed(e) => {
            eprintln!("zt up: {}", chain(e));
            println!("zt up: stopping what was started");
        }
        Event::Stopping => println!("\nzt up: stopping"),
        Event::ChildStopped { name, pid, how } => println!("  stopped {name} (pid {pid}, {how})"),
        Event::Stopped => println!("zt up: stopped; {} is kept for the next run", dir.display()),
        Event::RenewalFailed(e) => eprintln!(
            "zt up: renewing the client certificates and the gateway's: {}",
            chain(e)
        ),
        Event::AppStopped { service, error } => eprintln!("zt up: {service}'s app stopped: {error}"),
    })
}

/// An error and its causes, `outer: inner: …`, as anyhow's `{:#}` writes them.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// `zt status` (and `zt up --status`).
pub fn status(args: UpDirArgs) -> anyhow::Result<ExitCode> {
    let layout = layout_of(&args)?;
    let (dir, state_file) = (&layout.dir, layout.state());
    if !state_file.exists() && zt_up::lock_held(&layout.lock()) {
        println!("zt up is starting in {}: not ready yet", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    let healthy = match zt_up::state::status(&state_file)? {
        Status::NotRunning => {
            println!(
                "zt up is not running in {} (no {})",
                dir.display(),
                state_file.display()
            );
            false
        }
        Status::Gone { pid } => {
            println!(
                "zt up is not running in {}: pid {} in {} is gone (it did not stop cleanly; `zt up --dir {}` starts it again)",
                dir.display(),
                pid,
                state_file.display(),
                dir.display()
            );
            false
        }
        Status::Running { state, health } => {
            println!(
                "zt up in {} (pid {}, since {})",
                dir.display(),
                state.pid,
                state.started_at
            );
            let width = state.components.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for (component, verdict) in state.components.iter().zip(&health) {
                let (word, why) = match verdict {
                    Ok(()) => ("healthy", String::new()),
                    Err(why) => ("DOWN", format!(" ({why})")),
                };
                println!(
                    "  {:width$}  pid {:<7}  {word:7}  {}{why}",
                    component.name, component.pid, component.probe
                );
            }
            health.iter().all(Result::is_ok)
        }
    };
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `zt down`: SIGTERM to the `zt up` that holds DIR's lock, then waits until it
/// has stopped.
pub fn down(args: UpDirArgs) -> anyhow::Result<ExitCode> {
    let layout = layout_of(&args)?;
    let Some(pid) = zt_up::signal_stop(&layout)? else {
        println!(
            "zt up is not running in {}: nothing to stop",
            layout.dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    println!("zt up (pid {pid}) in {} is stopping…", layout.dir.display());
    zt_up::wait_stopped(&layout, pid)?;
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

/// One line of progress: what is ready.
fn step(what: &str, pid: Option<u32>, detail: &str) {
    let pid = pid.map(|pid| format!("pid {pid}")).unwrap_or_default();
    println!("  ok  {what:18} {pid:10} {detail}");
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

  # People reach service-one through the access gateway: open {gateway}/ in a browser
  # that trusts {ca}, and sign in as {user}. Without a sign-in or a token: 401
  curl -s --cacert {ca} {gateway}/

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
        gateway = layout.gateway_url(),
        ca = layout.server_bundle().display(),
        user = zt_up::layout::DEMO_USER,
        denials = layout.decision_log(one.name).display(),
        policies = layout.policies().display(),
        socket = socket.display(),
        logs = layout.dir.join("logs").display(),
        dir = layout.dir.display(),
    );
}
