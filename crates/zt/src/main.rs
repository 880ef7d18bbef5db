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

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use zt_ca::KeyType;
use zt_identity::{SpiffeId, TrustDomain};

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
    Server(ServerArgs),
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
    /// Run the mTLS sidecar in front of a local app (inbound mTLS → plaintext app).
    Proxy(Box<ProxyArgs>),
    /// Authorization policies as code (Istio AuthorizationPolicy YAML): lint, evaluate, test.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The tamper-evident decision log: verify its chain and signed checkpoints, query it,
    /// show its signing key.
    #[command(subcommand)]
    Audit(AuditCommand),
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

#[derive(Args)]
struct UpArgs {
    /// Where everything lives: datastore, sockets, certificates, policies, decision
    /// logs, process logs. The next run reuses it.
    #[arg(long, default_value = "zt-up")]
    dir: PathBuf,
    /// The loopback ports: zt server's health and metrics on BASE+80 and agent API on
    /// BASE+81; per service (one, two): mTLS inbound BASE+1, +2; outbound to the other
    /// service BASE+11, +12; proxy admin BASE+21, +22; app BASE+31, +32.
    #[arg(long, default_value_t = 7000)]
    port_base: u16,
    /// Show what runs in --dir and whether it is healthy, as `zt status` does.
    #[arg(long)]
    status: bool,
}

#[derive(Args)]
struct UpDirArgs {
    /// The directory `zt up` runs in.
    #[arg(long, default_value = "zt-up")]
    dir: PathBuf,
}

#[derive(Subcommand)]
enum PdpCommand {
    /// Serve Rego policies (.rego, v1 or v0) and data documents (.json, .yaml) with
    /// OPA's REST API: `opa run --server FILES` becomes `zt pdp run FILES`.
    Run(PdpRunArgs),
}

#[derive(Args)]
struct PdpRunArgs {
    /// Where to listen (OPA's default port).
    #[arg(long, default_value = "127.0.0.1:8181")]
    addr: std::net::SocketAddr,
    /// Also serve Envoy's ext_authz (gRPC, envoy.service.auth.v3.Authorization) here,
    /// e.g. 127.0.0.1:9191 as OPA-Envoy does.
    #[arg(long)]
    ext_authz_addr: Option<std::net::SocketAddr>,
    /// The rule ext_authz decisions come from (OPA-Envoy's default).
    #[arg(long, default_value = zt_pdp::ext_authz::DEFAULT_PATH)]
    ext_authz_path: String,
    /// Append every /v1/data decision (id, query, input masked by data.system.log.mask,
    /// result, bundle revisions, time) to this hash-chained log (zt audit verify|query).
    #[arg(long)]
    decision_log: Option<PathBuf>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    /// Serve PUT and DELETE /v1/policies/{id}: whoever may call the API can then change
    /// what it decides. Without it they are refused (401).
    #[arg(long)]
    allow_policy_writes: bool,
    /// Require `Authorization: Bearer TOKEN` on every API call but /health (OPA's
    /// --authentication=token); the token is the file's first line, read once at start.
    /// The file must not be readable by other users (chmod 600).
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    #[command(flatten)]
    rego_limits: RegoLimitArgs,
    /// Policy and data files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

/// How a decision log's checkpoints are signed (zt proxy, zt pdp run).
#[derive(Args)]
struct CheckpointArgs {
    /// The key that signs the decision log's checkpoints (a signed-note signer key,
    /// `PRIVATE+KEY+…`, mode 0600) [default: LOG.key, created on first use]; pin its
    /// public half (zt audit key show) to verify the log.
    #[arg(long, requires = "decision_log")]
    decision_log_key: Option<PathBuf>,
    /// Sign a checkpoint of the decision log after this many records.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..), requires = "decision_log")]
    decision_log_checkpoint_every: u64,
    /// Sign a checkpoint once records have waited this long (and on a clean stop).
    #[arg(long, default_value = "10s", value_parser = positive_duration, requires = "decision_log")]
    decision_log_checkpoint_interval: Duration,
}

/// A duration longer than zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let parsed = duration::parse(text)?;
    if parsed.is_zero() {
        return Err(format!("invalid duration {text:?}: must be longer than zero"));
    }
    Ok(parsed)
}

impl CheckpointArgs {
    fn policy(&self) -> zt_audit::CheckpointPolicy {
        zt_audit::CheckpointPolicy {
            every: self.decision_log_checkpoint_every,
            interval: self.decision_log_checkpoint_interval,
        }
    }
}

/// Limits on every Rego evaluation.
#[derive(Args, Clone, Copy)]
struct RegoLimitArgs {
    /// Most heap the process may hold while Rego runs (a query, a module's parse, an
    /// input), e.g. 512MiB or 2GiB. A query that passes it fails, and the process goes
    /// on serving. The bound is on the whole process, not on each query.
    #[arg(long, default_value = "1GiB", value_parser = size::parse)]
    rego_max_memory: u64,
    /// Longest a Rego query may run before it fails.
    #[arg(long, default_value = "1s", value_parser = parse_rego_timeout)]
    rego_timeout: Duration,
}

/// `--rego-timeout`: a duration, not zero.
fn parse_rego_timeout(text: &str) -> Result<Duration, String> {
    match duration::parse(text)? {
        Duration::ZERO => Err(format!("duration {text:?} is zero: every query would fail")),
        limit => Ok(limit),
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and, with --key, the signed checkpoints: an edited, deleted
    /// or reordered record is named by line, a rewritten history by the first checkpoint
    /// it contradicts.
    Verify(AuditVerifyArgs),
    /// Print the records (JSON lines) that match every filter given; the chain is verified on the way.
    Query(AuditQueryArgs),
    /// The keys that sign decision logs' checkpoints.
    #[command(subcommand)]
    Key(AuditKeyCommand),
    /// RFC 9162 proofs from a log's Merkle tree, as JSON (hashes in base64): that a record
    /// is in the tree a checkpoint signs, or that a later tree extends an earlier one.
    Prove(AuditProveArgs),
    /// Print zt server's witness key (NAME+KEYID+BASE64, type 0x04), which verifies the
    /// checkpoints it cosigned: pin it with zt audit verify LOG --witness-key.
    WitnessKey(AuditServerArgs),
    /// Forget the decision log key zt server pinned for a workload on first use, so that
    /// the next key it presents is pinned (after the workload's log key was replaced).
    ForgetKey(AuditForgetKeyArgs),
}

/// zt server's admin socket.
#[derive(Args)]
struct AuditServerArgs {
    /// The server's admin socket.
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
struct AuditForgetKeyArgs {
    /// The workload's SPIFFE ID (the source of its shipped decisions).
    source: String,
    #[command(flatten)]
    server: AuditServerArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("proof").required(true).args(["inclusion", "consistency"])))]
struct AuditProveArgs {
    /// A decision log file; its chain and checkpoints are verified first.
    log: PathBuf,
    /// The record (its seq) to prove included in the tree of --size records.
    #[arg(long)]
    inclusion: Option<u64>,
    /// The tree size for --inclusion [default: the last checkpoint's].
    #[arg(long, requires = "inclusion")]
    size: Option<u64>,
    /// OLD NEW: prove that the tree of the first NEW records extends that of the first OLD.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    consistency: Option<Vec<u64>>,
}

#[derive(Subcommand)]
enum AuditKeyCommand {
    /// Print the public verifier key (NAME+KEYID+BASE64) of a signing key file, to pin
    /// with zt audit verify --key.
    Show(AuditKeyShowArgs),
    /// Create a signing key file (mode 0600) before the first decision is logged.
    Create(AuditKeyCreateArgs),
}

#[derive(Args)]
struct AuditKeyShowArgs {
    /// The signing key file (zt proxy --decision-log-key; default LOG.key).
    file: PathBuf,
}

#[derive(Args)]
struct AuditKeyCreateArgs {
    /// Where to write it; an existing file is not replaced.
    file: PathBuf,
    /// The key's name, which is also the origin line of every checkpoint it signs
    /// (no spaces or '+'), e.g. example.org/decisions/billing.
    #[arg(long)]
    name: String,
}

/// Which decision log: a proxy's file, or the copies zt server holds.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["log", "server"])))]
struct AuditSource {
    /// A decision log file (zt proxy --decision-log).
    log: Option<PathBuf>,
    /// The records proxies shipped to zt server, one chain per workload.
    #[arg(long)]
    server: bool,
    /// The server's admin socket (with --server).
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
}

#[derive(Args)]
struct AuditVerifyArgs {
    #[command(flatten)]
    source: AuditSource,
    /// The verifier key (NAME+KEYID+BASE64, from zt audit key show) that must have signed
    /// the log's checkpoints (LOG.checkpoints); without it, nothing shows that the log
    /// was not rewritten by whoever can write it.
    #[arg(long, conflicts_with_all = ["key_file", "server"])]
    key: Option<String>,
    /// A file holding the verifier key.
    #[arg(long, conflicts_with = "server")]
    key_file: Option<PathBuf>,
    /// zt server's witness key (zt audit witness-key): the checkpoint in LOG.cosigned must
    /// carry its cosignature and match the log, which shows that no record it covers was
    /// rewritten since zt server saw it.
    #[arg(long, conflicts_with = "server")]
    witness_key: Option<String>,
}

#[derive(Args)]
struct AuditQueryArgs {
    #[command(flatten)]
    source: AuditSource,
    /// The caller's SPIFFE ID (`*` wildcards at the ends, as in policies).
    #[arg(long)]
    principal: Option<String>,
    /// ALLOW or DENY.
    #[arg(long, value_parser = ["ALLOW", "DENY"])]
    decision: Option<String>,
    /// The deciding policy, namespace/name; `none` for decisions no policy made.
    #[arg(long)]
    policy: Option<String>,
    /// Records at or after this moment: RFC 3339 or Unix seconds.
    #[arg(long)]
    since: Option<String>,
    /// Records before this moment: RFC 3339 or Unix seconds.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check every policy file in a directory: each problem as file:line: field: what is wrong.
    Lint(PolicyLintArgs),
    /// Decide one request: {"decision":"ALLOW"|"DENY","policy":"<namespace>/<name>"|null,"reason":"…"}.
    Eval(PolicyEvalArgs),
    /// Run table tests (requests and expected decisions) against a directory of policies,
    /// and the test_* rules of its Rego modules.
    Test(PolicyTestArgs),
    /// Lint a directory, show its difference to the version on zt server, and store it
    /// as the next version, which the server pushes to every proxy.
    Apply(PolicyApplyArgs),
}

#[derive(Args)]
struct PolicyApplyArgs {
    /// The directory of policy files.
    dir: PathBuf,
    /// Show the difference only; apply nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct PolicyLintArgs {
    /// The directory of policy files (*.yaml, *.yml; searched recursively).
    dir: PathBuf,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

#[derive(Args)]
struct PolicyEvalArgs {
    /// The directory of policy files.
    #[arg(long)]
    policies: PathBuf,
    /// The request, as JSON: inline, @FILE, or - for standard input. Shape:
    /// {"source":{"principal":"spiffe://…","namespace":"…","ip":"…"},"destination":{"namespace":"…","labels":{…},"port":8080},"request":{"method":"GET","path":"/…","host":"…","headers":{…},"auth":{"principal":"…","claims":{…}}},"protocol":"http"|"tcp"}
    #[arg(long)]
    request: String,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

#[derive(Args)]
struct PolicyTestArgs {
    /// The directory of policy files.
    dir: PathBuf,
    /// The cases: a YAML or JSON list of {name, request, decision, policy?}. Rego
    /// modules' test_* rules in the directory run in any case, like `opa test`.
    #[arg(long)]
    cases: Option<PathBuf>,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    #[command(flatten)]
    rego_limits: RegoLimitArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("files").multiple(true).args(["cert", "key", "bundle"])))]
#[command(group(clap::ArgGroup::new("policies").args(["policy_dir", "policies_from_agent"])))]
struct ProxyArgs {
    /// The inbound mTLS listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    inbound: std::net::SocketAddr,
    /// The local app (plaintext) that the inbound side fronts; without it, no --inbound listener.
    #[arg(long, required_unless_present_any = ["upstream", "tcp_inbound"])]
    app: Option<std::net::SocketAddr>,
    /// Another inbound mTLS port, LISTEN,APP (repeatable), relayed as opaque TCP to
    /// the app port APP whatever --app-protocol says: a database or cache port beside
    /// the HTTP one. Same allow-list, mode and limits.
    /// E.g. 0.0.0.0:15007,127.0.0.1:5432
    #[arg(long)]
    tcp_inbound: Vec<zt_proxy::TcpPort>,
    /// An outbound route, LISTEN,TARGET,SPIFFE_ID (repeatable): the app connects in
    /// plaintext to LISTEN, the proxy connects with mTLS to TARGET and requires its
    /// SVID to be SPIFFE_ID. E.g. 127.0.0.1:15001,billing:15006,spiffe://example.org/billing
    #[arg(long)]
    upstream: Vec<zt_proxy::Upstream>,
    /// What the app speaks: http1, h2c (HTTP/2 in cleartext, for gRPC apps), or tcp
    /// (opaque: bytes relayed after the handshake and the allow-list, no headers).
    #[arg(long, value_enum, default_value_t = AppProtocolArg::Http1)]
    app_protocol: AppProtocolArg,
    /// The admin port: /healthz, /readyz (ready once the proxy holds an SVID), /metrics.
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: std::net::SocketAddr,
    /// Threads serving each inbound address, each with its own event loop and listening
    /// socket (SO_REUSEPORT), like nginx's workers [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// SPIFFE IDs that may connect (repeatable; `*` wildcards, e.g. spiffe://example.org/ns/*/sa/web).
    #[arg(long = "allow-spiffe-id", required_unless_present_any = ["upstream", "policy_dir", "policies_from_agent"])]
    allow_spiffe_id: Vec<String>,
    /// Headers a client could forge its identity with, removed before the app sees
    /// a request (repeatable; x-forwarded-client-cert always is).
    #[arg(long = "strip-header")]
    strip_header: Vec<String>,
    /// A header that hands the app part of the verified caller's SPIFFE ID, for apps
    /// that cannot parse XFCC: NAME=FIELD or NAME=TEMPLATE with {FIELD}s, FIELD one of
    /// spiffe-id, trust-domain, path, ns, sa (repeatable; e.g. X-Client-CN={sa}). A
    /// copy sent by the client is removed in every spelling; a caller whose ID lacks
    /// a field gets no header.
    #[arg(long = "identity-header", value_name = "NAME=FIELD")]
    identity_header: Vec<zt_proxy::connection::IdentityHeader>,
    /// A header some apps route by (X-Forwarded-Host, X-Original-URL, X-Rewrite-URL,
    /// Forwarded, method overrides…) to pass to the app as the client sent it
    /// (repeatable); untrusted, they are removed, since the policies decided on the
    /// request line and Host.
    #[arg(long = "trust-header")]
    trust_header: Vec<String>,
    /// Request headers whose name has '_' (which CGI, WSGI, PHP and Rack read as
    /// the same as '-'): drop, reject (400), or allow (still removed when they
    /// spell a removed header).
    #[arg(long, default_value = "drop", value_parser = parse_from_str::<zt_proxy::request::normalize::Underscores>)]
    headers_with_underscores: zt_proxy::request::normalize::Underscores,
    /// Path parameters (';' in a path segment, which servlet-style apps drop):
    /// reject (400), or strip them from every segment before policies and the app
    /// see the path.
    #[arg(long, default_value = "reject", value_parser = parse_from_str::<zt_policy::normalize::PathParams>)]
    path_params: zt_policy::normalize::PathParams,
    /// An HTTP/1.1 upgrade protocol spliced through after the app's 101
    /// (repeatable). Others (h2c above all, whose requests no policy would see) are
    /// removed and the request served as an ordinary one.
    #[arg(long = "allow-upgrade", default_value = "websocket")]
    allow_upgrade: Vec<String>,
    /// Accept TLS 1.2 as well as 1.3.
    #[arg(long)]
    tls12: bool,
    /// strict: mTLS only. permissive: plaintext too on the same port, counted and
    /// logged (Istio's PeerAuthentication modes; for migrating callers).
    #[arg(long, value_enum, default_value_t = ModeArg::Strict)]
    mode: ModeArg,
    /// Open inbound connections at most; more are closed at accept.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Open inbound connections from one source address at most, so that one
    /// client cannot hold every slot.
    #[arg(long, default_value_t = 1_000)]
    max_connections_per_source: usize,
    /// Request headers at most (else 431).
    #[arg(long, default_value_t = 100)]
    max_request_headers: usize,
    /// Bytes of request head at most (else 431).
    #[arg(long, default_value_t = 65_536)]
    max_header_bytes: usize,
    /// Time for a request's head to arrive, also the idle time allowed between
    /// requests (slow clients are disconnected).
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    request_header_timeout: Duration,
    /// Request body bytes at most (else 413); unlimited if not set.
    #[arg(long)]
    max_request_body: Option<u64>,
    /// The proxy's SVID chain, PEM, for development (with --key and --bundle; reloaded on change).
    #[arg(long, requires_all = ["key", "bundle"])]
    cert: Option<PathBuf>,
    /// The SVID's key, PEM.
    #[arg(long, requires_all = ["cert", "bundle"])]
    key: Option<PathBuf>,
    /// The trust bundle, PEM or SPIFFE JWKS.
    #[arg(long, requires_all = ["cert", "key"])]
    bundle: Option<PathBuf>,
    /// The Workload API socket, when not using files: a path, unix:///path or unix:/path [default: $SPIFFE_ENDPOINT_SOCKET, else /run/zt-agent/public/api.sock if it exists, else the agent's default for this user].
    #[arg(long, value_parser = zt_workload::client::parse_socket)]
    socket: Option<PathBuf>,
    /// Authorize every request by the Istio AuthorizationPolicies in this directory
    /// (reloaded when it changes; a set that does not load keeps the last good one).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Authorize every request by the policies zt server holds (zt policy apply), as
    /// zt agent on the Workload API socket hands them out; until the first version
    /// arrives, every request is denied.
    #[arg(long)]
    policies_from_agent: bool,
    /// enforce: a DENY is a 403 (a closed connection for TCP). permissive: evaluated
    /// and recorded, but let through.
    #[arg(long, value_enum, default_value_t = PolicyModeArg::Enforce, requires = "policies")]
    policy_mode: PolicyModeArg,
    /// The workload's namespace for policy scope [default: from the SPIFFE ID's /ns/NS/].
    #[arg(long, requires = "policies")]
    namespace: Option<String>,
    /// A workload label for policy selectors, KEY=VALUE (repeatable), e.g. app=billing-service.
    #[arg(long = "label", value_parser = parse_label, requires = "policies")]
    labels: Vec<(String, String)>,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
    /// Append every decision to this hash-chained log (zt audit verify|query reads it).
    #[arg(long, requires = "policies")]
    decision_log: Option<PathBuf>,
    #[command(flatten)]
    checkpoints: CheckpointArgs,
    /// Rego modules (v1, or v0 as written) for CUSTOM policies' providers (repeatable).
    #[arg(long = "rego", requires = "policies")]
    rego: Vec<PathBuf>,
    /// A CUSTOM policy provider, NAME=RULE (repeatable): requests a CUSTOM policy naming
    /// NAME sends out are decided in process by the Rego rule RULE (e.g.
    /// zt-rego=envoy/authz/allow), with OPA-Envoy's input shape.
    #[arg(long = "custom-provider", value_parser = parse_label, requires = "rego")]
    custom_providers: Vec<(String, String)>,
    #[command(flatten)]
    rego_limits: RegoLimitArgs,
    /// Export a span per inbound request (OpenTelemetry HTTP conventions, the caller's
    /// SPIFFE ID) with OTLP over gRPC to this collector, e.g. http://127.0.0.1:4317; a
    /// caller's W3C traceparent is continued and the app gets the proxy's. Off by
    /// default: then trace headers pass through untouched.
    #[arg(long, value_name = "URL", value_parser = parse_from_str::<zt_proxy::otlp::Endpoint>)]
    otlp_endpoint: Option<zt_proxy::otlp::Endpoint>,
}

/// A value parsed by its `FromStr`, whose error says what was expected.
fn parse_from_str<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T, String> {
    text.parse()
}

/// `--label KEY=VALUE`.
fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PolicyModeArg {
    Enforce,
    Permissive,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["spiffe_id", "serial"])))]
struct RevokeArgs {
    /// Every SVID of this SPIFFE ID issued until now.
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: Option<SpiffeId>,
    /// One SVID, by serial (hex, as zt svid inspect prints it).
    #[arg(long)]
    serial: Option<String>,
    /// Why, for the record.
    #[arg(long, default_value = "")]
    reason: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum X509Command {
    /// Have zt server sign an X.509-SVID for a fresh key made here (the key never
    /// leaves this process): svid.pem, key.pem (0600) and bundle.pem with --write.
    Mint(X509MintArgs),
}

#[derive(Args)]
struct X509MintArgs {
    /// The identity, in the server's trust domain (SPIRE: -spiffeID).
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: SpiffeId,
    /// Lifetime, e.g. 1h (at most 24h; the signing authority's own life cuts it shorter).
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    ttl: Duration,
    /// A DNS SAN, for peers that check host names (repeatable).
    #[arg(long)]
    dns: Vec<String>,
    /// Write svid.pem, key.pem and bundle.pem to this directory instead of printing them.
    #[arg(long)]
    write: Option<PathBuf>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Print the trust bundle: every authority not yet expired.
    Show(BundleShow),
}

#[derive(Args)]
struct BundleShow {
    /// pem (X.509 authorities only) or jwks (the SPIFFE bundle format, with JWT
    /// keys; SPIRE: -format spiffe) [default: jwks with --output json, else pem].
    #[arg(long, value_enum)]
    format: Option<BundleFormat>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct ServerArgs {
    /// Trust domain this server is the authority of.
    #[arg(long, value_parser = TrustDomain::parse)]
    trust_domain: TrustDomain,
    /// Data directory: admin socket, lock and (by default) the SQLite datastore.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Datastore: a postgres:// URL for several servers on one database (default: SQLite in the data dir).
    #[arg(long)]
    datastore: Option<String>,
    /// Health (/healthz, /readyz) and metrics (/metrics) address.
    #[arg(long, default_value = "127.0.0.1:8181")]
    http: std::net::SocketAddr,
    /// Lifetime of each signing authority; the next is prepared at 1/2 and activated at 5/6 of it.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    ca_ttl: Duration,
    /// Key algorithm of signing authorities: ec-p256, ec-p384 or rsa-2048.
    #[arg(long, default_value = "ec-p256")]
    ca_key_type: KeyType,
    /// Agent API (gRPC over TLS 1.3) address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    agent_api: std::net::SocketAddr,
    /// Lifetime of agent SVIDs.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    agent_ttl: Duration,
    /// Serve a policy decision point (OPA's REST API) on the --http port, with these
    /// Rego policies, data files and bundles (repeatable). Policies PUT through the API
    /// live in this server's memory only.
    #[arg(long = "pdp")]
    pdp: Vec<PathBuf>,
    /// With --pdp: serve PUT and DELETE /v1/policies/{id}, as `zt pdp run
    /// --allow-policy-writes` does. Without it they are refused (401).
    #[arg(long, requires = "pdp")]
    allow_policy_writes: bool,
    /// With --pdp: require `Authorization: Bearer TOKEN` on every PDP API call but
    /// /health, the token read once from this file (chmod 600), as `zt pdp run` does.
    #[arg(long, requires = "pdp")]
    api_token_file: Option<PathBuf>,
    #[command(flatten)]
    rego_limits: RegoLimitArgs,
}

/// The admin socket and the output format of admin commands.
#[derive(Args)]
struct AdminArgs {
    /// The server's admin socket.
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    socket: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Create a registration entry.
    Create(EntryCreate),
    /// Show one entry (--entry-id) or those matching the filters.
    Show(EntryShow),
    /// Change some fields of an entry; refused if it changed since it was read.
    Update(EntryUpdate),
    /// Delete an entry.
    Delete(EntryTarget),
    /// Count the entries.
    Count(AdminArgs),
}

/// Fields of an entry, for create and update.
#[derive(Args)]
struct EntryFields {
    /// SPIFFE ID of the workload (SPIRE: -spiffeID).
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: Option<SpiffeId>,
    /// SPIFFE ID of the agent or node alias it runs under (SPIRE: -parentID).
    #[arg(long, value_parser = SpiffeId::parse)]
    parent_id: Option<SpiffeId>,
    /// Selector type:value, repeatable, e.g. k8s:ns:production (SPIRE: -selector).
    #[arg(long = "selector", value_parser = zt_store::Selector::parse)]
    selectors: Vec<zt_store::Selector>,
    /// X.509-SVID lifetime (SPIRE: -x509SVIDTTL, seconds or e.g. 1h).
    #[arg(long, value_parser = duration::parse)]
    x509_ttl: Option<Duration>,
    /// Same as --x509-ttl (SPIRE's older -ttl).
    #[arg(long, value_parser = duration::parse, conflicts_with = "x509_ttl")]
    ttl: Option<Duration>,
    /// JWT-SVID lifetime (SPIRE: -jwtSVIDTTL).
    #[arg(long, value_parser = duration::parse)]
    jwt_ttl: Option<Duration>,
    /// DNS name for the X.509-SVID, repeatable (SPIRE: -dns).
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// SVIDs of this entry may use the admin API (SPIRE: -admin).
    #[arg(long)]
    admin: bool,
    /// A node alias: agents matching the selectors are grouped under the SPIFFE ID (SPIRE: -node).
    #[arg(long)]
    node: bool,
    /// Unix time after which the entry no longer issues (SPIRE: -entryExpiry).
    #[arg(long)]
    expires_at: Option<u64>,
    /// The Workload API's hint on this entry's SVIDs, by which a workload holding
    /// several picks one (SPIRE: -hint).
    #[arg(long)]
    hint: Option<String>,
}

#[derive(Args)]
struct EntryCreate {
    #[command(flatten)]
    fields: EntryFields,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct EntryShow {
    /// Only this entry (SPIRE: -entryID).
    #[arg(long)]
    entry_id: Option<String>,
    /// Only entries with this SPIFFE ID.
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: Option<SpiffeId>,
    /// Only entries under this parent.
    #[arg(long, value_parser = SpiffeId::parse)]
    parent_id: Option<SpiffeId>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct EntryUpdate {
    /// The entry to change (SPIRE: -entryID).
    #[arg(long)]
    entry_id: String,
    /// Refuse unless the entry is still at this revision (default: the one just read).
    #[arg(long)]
    revision: Option<u64>,
    #[command(flatten)]
    fields: EntryFields,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
struct EntryTarget {
    /// The entry (SPIRE: -entryID).
    #[arg(long)]
    entry_id: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    run: AgentRun,
}

/// `zt agent` without a subcommand: run the agent.
#[derive(Args)]
struct AgentRun {
    /// zt server's agent API, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8081")]
    server: String,
    /// A one-time join token from `zt agent token create` (SPIRE: -joinToken).
    #[arg(long, env = "ZT_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file with a join token, read again whenever the agent must attest
    /// (after an eviction, write a new token here; no restart needed).
    #[arg(long)]
    join_token_file: Option<PathBuf>,
    /// The trust bundle that authenticates the server before the agent has an SVID
    /// (PEM or SPIFFE JWKS, from `zt bundle show`; SPIRE: -trustBundle).
    #[arg(long, required = true)]
    trust_bundle: Option<PathBuf>,
    /// Where the Workload API listens: a path, unix:///path or unix:/path [default: /run/zt-agent/public/api.sock for root, else $XDG_RUNTIME_DIR/zt-agent/public/api.sock, else /tmp/zt-agent-$UID/public/api.sock].
    #[arg(long, value_parser = zt_workload::client::parse_socket)]
    socket: Option<PathBuf>,
    /// Where the agent keeps its own SVID and the last bundle, to resume after a restart [default: /var/lib/zt-agent for root, else $XDG_RUNTIME_DIR/zt-agent/data, else /tmp/zt-agent-$UID/data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Where the Workload API is: --socket, else SPIFFE_ENDPOINT_SOCKET, else the default.
#[derive(Args)]
struct WorkloadSocket {
    /// The Workload API socket (SPIRE: -socketPath): a path, unix:///path or unix:/path [default: $SPIFFE_ENDPOINT_SOCKET, else /run/zt-agent/public/api.sock if it exists, else the agent's default for this user].
    #[arg(long, value_parser = zt_workload::client::parse_socket)]
    socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Give up after this long.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum ApiCommand {
    /// Fetch SVIDs from the Workload API.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate with the Workload API.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Print every X.509-SVID update the Workload API pushes, until interrupted.
    Watch(WorkloadSocket),
}

#[derive(Subcommand)]
enum FetchCommand {
    /// This process's X.509-SVIDs and bundles.
    X509(FetchX509),
    /// JWT-SVIDs for an audience, and the JWT bundles.
    Jwt(FetchJwt),
}

#[derive(Args)]
struct FetchX509 {
    /// Write svid.N.pem, svid.N.key and bundle.N.pem into this directory.
    #[arg(long)]
    write: Option<PathBuf>,
    #[command(flatten)]
    socket: WorkloadSocket,
}

#[derive(Args)]
struct FetchJwt {
    /// The audience (repeatable).
    #[arg(long, required = true)]
    audience: Vec<String>,
    /// Only this SPIFFE ID (SPIRE: -spiffeID).
    #[arg(long)]
    spiffe_id: Option<String>,
    #[command(flatten)]
    socket: WorkloadSocket,
}

#[derive(Subcommand)]
enum ValidateCommand {
    /// Validate a JWT-SVID for an audience.
    Jwt(ValidateJwt),
}

#[derive(Args)]
struct ValidateJwt {
    /// The audience the token must be for.
    #[arg(long)]
    audience: String,
    /// The token.
    #[arg(long)]
    svid: String,
    #[command(flatten)]
    socket: WorkloadSocket,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Call the SPIFFE Workload API as this process, like `spire-agent api`.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Join tokens for node attestation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List attested agents.
    List(AdminArgs),
    /// Show one agent.
    Show(AgentTarget),
    /// Evict an agent: its SVID is revoked at once and it must attest again.
    Evict(AgentTarget),
    /// Ban an agent: evicted, and refused if it attests again.
    Ban(AgentTarget),
}

#[derive(Args)]
struct AgentTarget {
    /// The agent's SPIFFE ID (SPIRE: -spiffeID).
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: SpiffeId,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a one-time join token.
    Create(TokenCreate),
}

#[derive(Args)]
struct TokenCreate {
    /// The agent ID the token grants.
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: Option<SpiffeId>,
    /// Validity of the token.
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    ttl: Duration,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Default data directory of `zt server`.
const DEFAULT_DATA_DIR: &str = "zt-data";
/// Default admin socket: the one in the default data directory.
const DEFAULT_ADMIN_SOCKET: &str = "zt-data/admin.sock";

#[derive(Subcommand)]
enum BenchCommand {
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
struct BenchPdp {
    /// Decisions timed per line.
    #[arg(long, default_value_t = 100_000)]
    iterations: usize,
}

#[derive(Args)]
struct BenchPolicy {
    /// Decisions timed per line.
    #[arg(long, default_value_t = 100_000)]
    iterations: usize,
}

#[derive(Args)]
struct BenchAgent {
    /// Entries created and timed to the workload's X.509-SVID stream.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Workload API calls timed.
    #[arg(long, default_value_t = 500)]
    calls: usize,
}

#[derive(Args)]
struct BenchServer {
    /// Entries of other agents stored before the server starts.
    #[arg(long, default_value_t = 10_000)]
    entries: usize,
    /// Concurrent signing callers, each on its own connection.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// Length of the signing run, seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Entry changes timed to the sync stream.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// A postgres:// URL to bench on PostgreSQL instead of SQLite (its database should be empty).
    #[arg(long)]
    datastore: Option<String>,
}

#[derive(Args)]
struct BenchIdentity {
    /// Timed calls per operation (issuance is capped at 2000).
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
}

#[derive(Subcommand)]
enum IdCommand {
    /// Print the trust domain and path of a SPIFFE ID, or why it is invalid (exit 1).
    Check {
        /// The SPIFFE ID, e.g. spiffe://example.org/service-one.
        id: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a CA for a trust domain in a directory.
    Init(CaInit),
    /// Issue an X.509-SVID: writes PREFIX.crt (leaf, then chain) and PREFIX.key (mode 0600).
    Issue(CaIssue),
    /// Mint a JWT-SVID and print it.
    IssueJwt(CaIssueJwt),
    /// Print the CA's trust bundle.
    Bundle(CaBundle),
    /// Same as `zt authority rotate`: it acts on zt server, not on a local CA.
    #[command(hide = true)]
    Rotate(AdminArgs),
}

#[derive(Subcommand)]
enum AuthorityCommand {
    /// Ask zt server to rotate its signing authority now (the old one stays in the
    /// bundle until it expires); every replica on the datastore follows.
    Rotate(AdminArgs),
}

#[derive(Args)]
struct CaInit {
    /// Trust domain name, e.g. example.org.
    #[arg(long, value_parser = TrustDomain::parse)]
    trust_domain: TrustDomain,
    /// Directory to keep the CA in (created with mode 0700).
    #[arg(long)]
    dir: PathBuf,
    /// Key algorithm of the CA: ec-p256, ec-p384 or rsa-2048.
    #[arg(long, default_value = "ec-p256")]
    key_type: KeyType,
    /// Lifetime of the CA certificate.
    #[arg(long, default_value = "30d", value_parser = duration::parse)]
    ttl: Duration,
    /// Replace a CA that already exists in the directory.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CaIssue {
    /// Directory of the CA (from `zt ca init`).
    #[arg(long = "ca")]
    ca_dir: PathBuf,
    /// SPIFFE ID of the workload; must be in the CA's trust domain and have a path.
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: SpiffeId,
    /// DNS name to add as a SAN (repeatable).
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// IP address to add as a SAN (repeatable).
    #[arg(long = "ip")]
    ip_addresses: Vec<IpAddr>,
    /// Lifetime of the SVID.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    ttl: Duration,
    /// Output prefix: writes PREFIX.crt and PREFIX.key.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct CaIssueJwt {
    /// Directory of the CA.
    #[arg(long = "ca")]
    ca_dir: PathBuf,
    /// SPIFFE ID of the subject.
    #[arg(long, value_parser = SpiffeId::parse)]
    spiffe_id: SpiffeId,
    /// Audience (repeatable; one is strongly recommended).
    #[arg(long = "audience", required = true)]
    audiences: Vec<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "5m", value_parser = duration::parse)]
    ttl: Duration,
}

#[derive(Args)]
struct CaBundle {
    /// Directory of the CA.
    #[arg(long = "ca")]
    ca_dir: PathBuf,
    /// pem (X.509 authorities only) or jwks (the SPIFFE bundle format, with JWT keys).
    #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
    format: BundleFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BundleFormat {
    Pem,
    /// The SPIFFE bundle format (SPIRE: spiffe).
    #[value(alias = "spiffe")]
    Jwks,
}

#[derive(Subcommand)]
enum SvidCommand {
    /// Show an X.509-SVID's SPIFFE ID, serial and validity, and whether it verifies
    /// against a bundle (exit 1 if it does not).
    Inspect(SvidInspect),
    /// Verify a JWT-SVID against a bundle and an audience (exit 1 if it does not verify).
    VerifyJwt(SvidVerifyJwt),
}

/// Where the trust bundle comes from.
#[derive(Args)]
struct BundleArgs {
    /// Trust bundle, PEM or SPIFFE JWKS.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Trust domain of the bundle, when its authorities carry no SPIFFE ID.
    #[arg(long, value_parser = TrustDomain::parse, requires = "bundle")]
    trust_domain: Option<TrustDomain>,
}

#[derive(Args)]
struct SvidInspect {
    /// PEM file: the leaf first, then its chain.
    file: PathBuf,
    #[command(flatten)]
    bundle: BundleArgs,
    /// Private key file to check against the certificate.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args)]
struct SvidVerifyJwt {
    /// The token, or `-` to read it from standard input.
    token: String,
    #[command(flatten)]
    bundle: BundleArgs,
    /// The audience this verifier identifies with.
    #[arg(long)]
    audience: String,
    /// The longest lifetime accepted, from iat (or now) to exp: a correctly
    /// signed token that lives longer is refused.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    max_lifetime: Duration,
}

/// `zt proxy --mode`.
#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Strict,
    Permissive,
}

/// `--app-protocol`.
#[derive(Clone, Copy, ValueEnum)]
enum AppProtocolArg {
    Http1,
    H2c,
    Tcp,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
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
        Command::Bench(BenchCommand::Pdp(args)) => cmd::bench::pdp(args),
        Command::Server(args) => cmd::server::run(args),
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
        Command::Proxy(args) => cmd::proxy::run(*args),
        Command::Policy(PolicyCommand::Lint(args)) => cmd::policy::lint(args),
        Command::Policy(PolicyCommand::Eval(args)) => cmd::policy::eval(args),
        Command::Policy(PolicyCommand::Test(args)) => cmd::policy::test(args),
        Command::Policy(PolicyCommand::Apply(args)) => cmd::policy::apply(args),
        Command::Audit(AuditCommand::Verify(args)) => cmd::audit::verify(args),
        Command::Audit(AuditCommand::Query(args)) => cmd::audit::query(args),
        Command::Audit(AuditCommand::Prove(args)) => cmd::audit::prove(args),
        Command::Audit(AuditCommand::WitnessKey(args)) => cmd::audit::witness_key(args),
        Command::Audit(AuditCommand::ForgetKey(args)) => cmd::audit::forget_key(args),
        Command::Audit(AuditCommand::Key(AuditKeyCommand::Show(args))) => cmd::audit::key_show(args),
        Command::Audit(AuditCommand::Key(AuditKeyCommand::Create(args))) => cmd::audit::key_create(args),
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
    args.into_iter()
        .map(|arg| {
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
        })
        .collect()
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
    fn one_line_skips_causes_already_quoted() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer(io)).context("--ca ./ca");
        assert_eq!(one_line(&e), "--ca ./ca: outer: disk on fire");
        let e = anyhow::anyhow!("first\nsecond").context("ctx");
        assert_eq!(one_line(&e), "ctx: first second");
    }
}
