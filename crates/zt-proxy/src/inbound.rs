//! What an inbound listener is configured with: the app behind it and what it
//! speaks, who may connect, how request heads are made safe, limits, and the
//! authorization that decides every request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::connection::IdentityHeader;
use crate::request::allow::AllowList;

/// How the inbound side runs.
#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Where the app listens (plaintext, loopback).
    pub app: SocketAddr,
    /// Who may connect.
    pub allow: AllowList,
    /// Headers that hand the app the verified caller's identity besides XFCC
    /// (`--identity-header`); a copy sent by the client is removed first.
    pub identity_headers: Vec<IdentityHeader>,
    /// How request heads are made safe for the app: identity and routing
    /// headers, underscores, path parameters, upgrades.
    pub head: crate::request::normalize::HeadRules,
    /// What the app speaks.
    pub app_protocol: AppProtocol,
    /// Whether plaintext is accepted too, where no PeerAuthentication says
    /// (see [`InboundConfig::mode_for`]).
    pub mode: Mode,
    /// Limits that protect the proxy and the app from one client.
    pub limits: Limits,
    /// Authorization policies deciding every request, if configured.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
    /// Makes a span of every request, when spans are exported
    /// ([`crate::ProxyConfig::otlp`]; set by [`crate::run`]).
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
}

impl InboundConfig {
    /// The mode of a new connection to the inbound `port` (the listener's, as
    /// `destination.port` in policies): the PeerAuthentications in force for
    /// this workload, else [`InboundConfig::mode`] (`--mode`). Read per
    /// connection; resolved once per policy change.
    pub fn mode_for(&self, port: u16) -> Mode {
        self.authz
            .as_ref()
            .and_then(|authz| authz.mtls_mode(port))
            .map_or(self.mode, Mode::from)
    }
}

/// Limits per connection and request; a client that breaks one gets the HTTP
/// status for it, or its connection closed, and nobody else notices.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open inbound connections at most; more are closed at accept.
    pub max_connections: usize,
    /// Open inbound connections from one source address at most; more are
    /// closed at accept.
    pub max_connections_per_source: usize,
    /// Request headers at most (HTTP/1.1), else 431.
    pub max_headers: usize,
    /// Bytes of request head at most, else 431.
    pub max_header_bytes: usize,
    /// A request's head must arrive within this (slowloris; also the idle
    /// keep-alive limit between requests), else the connection is closed.
    pub header_timeout: Duration,
    /// Request body bytes at most, if set, else 413.
    pub max_body_bytes: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            max_body_bytes: None,
        }
    }
}

/// An inbound port of its own for an app port that speaks something other than
/// HTTP: `LISTEN,APP`, relayed as opaque TCP (`--tcp-inbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPort {
    /// The mTLS listener.
    pub listen: SocketAddr,
    /// The app's plaintext port.
    pub app: SocketAddr,
}

impl std::str::FromStr for TcpPort {
    type Err = String;

    /// `LISTEN,APP`, e.g. `0.0.0.0:15007,127.0.0.1:5432`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (listen, app) = s
            .split_once(',')
            .ok_or_else(|| format!("{s:?}: expected LISTEN,APP"))?;
        let address = |part: &str| {
            part.parse::<SocketAddr>()
                .map_err(|_| format!("{s:?}: {part:?} is not IP:PORT"))
        };
        Ok(Self {
            listen: address(listen)?,
            app: address(app)?,
        })
    }
}

/// Istio's PeerAuthentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// mTLS only: plaintext fails the handshake (refused as `not_tls`).
    #[default]
    Strict,
    /// mTLS, and plaintext on the same port (told apart by the first byte: a TLS
    /// handshake record starts with 0x16), counted and logged: the migration path,
    /// watch who still talks plaintext before turning strict on.
    Permissive,
    /// Plaintext only, from a PeerAuthentication (never the default): the proxy
    /// terminates no TLS, so a client's ClientHello is just bytes to the app's
    /// protocol — the HTTP parser refuses it, an opaque TCP port relays it.
    Disable,
}

impl Mode {
    /// Istio's name, as metrics and logs show it.
    pub fn as_str(self) -> &'static str {
        zt_policy::MtlsMode::from(self).as_str()
    }
}

impl From<zt_policy::MtlsMode> for Mode {
    fn from(mode: zt_policy::MtlsMode) -> Self {
        match mode {
            zt_policy::MtlsMode::Strict => Mode::Strict,
            zt_policy::MtlsMode::Permissive => Mode::Permissive,
            zt_policy::MtlsMode::Disable => Mode::Disable,
        }
    }
}

impl From<Mode> for zt_policy::MtlsMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Strict => zt_policy::MtlsMode::Strict,
            Mode::Permissive => zt_policy::MtlsMode::Permissive,
            Mode::Disable => zt_policy::MtlsMode::Disable,
        }
    }
}

/// Shows the inbound ports' modes — `zt_proxy_mtls_mode{port,mode}`, 1 for the
/// mode in force and 0 for the others — and logs each change, until the
/// proxy stops (run as the supervised task `mtls_modes`). `ports`: each inbound listener's port and its `--mode`.
pub(crate) async fn follow_modes(
    ports: Vec<(u16, Mode)>,
    authz: Option<Arc<crate::authz::Authorizer>>,
    metrics: Arc<crate::admin::Metrics>,
) {
    let mut changes = authz.as_ref().map(|authz| authz.mtls_changes());
    let mut shown: Vec<Option<Mode>> = vec![None; ports.len()];
    loop {
        let in_force = changes
            .as_mut()
            .map(|changes| changes.current())
            .unwrap_or_default();
        for ((port, default), shown) in ports.iter().zip(&mut shown) {
            let mode = in_force.mode(*port).map_or(*default, Mode::from);
            for each in zt_policy::MtlsMode::ALL {
                let labels = crate::admin::MtlsLabels {
                    port: *port,
                    mode: each.as_str(),
                };
                let active = zt_policy::MtlsMode::from(mode) == each;
                metrics.mtls_mode.get_or_create(&labels).set(i64::from(active));
            }
            if *shown != Some(mode) {
                let by = in_force.policy_for(*port).unwrap_or("--mode");
                tracing::info!(port, mode = mode.as_str(), by, "inbound mTLS mode");
                *shown = Some(mode);
            }
        }
        match changes.as_mut() {
            Some(changes) => {
                if !changes.changed().await {
                    return;
                }
            }
            // Without policies nothing changes: `--mode` for good.
            None => std::future::pending().await,
        }
    }
}

/// The protocol between the proxy and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppProtocol {
    /// HTTP/1.1 (any caller's HTTP/2 is translated).
    #[default]
    Http1,
    /// HTTP/2 in cleartext, with prior knowledge: gRPC apps.
    H2c,
    /// Opaque TCP: after the handshake (and the allow-list), bytes are relayed
    /// as they are; no headers, so the app learns nothing of the caller.
    Tcp,
}
