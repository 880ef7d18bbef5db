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
    /// Whether plaintext is accepted too.
    pub mode: Mode,
    /// Limits that protect the proxy and the app from one client.
    pub limits: Limits,
    /// Authorization policies deciding every request, if configured.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
    /// Makes a span of every request, when spans are exported
    /// ([`crate::ProxyConfig::otlp`]; set by [`crate::run`]).
    pub tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
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
    /// mTLS only.
    #[default]
    Strict,
    /// mTLS, and plaintext on the same port (told apart by the first byte: a TLS
    /// handshake record starts with 0x16), counted and logged: the migration path,
    /// watch who still talks plaintext before turning strict on.
    Permissive,
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
