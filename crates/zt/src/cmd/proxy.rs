//! `zt proxy`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use zt_agent::client::{ENDPOINT_ENV, socket_path};
use zt_proxy::authz::{AuthzConfig, PolicyMode, PolicySource, RegoProviders};
use zt_proxy::inbound::{Limits, Mode};
use zt_proxy::peers::AllowList;
use zt_proxy::{AppProtocol, IdentitySource, InboundConfig, ProxyConfig};
use zt_tls::TlsVersions;

use crate::{AppProtocolArg, ModeArg, PolicyModeArg, ProxyArgs};

/// Runs the sidecar until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let allow = AllowList::parse(&args.allow_spiffe_id)?;
    let strip_headers = args
        .strip_header
        .iter()
        .map(|name| {
            http::HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("--strip-header {name:?}: not a header name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let workload_api = match (args.socket, std::env::var(ENDPOINT_ENV)) {
        (Some(path), _) => path,
        (None, Ok(endpoint)) => socket_path(&endpoint).map_err(|e| anyhow::anyhow!("{ENDPOINT_ENV}: {e}"))?,
        (None, Err(_)) => PathBuf::from(zt_agent::DEFAULT_SOCKET),
    };
    let identity = match (args.cert, args.key, args.bundle) {
        (Some(cert), Some(key), Some(bundle)) => IdentitySource::Files { cert, key, bundle },
        _ => IdentitySource::WorkloadApi(workload_api.clone()),
    };
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
        strip_headers: strip_headers.clone(),
        limits: Limits {
            max_connections: args.max_connections,
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
        }),
    };
    super::init_logging("info");
    super::runtime()?.block_on(zt_proxy::run(config, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
