//! `zt proxy`.

use std::process::ExitCode;

use anyhow::Context as _;
use zt_proxy::authz::{AuthzConfig, PolicyMode, PolicySource, RegoProviders};
use zt_proxy::inbound::{Limits, Mode};
use zt_proxy::request::allow::AllowList;
use zt_proxy::request::normalize::{HeadRules, ROUTING_HEADERS};
use zt_proxy::{AppProtocol, IdentitySource, InboundConfig, ProxyConfig};
use zt_tls::TlsVersions;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::args::{CheckpointArgs, RegoLimitArgs, parse_from_str};
use crate::duration;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("files").multiple(true).args(["cert", "key", "bundle"])))]
#[command(group(clap::ArgGroup::new("policies").args(["policy_dir", "policies_from_agent"])))]
pub(crate) struct ProxyArgs {
    /// The inbound mTLS listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub(crate) inbound: std::net::SocketAddr,
    /// The local app (plaintext) that the inbound side fronts; without it, no --inbound listener.
    #[arg(long, required_unless_present_any = ["upstream", "tcp_inbound"])]
    pub(crate) app: Option<std::net::SocketAddr>,
    /// Another inbound mTLS port, LISTEN,APP (repeatable), relayed as opaque TCP to
    /// the app port APP whatever --app-protocol says: a database or cache port beside
    /// the HTTP one. Same allow-list, mode and limits.
    /// E.g. 0.0.0.0:15007,127.0.0.1:5432
    #[arg(long)]
    pub(crate) tcp_inbound: Vec<zt_proxy::TcpPort>,
    /// An outbound route, LISTEN,TARGET,SPIFFE_ID (repeatable): the app connects in
    /// plaintext to LISTEN, the proxy connects with mTLS to TARGET and requires its
    /// SVID to be SPIFFE_ID. E.g. 127.0.0.1:15001,billing:15006,spiffe://example.org/billing
    #[arg(long)]
    pub(crate) upstream: Vec<zt_proxy::Upstream>,
    /// What the app speaks: http1, h2c (HTTP/2 in cleartext, for gRPC apps), or tcp
    /// (opaque: bytes relayed after the handshake and the allow-list, no headers).
    #[arg(long, value_enum, default_value_t = AppProtocolArg::Http1)]
    pub(crate) app_protocol: AppProtocolArg,
    /// The admin port: /healthz, /readyz (ready once the proxy holds an SVID), /metrics.
    #[arg(long, default_value = "127.0.0.1:15020")]
    pub(crate) admin: std::net::SocketAddr,
    /// Threads serving each inbound address, each with its own event loop and listening
    /// socket (SO_REUSEPORT), like nginx's workers [default: 2, or 1 on a single core, as
    /// Istio sizes its sidecars; a gateway may want one per core].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub(crate) workers: Option<u16>,
    /// SPIFFE IDs that may connect (repeatable; `*` wildcards, e.g. spiffe://example.org/ns/*/sa/web).
    #[arg(long = "allow-spiffe-id", required_unless_present_any = ["upstream", "policy_dir", "policies_from_agent"])]
    pub(crate) allow_spiffe_id: Vec<String>,
    /// Headers a client could forge its identity with, removed before the app sees
    /// a request (repeatable; x-forwarded-client-cert always is).
    #[arg(long = "strip-header")]
    pub(crate) strip_header: Vec<String>,
    /// A header that hands the app part of the verified caller's SPIFFE ID, for apps
    /// that cannot parse XFCC: NAME=FIELD or NAME=TEMPLATE with {FIELD}s, FIELD one of
    /// spiffe-id, trust-domain, path, ns, sa (repeatable; e.g. X-Client-CN={sa}). A
    /// copy sent by the client is removed in every spelling; a caller whose ID lacks
    /// a field gets no header.
    #[arg(long = "identity-header", value_name = "NAME=FIELD")]
    pub(crate) identity_header: Vec<zt_proxy::connection::IdentityHeader>,
    /// A header some apps route by (X-Forwarded-Host, X-Original-URL, X-Rewrite-URL,
    /// Forwarded, method overrides…) to pass to the app as the client sent it
    /// (repeatable); untrusted, they are removed, since the policies decided on the
    /// request line and Host.
    #[arg(long = "trust-header")]
    pub(crate) trust_header: Vec<String>,
    /// Request headers whose name has '_' (which CGI, WSGI, PHP and Rack read as
    /// the same as '-'): drop, reject (400), or allow (still removed when they
    /// spell a removed header).
    #[arg(long, default_value = "drop", value_parser = parse_from_str::<zt_proxy::request::normalize::Underscores>)]
    pub(crate) headers_with_underscores: zt_proxy::request::normalize::Underscores,
    /// Path parameters (';' in a path segment, which servlet-style apps drop):
    /// reject (400), or strip them from every segment before policies and the app
    /// see the path.
    #[arg(long, default_value = "reject", value_parser = parse_from_str::<zt_policy::normalize::PathParams>)]
    pub(crate) path_params: zt_policy::normalize::PathParams,
    /// An HTTP/1.1 upgrade protocol spliced through after the app's 101
    /// (repeatable). Others (h2c above all, whose requests no policy would see) are
    /// removed and the request served as an ordinary one.
    #[arg(long = "allow-upgrade", default_value = "websocket")]
    pub(crate) allow_upgrade: Vec<String>,
    /// Accept TLS 1.2 as well as 1.3.
    #[arg(long)]
    pub(crate) tls12: bool,
    /// strict: mTLS only. permissive: plaintext too on the same port, counted and
    /// logged (Istio's PeerAuthentication modes; for migrating callers). A
    /// PeerAuthentication among the policies that applies to the workload overrides
    /// it, per inbound port, live.
    #[arg(long, value_enum, default_value_t = ModeArg::Strict)]
    pub(crate) mode: ModeArg,
    /// Open inbound connections at most; more are closed at accept.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// Open inbound connections from one source address at most, so that one
    /// client cannot hold every slot.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) max_connections_per_source: usize,
    /// Request headers at most (else 431).
    #[arg(long, default_value_t = 100)]
    pub(crate) max_request_headers: usize,
    /// Bytes of request head at most (else 431).
    #[arg(long, default_value_t = 65_536)]
    pub(crate) max_header_bytes: usize,
    /// Time for a request's head to arrive, also the idle time allowed between
    /// requests (slow clients are disconnected).
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub(crate) request_header_timeout: Duration,
    /// Request body bytes at most (else 413); unlimited if not set.
    #[arg(long)]
    pub(crate) max_request_body: Option<u64>,
    /// The proxy's SVID chain, PEM, for development (with --key and --bundle; reloaded on change).
    #[arg(long, requires_all = ["key", "bundle"])]
    pub(crate) cert: Option<PathBuf>,
    /// The SVID's key, PEM.
    #[arg(long, requires_all = ["cert", "bundle"])]
    pub(crate) key: Option<PathBuf>,
    /// The trust bundle, PEM or SPIFFE JWKS.
    #[arg(long, requires_all = ["cert", "key"])]
    pub(crate) bundle: Option<PathBuf>,
    /// The Workload API socket, when not using files: a path, unix:///path or unix:/path [default: $SPIFFE_ENDPOINT_SOCKET, else /run/zt-agent/public/api.sock if it exists, else the agent's default for this user].
    #[arg(long, value_parser = zt_workload::client::parse_socket)]
    pub(crate) socket: Option<PathBuf>,
    /// Authorize every request by the Istio AuthorizationPolicies in this directory
    /// (reloaded when it changes; a set that does not load keeps the last good one).
    #[arg(long)]
    pub(crate) policy_dir: Option<PathBuf>,
    /// Authorize every request by the policies zt server holds (zt policy apply), as
    /// zt agent on the Workload API socket hands them out; until the first version
    /// arrives, every request is denied.
    #[arg(long)]
    pub(crate) policies_from_agent: bool,
    /// enforce: a DENY is a 403 (a closed connection for TCP). permissive: evaluated
    /// and recorded, but let through.
    #[arg(long, value_enum, default_value_t = PolicyModeArg::Enforce, requires = "policies")]
    pub(crate) policy_mode: PolicyModeArg,
    /// The workload's namespace for policy scope [default: from the SPIFFE ID's /ns/NS/].
    #[arg(long, requires = "policies")]
    pub(crate) namespace: Option<String>,
    /// A workload label for policy selectors, KEY=VALUE (repeatable), e.g. app=billing-service.
    #[arg(long = "label", value_parser = parse_label, requires = "policies")]
    pub(crate) labels: Vec<(String, String)>,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    pub(crate) root_namespace: String,
    /// Append every decision to this hash-chained log (zt audit verify|query reads it).
    #[arg(long, requires = "policies")]
    pub(crate) decision_log: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) checkpoints: CheckpointArgs,
    /// Rego modules (v1, or v0 as written) for CUSTOM policies' providers (repeatable).
    #[arg(long = "rego", requires = "policies")]
    pub(crate) rego: Vec<PathBuf>,
    /// A CUSTOM policy provider, NAME=RULE (repeatable): requests a CUSTOM policy naming
    /// NAME sends out are decided in process by the Rego rule RULE (e.g.
    /// zt-rego=envoy/authz/allow), with OPA-Envoy's input shape.
    #[arg(long = "custom-provider", value_parser = parse_label, requires = "rego")]
    pub(crate) custom_providers: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) rego_limits: RegoLimitArgs,
    /// Certificates (PEM) trusted for RequestAuthentication jwksUri fetches, besides the
    /// SPIFFE trust bundle: e.g. /etc/ssl/certs/ca-certificates.crt for a public issuer,
    /// or the CA of a private one. Fetches are HTTPS only.
    #[arg(long, value_name = "FILE", requires = "policies")]
    pub(crate) jwks_ca: Option<PathBuf>,
    /// Export a span per inbound request (OpenTelemetry HTTP conventions, the caller's
    /// SPIFFE ID) with OTLP over gRPC to this collector, e.g. http://127.0.0.1:4317; a
    /// caller's W3C traceparent is continued and the app gets the proxy's. Off by
    /// default: then trace headers pass through untouched.
    #[arg(long, value_name = "URL", value_parser = parse_from_str::<zt_proxy::otlp::Endpoint>)]
    pub(crate) otlp_endpoint: Option<zt_proxy::otlp::Endpoint>,
}

/// Every certificate of a PEM file (`--jwks-ca`); none is an error.
fn read_pem_certificates(
    path: &std::path::Path,
) -> anyhow::Result<Vec<rustls_pki_types::CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject as _;
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("--jwks-ca {}: {e}", path.display()))?;
    let certificates = rustls_pki_types::CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--jwks-ca {}: {e}", path.display()))?;
    if certificates.is_empty() {
        anyhow::bail!("--jwks-ca {}: no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// `--label KEY=VALUE`.
pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PolicyModeArg {
    Enforce,
    Permissive,
}

/// `zt proxy --mode`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    Strict,
    Permissive,
}

/// `--app-protocol`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum AppProtocolArg {
    Http1,
    H2c,
    Tcp,
}

/// Runs the sidecar until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let allow = AllowList::parse(&args.allow_spiffe_id)?;
    let header_names = |flag: &str, names: &[String]| {
        names
            .iter()
            .map(|name| {
                http::HeaderName::from_bytes(name.as_bytes())
                    .with_context(|| format!("{flag} {name:?}: not a header name"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    // A client's copy of an identity header is removed like any forged identity.
    let mut strip = header_names("--strip-header", &args.strip_header)?;
    strip.extend(args.identity_header.iter().map(|h| h.name.clone()));
    let head = HeadRules {
        strip,
        trusted: header_names("--trust-header", &args.trust_header)?,
        underscores: args.headers_with_underscores,
        path_params: args.path_params,
        upgrades: args
            .allow_upgrade
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect(),
    };
    if let Some(name) = head
        .trusted
        .iter()
        .find(|name| !ROUTING_HEADERS.contains(&name.as_str()))
    {
        anyhow::bail!(
            "--trust-header {name}: not a header zt proxy removes (those are: {})",
            ROUTING_HEADERS.join(", ")
        );
    }
    let workload_api = zt_workload::client::endpoint(args.socket).map_err(anyhow::Error::msg)?;
    let identity = match (args.cert, args.key, args.bundle) {
        (Some(cert), Some(key), Some(bundle)) => IdentitySource::Files { cert, key, bundle },
        _ => IdentitySource::WorkloadApi(workload_api.clone()),
    };
    if matches!(identity, IdentitySource::WorkloadApi(_))
        || (args.policy_dir.is_none() && args.policies_from_agent)
    {
        // Refused now, with the directory at fault; checked again before every connection.
        zt_workload::client::check_socket(&workload_api)
            .map_err(|e| anyhow::anyhow!("{}: {e}", workload_api.display()))?;
    }
    let policies = match (args.policy_dir, args.policies_from_agent) {
        (Some(dir), _) => Some(PolicySource::Dir(dir)),
        (None, true) => Some(PolicySource::Agent(workload_api)),
        (None, false) => None,
    };
    if (args.app.is_some() || !args.tcp_inbound.is_empty())
        && args.allow_spiffe_id.is_empty()
        && policies.is_none()
    {
        anyhow::bail!(
            "--allow-spiffe-id, --policy-dir or --policies-from-agent is required with --app or --tcp-inbound: without one nobody could connect"
        );
    }
    // With policies and no allow-list, the policies alone decide who gets in.
    let allow = if args.allow_spiffe_id.is_empty() && policies.is_some() {
        AllowList::parse(&["*".to_owned()])?
    } else {
        allow
    };
    let fronting = |app, app_protocol| InboundConfig {
        app,
        allow: allow.clone(),
        identity_headers: args.identity_header.clone(),
        head: head.clone(),
        limits: Limits {
            max_connections: args.max_connections,
            max_connections_per_source: args.max_connections_per_source,
            max_headers: args.max_request_headers,
            max_header_bytes: args.max_header_bytes,
            header_timeout: args.request_header_timeout,
            max_body_bytes: args.max_request_body,
        },
        mode: match args.mode {
            ModeArg::Strict => Mode::Strict,
            ModeArg::Permissive => Mode::Permissive,
        },
        app_protocol,
        authz: None,
        tracer: None,
    };
    let mut inbound = Vec::new();
    if let Some(app) = args.app {
        let protocol = match args.app_protocol {
            AppProtocolArg::Http1 => AppProtocol::Http1,
            AppProtocolArg::H2c => AppProtocol::H2c,
            AppProtocolArg::Tcp => AppProtocol::Tcp,
        };
        inbound.push(("--inbound", args.inbound, fronting(app, protocol)));
    }
    for port in &args.tcp_inbound {
        inbound.push(("--tcp-inbound", port.listen, fronting(port.app, AppProtocol::Tcp)));
    }
    let providers = if args.rego.is_empty() {
        None
    } else {
        let (policies, _) = super::pdp::load(&args.rego, "--rego", args.rego_limits)?;
        Some(std::sync::Arc::new(RegoProviders {
            policies,
            rules: args.custom_providers.iter().cloned().collect(),
        }))
    };
    let jwks_ca = match &args.jwks_ca {
        Some(path) => read_pem_certificates(path)?,
        None => Vec::new(),
    };
    let config = ProxyConfig {
        identity,
        inbound,
        outbound: args.upstream,
        versions: if args.tls12 {
            TlsVersions::Tls12AndTls13
        } else {
            TlsVersions::Tls13
        },
        admin: args.admin,
        workers: args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |cores| cores.get().min(2)),
            usize::from,
        ),
        authz: policies.map(|source| AuthzConfig {
            providers: providers.clone(),
            source,
            mode: match args.policy_mode {
                PolicyModeArg::Enforce => PolicyMode::Enforce,
                PolicyModeArg::Permissive => PolicyMode::Permissive,
            },
            namespace: args.namespace,
            labels: args.labels.into_iter().collect(),
            root_namespace: args.root_namespace,
            decision_log: args.decision_log,
            decision_log_key: args.checkpoints.decision_log_key.clone(),
            checkpoints: args.checkpoints.policy(),
            jwks_ca,
        }),
        otlp: args.otlp_endpoint,
    };
    super::init_logging("info");
    // A sidecar's heap is small: transparent huge pages would back mimalloc's
    // arenas (the allocator regorus's memory limit brings) with 2 MiB pages
    // and about double the proxy's resident memory for nothing. Where the
    // kernel refuses, nothing is lost but that memory.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    // The data plane runs on the proxy's own worker threads (`--workers`); this
    // runtime serves only the admin port and the followers.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(zt_proxy::run(config, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
