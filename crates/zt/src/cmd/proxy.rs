//! `zt proxy`.

use std::process::ExitCode;

use anyhow::Context as _;
use zt_proxy::authz::{AuthzConfig, PolicyMode, PolicySource, RegoProviders};
use zt_proxy::inbound::{Limits, Mode};
use zt_proxy::request::allow::AllowList;
use zt_proxy::request::normalize::{HeadRules, ROUTING_HEADERS};
use zt_proxy::{AppProtocol, IdentitySource, InboundConfig, ProxyConfig};
use zt_tls::TlsVersions;

use crate::{AppProtocolArg, ModeArg, PolicyModeArg, ProxyArgs};

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
            || std::thread::available_parallelism().map_or(1, usize::from),
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
        }),
        otlp: args.otlp_endpoint,
    };
    super::init_logging("info");
    // A sidecar's heap is small: transparent huge pages would back mimalloc's
    // arenas (the allocator regorus's memory limit brings) with 2 MiB pages
    // and about double the proxy's resident memory for nothing. Where the
    // kernel refuses, nothing is lost but that memory.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    super::runtime()?.block_on(zt_proxy::run(config, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
