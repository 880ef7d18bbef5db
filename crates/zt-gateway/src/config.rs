//! The gateway's configuration file (YAML), read strictly: an unknown key, a
//! missing one or a bad value is an error naming the file, the key and the
//! value.
//!
//! ```yaml
//! listen: 127.0.0.1:8443
//! url: https://localhost:8443          # how browsers reach it
//! tls: {cert: gateway.crt, key: gateway.key}
//! oidc:
//!   issuer: https://localhost:9443
//!   client_id: zt-gateway
//!   client_secret_file: gateway.secret
//!   ca: server-bundle.pem              # default: the system's CA bundle
//!   audiences: [zt-gateway]            # bearer tokens accepted
//!   clock_skew: 60s                    # tolerated on exp and nbf
//! session: {key_file: cookie.key, ttl: 4h}
//! identity: {workload_api: /run/zt/agent.sock}   # or {cert, key, bundle}
//! policy: {dir: policies/, namespace: edge, labels: {app: gateway}}
//! routes:
//!   - {host: localhost, path: /, upstream: 127.0.0.1:15006,
//!      spiffe_id: "spiffe://example.org/ns/demo/sa/service-one"}
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zt_identity::SpiffeId;

/// Largest configuration file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The longest absolute session life accepted.
const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Where Debian (and most Linux systems) keep the system's CA bundle.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// `key: what is wrong`.
    pub problem: String,
}

/// The whole configuration, checked.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The HTTPS listener.
    pub listen: SocketAddr,
    /// The gateway's external origin (`https://host[:port]`), the base of its
    /// redirect URI.
    pub url: String,
    /// The listener's certificate chain and key (PEM), reloaded on change.
    pub tls: TlsFiles,
    /// The OpenID Provider people sign in with.
    pub oidc: Oidc,
    /// Session cookies.
    pub session: SessionSettings,
    /// The gateway's own SVID, which upstreams see.
    pub identity: Identity,
    /// The authorization policies every request is decided by.
    pub policy: PolicySettings,
    /// Host and path prefix → mesh service.
    pub routes: Vec<Route>,
    /// Identity headers set from the verified token for every route (a route
    /// may add its own); every header of these names from the client is
    /// removed first.
    pub headers: BTreeMap<String, String>,
    /// The admin listener (health, metrics), if any.
    pub admin: Option<SocketAddr>,
    /// Device trust: the device states followed from zt server, checked on
    /// every request against the certificate the client presents.
    pub devices: Option<Devices>,
}

/// Where device states come from.
#[derive(Debug, Clone)]
pub struct Devices {
    /// zt server's device API, `https://host:port`, reached with the gateway's SVID.
    pub server: String,
    /// With no answer from it for this long, every device counts as unknown.
    pub stale_after: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesFile {
    server: String,
    #[serde(default)]
    stale_after: Option<String>,
}

/// A certificate and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The OpenID Provider.
#[derive(Debug, Clone)]
pub struct Oidc {
    /// Its issuer identifier; discovery is at `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// The gateway's client ID there.
    pub client_id: String,
    /// The file holding the client secret.
    pub client_secret_file: PathBuf,
    /// The CA bundle the provider's certificate is verified with.
    pub ca: PathBuf,
    /// The scopes asked for at sign-in.
    pub scopes: Vec<String>,
    /// The audiences a bearer token may carry (one suffices): the gateway's
    /// client ID unless set.
    pub audiences: Vec<String>,
    /// The clock skew tolerated on tokens' `exp` and `nbf` (60 s by default).
    pub clock_skew: Duration,
}

/// Session cookies.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The 32-byte key that seals cookies; made (0600) when missing. Another
    /// key (another instance, an earlier key) opens no cookie of this one.
    pub key_file: PathBuf,
    /// A session's absolute life, whatever its activity.
    pub ttl: Duration,
}

/// Where the gateway's SVID comes from.
#[derive(Debug, Clone)]
pub enum Identity {
    /// zt agent's Workload API socket.
    WorkloadApi(PathBuf),
    /// Files, reloaded on change.
    Files {
        /// PEM chain.
        cert: PathBuf,
        /// PEM key.
        key: PathBuf,
        /// PEM trust bundle.
        bundle: PathBuf,
    },
}

/// The authorization policies.
#[derive(Debug, Clone)]
pub struct PolicySettings {
    /// A directory of policy files (reloaded), or `None`: from zt agent.
    pub dir: Option<PathBuf>,
    /// The namespace policies select the gateway by.
    pub namespace: String,
    /// The labels policies select the gateway by.
    pub labels: BTreeMap<String, String>,
    /// The hash-chained decision log, if any.
    pub decision_log: Option<PathBuf>,
}

/// What the upstream receives as the user's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// The user's token exchanged (RFC 8693) for one whose audience is the
    /// route's (the default).
    Exchange,
    /// No token: identity headers only.
    None,
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The host it serves (lower case, no port); `None`: any.
    pub host: Option<String>,
    /// The path prefix, ending at a segment boundary (`/app` matches `/app`
    /// and `/app/x`, not `/apple`).
    pub path: String,
    /// The upstream's mTLS address (its sidecar's inbound port).
    pub upstream: String,
    /// The SPIFFE ID the upstream must present.
    pub spiffe_id: SpiffeId,
    /// What token the upstream gets.
    pub token: TokenMode,
    /// The audience of the exchanged token: the SPIFFE ID unless set.
    pub audience: String,
    /// Identity headers for this route, besides the common ones.
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: String,
    url: String,
    tls: TlsFiles,
    oidc: OidcFile,
    #[serde(default)]
    session: Option<SessionFile>,
    identity: IdentityFile,
    policy: PolicyFile,
    routes: Vec<RouteFile>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    admin: Option<String>,
    #[serde(default)]
    devices: Option<DevicesFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcFile {
    issuer: String,
    client_id: String,
    client_secret_file: PathBuf,
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default)]
    audiences: Option<Vec<String>>,
    #[serde(default)]
    clock_skew: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    key_file: PathBuf,
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    #[serde(default)]
    workload_api: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    bundle: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    agent: bool,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    decision_log: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    #[serde(default)]
    host: Option<String>,
    #[serde(default = "root")]
    path: String,
    upstream: String,
    spiffe_id: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn root() -> String {
    "/".into()
}

impl GatewayConfig {
    /// Reads and checks `path`; relative paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let fail = |problem: String| ConfigError {
            file: file.clone(),
            problem,
        };
        let size = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(fail(format!("larger than {MAX_CONFIG_BYTES} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(fail)
    }

    /// Checks the YAML `text`, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        let at = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let listen = file
            .listen
            .parse()
            .map_err(|_| format!("listen: {:?} is not IP:PORT", file.listen))?;
        let url = origin(&file.url).map_err(|why| format!("url: {:?}: {why}", file.url))?;
        let oidc = file.oidc;
        if !oidc.issuer.starts_with("https://") || oidc.issuer.contains(['?', '#']) {
            return Err(format!("oidc.issuer: {:?} is not an https URL", oidc.issuer));
        }
        if oidc.client_id.is_empty() {
            return Err("oidc.client_id: empty".into());
        }
        let scopes = oidc.scopes.unwrap_or_else(|| {
            ["openid", "profile", "email", "groups"]
                .map(String::from)
                .to_vec()
        });
        if !scopes.iter().any(|s| s == "openid") {
            return Err("oidc.scopes: must include openid".into());
        }
        let clock_skew = match &oidc.clock_skew {
            Some(skew) => parse_duration(skew)
                .filter(|skew| skew.as_secs() <= 300)
                .ok_or_else(|| {
                    format!("oidc.clock_skew: {skew:?}: expected a duration like 30s, at most 5m")
                })?,
            None => Duration::from_secs(zt_authn::CLOCK_SKEW_SECS),
        };
        let oidc = Oidc {
            clock_skew,
            audiences: oidc
                .audiences
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| vec![oidc.client_id.clone()]),
            issuer: oidc.issuer,
            client_id: oidc.client_id,
            client_secret_file: at(oidc.client_secret_file),
            ca: oidc.ca.map_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE), at),
            scopes,
        };
        let session = match file.session {
            Some(session) => SessionSettings {
                key_file: at(session.key_file),
                ttl: match session.ttl {
                    Some(ttl) => parse_duration(&ttl)
                        .filter(|ttl| !ttl.is_zero() && *ttl <= MAX_SESSION_TTL)
                        .ok_or_else(|| {
                            format!("session.ttl: {ttl:?}: expected a duration like 4h, at most 24h")
                        })?,
                    None => Duration::from_secs(4 * 3600),
                },
            },
            None => return Err("session: missing (session.key_file is required)".into()),
        };
        let identity = match file.identity {
            IdentityFile {
                workload_api: Some(socket),
                cert: None,
                key: None,
                bundle: None,
            } => Identity::WorkloadApi(at(socket)),
            IdentityFile {
                workload_api: None,
                cert: Some(cert),
                key: Some(key),
                bundle: Some(bundle),
            } => Identity::Files {
                cert: at(cert),
                key: at(key),
                bundle: at(bundle),
            },
            _ => return Err("identity: give workload_api, or cert, key and bundle".into()),
        };
        let policy = file.policy;
        let dir = match (policy.dir, policy.agent) {
            (Some(dir), false) => Some(at(dir)),
            (None, true) => None,
            _ => return Err("policy: give dir, or agent: true (policies from zt agent)".into()),
        };
        if !matches!(identity, Identity::WorkloadApi(_)) && dir.is_none() {
            return Err("policy.agent: policies from zt agent need identity.workload_api".into());
        }
        let policy = PolicySettings {
            dir,
            namespace: policy.namespace,
            labels: policy.labels,
            decision_log: policy.decision_log.map(at),
        };
        check_headers("headers", &file.headers)?;
        if file.routes.is_empty() {
            return Err("routes: none: the gateway would serve nothing".into());
        }
        let routes = file
            .routes
            .into_iter()
            .enumerate()
            .map(|(i, route)| check_route(route).map_err(|why| format!("routes[{i}].{why}")))
            .collect::<Result<Vec<_>, _>>()?;
        let admin = file
            .admin
            .map(|a| a.parse().map_err(|_| format!("admin: {a:?} is not IP:PORT")))
            .transpose()?;
        let devices = file
            .devices
            .map(|d| {
                if !d.server.starts_with("https://") {
                    return Err(format!("devices.server: {:?} is not an https:// URL", d.server));
                }
                let stale_after = match d.stale_after {
                    None => Duration::from_secs(15),
                    Some(text) => parse_duration(&text).filter(|d| !d.is_zero()).ok_or_else(|| {
                        format!("devices.stale_after: {text:?} is not a duration such as 15s")
                    })?,
                };
                Ok(Devices {
                    server: d.server,
                    stale_after,
                })
            })
            .transpose()?;
        Ok(Self {
            listen,
            url,
            tls: TlsFiles {
                cert: at(file.tls.cert),
                key: at(file.tls.key),
            },
            oidc,
            session,
            identity,
            policy,
            routes,
            headers: file.headers,
            admin,
            devices,
        })
    }

    /// The redirect URI registered for the gateway at the provider.
    pub fn redirect_uri(&self) -> String {
        format!("{}{}", self.url, crate::paths::CALLBACK)
    }
}

fn check_route(route: RouteFile) -> Result<Route, String> {
    let host = route
        .host
        .map(|h| {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if h.is_empty() || h.contains([':', '/', ' ']) {
                Err(format!("host: {h:?} is not a host name"))
            } else {
                Ok(h)
            }
        })
        .transpose()?;
    if !route.path.starts_with('/') || route.path.contains(['?', '#', '%']) || route.path.contains("//") {
        return Err(format!(
            "path: {:?}: expected a normalized path prefix like /app",
            route.path
        ));
    }
    if route.path.starts_with(crate::paths::PREFIX) {
        return Err(format!(
            "path: {:?}: {} is the gateway's own",
            route.path,
            crate::paths::PREFIX
        ));
    }
    if !route.upstream.contains(':') {
        return Err(format!("upstream: {:?} is not HOST:PORT", route.upstream));
    }
    let spiffe_id =
        SpiffeId::parse(&route.spiffe_id).map_err(|e| format!("spiffe_id: {:?}: {e}", route.spiffe_id))?;
    let token = match route.token.as_deref() {
        None | Some("exchange") => TokenMode::Exchange,
        Some("none") => TokenMode::None,
        Some(other) => return Err(format!("token: {other:?}: expected exchange or none")),
    };
    check_headers("headers", &route.headers)?;
    Ok(Route {
        host,
        path: route.path.trim_end_matches('/').to_owned(),
        upstream: route.upstream,
        audience: route.audience.unwrap_or_else(|| spiffe_id.to_string()),
        spiffe_id,
        token,
        headers: route.headers,
    })
}

/// Identity headers: valid lower-case-insensitive names without `_`, each
/// from a claim.
fn check_headers(key: &str, headers: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, claim) in headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.contains('_') {
            return Err(format!(
                "{key}: {name:?} is not a header name (letters, digits and -)"
            ));
        }
        if claim.is_empty() {
            return Err(format!("{key}.{name}: empty claim name"));
        }
    }
    Ok(())
}

/// `https://host[:port]` without a path, or why not.
fn origin(url: &str) -> Result<String, &'static str> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("expected https://host[:port]")?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err("expected https://host[:port], no path");
    }
    Ok(format!("https://{}", rest.to_ascii_lowercase()))
}

/// `90s`, `15m`, `4h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const GOOD: &str = "listen: 127.0.0.1:8443
url: https://Localhost:8443/
tls: {cert: g.crt, key: g.key}
oidc: {issuer: https://localhost:9443, client_id: gw, client_secret_file: s}
session: {key_file: k}
identity: {cert: a.crt, key: a.key, bundle: b.pem}
policy: {dir: p, namespace: edge}
routes:
  - {path: /app/, upstream: 127.0.0.1:1, spiffe_id: spiffe://example.org/one}
";

    #[test]
    fn a_good_file_is_read_with_its_defaults() {
        let config = GatewayConfig::parse(GOOD, Path::new("/etc/zt")).unwrap();
        assert_eq!(config.url, "https://localhost:8443");
        assert_eq!(config.redirect_uri(), "https://localhost:8443/.zt/callback");
        assert_eq!(config.tls.cert, Path::new("/etc/zt/g.crt"));
        assert_eq!(config.oidc.audiences, ["gw"]);
        assert_eq!(config.oidc.ca, Path::new(SYSTEM_CA_BUNDLE));
        assert_eq!(config.session.ttl, Duration::from_secs(4 * 3600));
        assert_eq!(config.routes[0].path, "/app");
        assert_eq!(config.routes[0].audience, "spiffe://example.org/one");
        assert_eq!(config.routes[0].token, TokenMode::Exchange);
    }

    #[test]
    fn every_problem_names_its_key_and_value() {
        for (from, to, needle) in [
            (
                "listen: 127.0.0.1:8443",
                "listen: localhost",
                "listen: \"localhost\"",
            ),
            (
                "url: https://Localhost:8443/",
                "url: http://x",
                "url: \"http://x\"",
            ),
            ("{path: /app/,", "{path: /.zt/x,", "routes[0].path"),
            ("{path: /app/,", "{path: app,", "routes[0].path: \"app\""),
            (
                "spiffe_id: spiffe://example.org/one",
                "spiffe_id: x",
                "routes[0].spiffe_id: \"x\"",
            ),
            (
                "session: {key_file: k}",
                "session: {key_file: k, ttl: 48h}",
                "session.ttl: \"48h\"",
            ),
            (
                "policy: {dir: p, namespace: edge}",
                "policy: {namespace: edge}",
                "policy: give dir",
            ),
            (
                "identity: {cert: a.crt, key: a.key, bundle: b.pem}",
                "identity: {cert: a.crt}",
                "identity:",
            ),
            ("routes:", "headers: {X_User: sub}\nroutes:", "\"X_User\""),
            (
                "session: {key_file: k}",
                "session: {key_file: k, bogus: 1}",
                "bogus",
            ),
        ] {
            assert!(GOOD.contains(from), "{from}");
            let error = GatewayConfig::parse(&GOOD.replace(from, to), Path::new("/")).unwrap_err();
            assert!(error.contains(needle), "{to}: {error}");
        }
    }
}
