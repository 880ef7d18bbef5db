//! `zt`: one binary for the whole toolkit. This crate only parses arguments and
//! wires the library crates together; errors become one line on stderr and a
//! non-zero exit.

#![forbid(unsafe_code)]

/// Standard output that the reader closed (`zt status | head`, `zt up | tee`
/// ended by Ctrl-C) is a normal end of output, as for any Unix tool: these
/// shadow the standard macros, which panic then, for every module below.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// See [`println`].
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = write!(out, $($arg)*).and_then(|()| out.flush());
    }};
}

/// See [`println`]; a closed standard error loses the message, nothing more.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// See [`eprintln`].
macro_rules! eprint {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cmd;
mod duration;
mod size;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

use cmd::agent::{AgentArgs, AgentCommand, ApiCommand, FetchCommand, ValidateCommand};
use cmd::analyze::AnalyzeArgs;
use cmd::audit::{AuditCommand, AuditKeyCommand};
use cmd::bench::BenchCommand;
use cmd::ca::CaCommand;
use cmd::client::ClientCommand;
use cmd::device::{DeviceCommand, DevicePolicyCommand, DeviceTokenCommand};
use cmd::entry::{AuthorityCommand, BundleCommand, EntryCommand, RevokeArgs, TokenCommand, X509Command};
use cmd::gateway::GatewayArgs;
use cmd::group::GroupCommand;
use cmd::id::IdCommand;
use cmd::pdp::PdpCommand;
use cmd::policy::PolicyCommand;
use cmd::proxy::ProxyArgs;
use cmd::server::ServerArgs;
use cmd::session::SessionCommand;
use cmd::svid::SvidCommand;
use cmd::up::{UpArgs, UpDirArgs};
use cmd::user::{CredentialCommand, UserCommand};

/// Zero trust in one binary: workload identity (SPIFFE), mTLS and policy.
#[derive(Parser)]
#[command(name = "zt", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and check SPIFFE IDs.
    #[command(subcommand)]
    Id(IdCommand),
    /// A local certificate authority, for development and tests.
    #[command(subcommand)]
    Ca(CaCommand),
    /// zt server's signing authorities (through the admin socket).
    #[command(subcommand)]
    Authority(AuthorityCommand),
    /// Inspect and verify X.509-SVIDs and JWT-SVIDs.
    #[command(subcommand)]
    Svid(SvidCommand),
    /// Measure zt's hot paths on this machine (figures for BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the control plane: registration entries and join tokens, admin API, health and metrics.
    Server(Box<ServerArgs>),
    /// Registration entries (SPIRE's single-dash flags such as -spiffeID are accepted).
    #[command(subcommand)]
    Entry(EntryCommand),
    /// Run the node agent (zt agent --server HOST:PORT --join-token T --trust-bundle FILE),
    /// administer agents, or call the Workload API (zt agent api …).
    Agent(AgentArgs),
    /// The trust bundle of zt server.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// X.509-SVIDs signed by zt server directly, for callers outside the mesh (SPIRE: x509 mint).
    #[command(subcommand)]
    X509(X509Command),
    /// Revoke SVIDs at once: one by serial, or every SVID of a SPIFFE ID issued until now.
    Revoke(RevokeArgs),
    /// People: users, their invites and credentials (through the admin socket).
    #[command(subcommand)]
    User(UserCommand),
    /// Groups of users and their members.
    #[command(subcommand)]
    Group(GroupCommand),
    /// OAuth clients of zt server: secrets, private_key_jwt or public with PKCE; exact redirect URIs.
    #[command(subcommand)]
    Client(ClientCommand),
    /// People's sign-in sessions: list, revoke (with their refresh tokens).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Device trust: enrollment tokens, the inventory, enrolling this machine,
    /// its posture agent, and compliance policy tests.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Sign in at a terminal (the device flow) to an OpenID Provider; --print-token
    /// prints a valid access token for other programs.
    Login(cmd::login::LoginArgs),
    /// Forget a `zt login`: revoke its refresh token and remove its file.
    Logout(cmd::login::LogoutArgs),
    /// Run the mTLS sidecar in front of a local app (inbound mTLS → plaintext app).
    Proxy(Box<ProxyArgs>),
    /// Run the access gateway: people sign in (OpenID Connect) or send a bearer token, every
    /// request is authorized on their claims, and goes on over mTLS into the mesh.
    Gateway(GatewayArgs),
    /// Authorization policies as code (Istio AuthorizationPolicy YAML): lint, evaluate, test.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The tamper-evident decision log: verify its chain and signed checkpoints, query it,
    /// show its signing key.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The mesh's security metrics: blast radius per workload (direct and transitive, against
    /// a flat network), critical findings, mTLS coverage, credential lifetimes, unused rules.
    Analyze(Box<AnalyzeArgs>),
    /// The policy decision point: Rego policies behind OPA's REST API.
    #[command(subcommand)]
    Pdp(PdpCommand),
    /// The whole mesh on this machine in one command: zt server, zt agent, two demo
    /// services behind zt proxies, the example policies. Ctrl-C stops it.
    Up(UpArgs),
    /// What `zt up` runs in a directory, and whether each part is healthy (exit 1 if not).
    Status(UpDirArgs),
    /// Stops the `zt up` running in a directory, as Ctrl-C in its terminal would,
    /// and waits until it has stopped.
    Down(UpDirArgs),
}

fn main() -> ExitCode {
    let args = match spire_flags(std::env::args_os()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("zt: {message}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // A bare `zt` (or `zt entry`): the help, on stderr, and a usage error.
            eprint!("{}", e.render());
            return ExitCode::from(2);
        }
        Err(e) if e.use_stderr() => {
            // One line: clap's first paragraph (the error and what it names) and
            // its tip ("a similar argument exists: '--port-base'"), without usage.
            let text = e.render().to_string();
            let mut paragraphs = text.split("\n\n");
            let mut line: Vec<&str> = paragraphs
                .next()
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .collect();
            line.extend(
                paragraphs
                    .flat_map(str::lines)
                    .map(str::trim)
                    .filter(|l| l.starts_with("tip:")),
            );
            eprintln!("zt: {}", line.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::Id(IdCommand::Check { id }) => cmd::id::check(&id),
        Command::Ca(CaCommand::Init(args)) => cmd::ca::init(args),
        Command::Ca(CaCommand::Issue(args)) => cmd::ca::issue(args),
        Command::Ca(CaCommand::IssueJwt(args)) => cmd::ca::issue_jwt(args),
        Command::Ca(CaCommand::Bundle(args)) => cmd::ca::bundle(args),
        Command::Ca(CaCommand::Rotate(args)) | Command::Authority(AuthorityCommand::Rotate(args)) => {
            cmd::entry::rotate_ca(args)
        }
        Command::Bundle(BundleCommand::Show(args)) => cmd::entry::show_bundle(args),
        Command::Svid(SvidCommand::Inspect(args)) => cmd::svid::inspect(args),
        Command::Svid(SvidCommand::VerifyJwt(args)) => cmd::svid::verify_jwt(args),
        Command::Bench(BenchCommand::Identity(args)) => cmd::bench::identity(args),
        Command::Bench(BenchCommand::Server(args)) => cmd::bench::server(args),
        Command::Bench(BenchCommand::Agent(args)) => cmd::bench::agent(args),
        Command::Bench(BenchCommand::Policy(args)) => cmd::bench::policy(args),
        Command::Bench(BenchCommand::Generate(args)) => cmd::bench::generate(args),
        Command::Bench(BenchCommand::Pdp(args)) => cmd::bench::pdp(args),
        Command::Bench(BenchCommand::Analyze(args)) => cmd::bench::analyze(args),
        Command::Bench(BenchCommand::Tokens(args)) => cmd::bench::tokens(args),
        Command::Bench(BenchCommand::Devices(args)) => cmd::bench::devices(args),
        Command::Server(args) => cmd::server::run(*args),
        Command::Entry(EntryCommand::Create(args)) => cmd::entry::create(args),
        Command::Entry(EntryCommand::Show(args)) => cmd::entry::show(args),
        Command::Entry(EntryCommand::Update(args)) => cmd::entry::update(args),
        Command::Entry(EntryCommand::Delete(args)) => cmd::entry::delete(args),
        Command::Entry(EntryCommand::Count(args)) => cmd::entry::count(args),
        Command::Agent(AgentArgs { command: None, run }) => cmd::agent::run(run),
        Command::Agent(AgentArgs {
            command: Some(command),
            ..
        }) => match command {
            AgentCommand::Api(ApiCommand::Fetch(FetchCommand::X509(args))) => cmd::agent::fetch_x509(args),
            AgentCommand::Api(ApiCommand::Fetch(FetchCommand::Jwt(args))) => cmd::agent::fetch_jwt(args),
            AgentCommand::Api(ApiCommand::Validate(ValidateCommand::Jwt(args))) => {
                cmd::agent::validate_jwt(args)
            }
            AgentCommand::Api(ApiCommand::Watch(args)) => cmd::agent::watch(args),
            AgentCommand::Token(TokenCommand::Create(args)) => cmd::entry::create_token(args),
            AgentCommand::List(args) => cmd::entry::list_agents(args),
            AgentCommand::Show(args) => cmd::entry::show_agent(args),
            AgentCommand::Evict(args) => cmd::entry::evict_agent(args, false),
            AgentCommand::Ban(args) => cmd::entry::evict_agent(args, true),
        },
        Command::X509(X509Command::Mint(args)) => cmd::entry::mint_x509(args),
        Command::Up(args) => cmd::up::up(args),
        Command::Status(args) => cmd::up::status(args),
        Command::Down(args) => cmd::up::down(args),
        Command::Revoke(args) => cmd::entry::revoke(args),
        Command::User(command) => match command {
            UserCommand::Add(args) => cmd::user::add(args),
            UserCommand::Show(args) => cmd::user::show(args),
            UserCommand::List(args) => cmd::user::list(args),
            UserCommand::Disable(args) => cmd::user::set_disabled(args, true),
            UserCommand::Enable(args) => cmd::user::set_disabled(args, false),
            UserCommand::Delete(args) => cmd::user::delete(args),
            UserCommand::Invite(args) => cmd::user::invite(args),
            UserCommand::Password(args) => cmd::user::password(args),
            UserCommand::Credentials(args) => cmd::user::credentials(args),
            UserCommand::Credential(CredentialCommand::Revoke(args)) => cmd::user::revoke_credential(args),
        },
        Command::Group(command) => match command {
            GroupCommand::Add(args) => cmd::group::add(args),
            GroupCommand::List(args) => cmd::group::list(args),
            GroupCommand::Delete(args) => cmd::group::delete(args),
            GroupCommand::Members(args) => cmd::group::members(args),
            GroupCommand::AddMember(args) => cmd::group::set_member(args, true),
            GroupCommand::RemoveMember(args) => cmd::group::set_member(args, false),
        },
        Command::Client(command) => match command {
            ClientCommand::Add(args) => cmd::client::add(args),
            ClientCommand::List(args) => cmd::client::list(args),
            ClientCommand::Show(args) => cmd::client::show(args),
            ClientCommand::Delete(args) => cmd::client::delete(args),
        },
        Command::Session(SessionCommand::List(args)) => cmd::session::list(args),
        Command::Session(SessionCommand::Revoke(args)) => cmd::session::revoke(args),
        Command::Device(command) => match command {
            DeviceCommand::Token(DeviceTokenCommand::Create(args)) => cmd::device::token_create(args),
            DeviceCommand::Enroll(args) => cmd::device::enroll(args),
            DeviceCommand::Agent(args) => cmd::device::agent(args),
            DeviceCommand::List(args) => cmd::device::list(args),
            DeviceCommand::Show(args) => cmd::device::show(args),
            DeviceCommand::Approve(args) => cmd::device::act(args, zt_server::client::DeviceAction::Approve),
            DeviceCommand::Revoke(args) => cmd::device::act(args, zt_server::client::DeviceAction::Revoke),
            DeviceCommand::Delete(args) => cmd::device::act(args, zt_server::client::DeviceAction::Delete),
            DeviceCommand::Policy(DevicePolicyCommand::Test(args)) => cmd::device::policy_test(args),
        },
        Command::Login(args) => cmd::login::run(args),
        Command::Logout(args) => cmd::login::logout(args),
        Command::Proxy(args) => cmd::proxy::run(*args),
        Command::Gateway(args) => cmd::gateway::run(args),
        Command::Policy(PolicyCommand::Lint(args)) => cmd::policy::lint(args),
        Command::Policy(PolicyCommand::Eval(args)) => cmd::policy::eval(args),
        Command::Policy(PolicyCommand::Test(args)) => cmd::policy::test(args),
        Command::Policy(PolicyCommand::Apply(args)) => cmd::policy::apply(args),
        Command::Policy(PolicyCommand::Generate(args)) => cmd::policy::generate(args),
        Command::Policy(PolicyCommand::Promote(args)) => cmd::policy::promote(args),
        Command::Audit(AuditCommand::Verify(args)) => cmd::audit::verify(args),
        Command::Audit(AuditCommand::Query(args)) => cmd::audit::query(args),
        Command::Audit(AuditCommand::Prove(args)) => cmd::audit::prove(args),
        Command::Audit(AuditCommand::WitnessKey(args)) => cmd::audit::witness_key(args),
        Command::Audit(AuditCommand::ForgetKey(args)) => cmd::audit::forget_key(args),
        Command::Audit(AuditCommand::Key(AuditKeyCommand::Show(args))) => cmd::audit::key_show(args),
        Command::Audit(AuditCommand::Key(AuditKeyCommand::Create(args))) => cmd::audit::key_create(args),
        Command::Analyze(args) => cmd::analyze::run(*args),
        Command::Pdp(PdpCommand::Run(args)) => cmd::pdp::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zt: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// SPIRE's flag names (Go style: one or two dashes, camelCase) and ours.
const SPIRE_FLAGS: &[(&str, &str)] = &[
    ("spiffeID", "--spiffe-id"),
    ("parentID", "--parent-id"),
    ("selector", "--selector"),
    ("ttl", "--ttl"),
    ("x509SVIDTTL", "--x509-ttl"),
    ("jwtSVIDTTL", "--jwt-ttl"),
    ("dns", "--dns"),
    ("admin", "--admin"),
    ("node", "--node"),
    ("entryID", "--entry-id"),
    ("entryExpiry", "--expires-at"),
    ("socketPath", "--socket"),
    ("joinToken", "--join-token"),
    ("trustBundle", "--trust-bundle"),
    ("dataDir", "--data-dir"),
    ("serverAddress", "--server"),
    ("audience", "--audience"),
    ("svid", "--svid"),
    ("write", "--write"),
    ("output", "--output"),
    ("format", "--format"),
    ("hint", "--hint"),
];

/// SPIRE flags of the commands zt mirrors that zt does not implement: refused
/// with exit 2 rather than misread (`-federatesWith` as `-f -e -d …`).
const SPIRE_FLAGS_UNSUPPORTED: &[(&str, &str)] = &[
    ("federatesWith", "zt does not federate trust domains yet"),
    ("downstream", "zt has no downstream (nested) servers yet"),
    ("storeSVID", "zt has no SVIDStore plugins"),
    (
        "data",
        "registration from a JSON file is not supported: run zt entry create per entry",
    ),
    (
        "instance",
        "zt serves one instance per admin socket: use --socket",
    ),
];

/// Rewrites SPIRE-style flags (`-spiffeID X`, `-spiffeID=X`) of `zt entry`,
/// `zt agent`, `zt revoke`, `zt bundle` and `zt x509` to zt's, so that commands
/// written for `spire-server` work as written. A single-dash word that is no
/// flag zt knows is an error naming it, never read as a bundle of short flags
/// (`-hint` as `-h`, which would print the help and do nothing).
fn spire_flags(args: impl Iterator<Item = std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>, String> {
    let args: Vec<std::ffi::OsString> = args.collect();
    let applies = matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("entry" | "agent" | "revoke" | "x509" | "bundle")
    );
    if !applies {
        return Ok(args);
    }
    let command = subcommand(&Cli::command(), &args[1..]);
    let takes_value = |flag: &str| {
        flag.strip_prefix("--").is_some_and(|long| {
            command
                .get_arguments()
                .any(|arg| arg.get_long() == Some(long) && arg.get_action().takes_values())
        })
    };
    let mut rewritten = Vec::with_capacity(args.len());
    let mut value_next = false;
    for arg in args {
        // The value of the flag before it (a token may begin with `-`) is
        // never read as a flag.
        if std::mem::take(&mut value_next) {
            rewritten.push(arg);
            continue;
        }
        let arg = spire_flag(arg)?;
        value_next = arg.to_str().is_some_and(takes_value);
        rewritten.push(arg);
    }
    Ok(rewritten)
}

/// The subcommand the leading words of `args` name (`agent token create`).
fn subcommand(command: &clap::Command, args: &[std::ffi::OsString]) -> clap::Command {
    let mut command = command.clone();
    for word in args.iter().map_while(|a| a.to_str()) {
        match command.find_subcommand(word) {
            Some(sub) => command = sub.clone(),
            None => break,
        }
    }
    command
}

/// One argument in zt's spelling: a SPIRE flag becomes ours, an unsupported or
/// unknown single-dash word is an error that names it.
fn spire_flag(arg: std::ffi::OsString) -> Result<std::ffi::OsString, String> {
    let Some(text) = arg.to_str() else { return Ok(arg) };
    let single = !text.starts_with("--");
    let bare = text.strip_prefix("--").or_else(|| text.strip_prefix('-'));
    let Some(bare) = bare else { return Ok(arg) };
    let (name, value) = match bare.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (bare, None),
    };
    if let Some((_, ours)) = SPIRE_FLAGS.iter().find(|(spire, _)| *spire == name) {
        return Ok(match value {
            Some(value) => format!("{ours}={value}").into(),
            None => (*ours).into(),
        });
    }
    if let Some((_, why)) = SPIRE_FLAGS_UNSUPPORTED.iter().find(|(spire, _)| *spire == name) {
        return Err(format!("-{name}: this SPIRE flag is not supported: {why}"));
    }
    let word = name.len() > 1 && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if single && word {
        return Err(format!(
            "-{name}: not a flag zt knows (SPIRE's single-dash flags that zt supports: {})",
            SPIRE_FLAGS
                .iter()
                .map(|(spire, _)| format!("-{spire}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    Ok(arg)
}

/// An error and its causes on one line, `outer: inner: …`. Library errors often
/// quote their cause in their own message; a cause already at the end of the line
/// is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn spire_flags_become_ours() {
        let args = |line: &str| line.split(' ').map(std::ffi::OsString::from).collect::<Vec<_>>();
        let rewrite = |line: &str| spire_flags(args(line).into_iter());
        assert_eq!(
            rewrite(
                "zt entry create -spiffeID spiffe://td/a -parentID=spiffe://td/n -selector k8s:ns:x -ttl 3600 -node"
            ),
            Ok(args(
                "zt entry create --spiffe-id spiffe://td/a --parent-id=spiffe://td/n --selector k8s:ns:x --ttl 3600 --node"
            ))
        );
        // Our own flags, short flags, and other commands stay as they are.
        for line in [
            "zt entry show --spiffe-id x",
            "zt entry show -h",
            "zt ca issue -ttl 1h",
        ] {
            assert_eq!(rewrite(line), Ok(args(line)));
        }
        // A flag's value is never read as a flag: join tokens are URL-safe
        // base64 and may begin with `-`.
        assert_eq!(
            rewrite("zt agent -joinToken -Qx9 --trust-bundle b.pem"),
            Ok(args("zt agent --join-token -Qx9 --trust-bundle b.pem"))
        );
        assert_eq!(
            rewrite("zt agent --join-token -federatesWith"),
            Ok(args("zt agent --join-token -federatesWith"))
        );
        // A SPIRE flag zt lacks is an error that names it, never short flags.
        for (line, flag) in [
            ("zt entry create -federatesWith spiffe://other", "-federatesWith"),
            ("zt entry create -storeSVID", "-storeSVID"),
            ("zt bundle show -frmat pem", "-frmat"),
        ] {
            let error = rewrite(line).unwrap_err();
            assert!(error.starts_with(&format!("{flag}: ")), "{line}: {error}");
        }
    }

    #[test]
    fn tokens_that_begin_with_a_dash_are_values() {
        for line in [
            "zt agent --join-token -9abc --trust-bundle b.pem",
            "zt device enroll --token -9abc --server https://127.0.0.1:1 --bundle b.pem",
        ] {
            let args = spire_flags(line.split(' ').map(std::ffi::OsString::from)).unwrap();
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{line}: {e}");
            }
        }
    }

    #[test]
    fn one_line_skips_causes_already_quoted() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer(io)).context("--ca ./ca");
        assert_eq!(one_line(&e), "--ca ./ca: outer: disk on fire");
        let e = anyhow::anyhow!("first\nsecond").context("ctx");
        assert_eq!(one_line(&e), "ctx: first second");
    }
}
