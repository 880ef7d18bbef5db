//! Where everything of `zt up` lives: one directory, reused run after run, and a
//! block of loopback ports from `--port-base`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use crate::Error;

/// The trust domain of the demo mesh: Istio's default, so that policies name
/// principals as Istio's do (`cluster.local/ns/default/sa/service-one`).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The agent's SPIFFE ID, granted by the join token.
pub const AGENT_ID: &str = "spiffe://cluster.local/agent/zt-up";

/// The demo services, each an app behind a zt proxy.
pub const SERVICES: [&str; 2] = ["service-one", "service-two"];

/// The access gateway's SPIFFE ID: Istio's form, namespace `edge`, for its
/// mTLS to the demo services (and, with the DNS name `localhost`, its HTTPS
/// certificate).
pub const GATEWAY_ID: &str = "spiffe://cluster.local/ns/edge/sa/gateway";
/// The namespace policies select the gateway by (with the label `app=gateway`).
pub const GATEWAY_NAMESPACE: &str = "edge";
/// The gateway's OAuth client at the OpenID Provider (confidential).
pub const GATEWAY_CLIENT: &str = "zt-gateway";

/// Highest offset from `--port-base` that `zt up` uses.
pub const MAX_PORT_OFFSET: u16 = 84;

/// The demo user `zt up` creates, and their group.
pub const DEMO_USER: &str = "demo";
/// The group of the demo user.
pub const DEMO_GROUP: &str = "staff";
/// The public OAuth client for trying the sign-in flow by hand.
pub const DEMO_CLIENT: &str = "zt-demo";
/// Its redirect URI: a loopback address (RFC 8252), where nothing needs to
/// listen: the code can be read off the browser's address bar.
pub const DEMO_REDIRECT_URI: &str = "http://127.0.0.1:8400/callback";

/// Longest path a Unix socket can be bound at (sun_path, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The directory and ports of one `zt up`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Absolute.
    pub dir: PathBuf,
    port_base: u16,
}

/// One demo service: its identity and addresses.
#[derive(Debug)]
pub struct Service {
    /// `service-one` or `service-two`.
    pub name: &'static str,
    /// Its SPIFFE ID (see [`spiffe_id`]).
    pub spiffe_id: String,
    /// mTLS, served by its zt proxy.
    pub inbound: SocketAddr,
    /// Plaintext on loopback: its proxy originates mTLS (as this service) to the other service.
    pub outbound: SocketAddr,
    /// The other service, which `outbound` reaches.
    pub peer: &'static str,
    /// The proxy's /healthz, /readyz and /metrics.
    pub admin: SocketAddr,
    /// The app itself (plaintext, loopback; only its proxy calls it).
    pub app: SocketAddr,
}

impl Layout {
    /// `dir` must be absolute.
    pub fn new(dir: PathBuf, port_base: u16) -> Self {
        Self { dir, port_base }
    }

    /// `--port-base`.
    pub fn port_base(&self) -> u16 {
        self.port_base
    }

    fn port(&self, offset: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.port_base + offset).into()
    }

    /// zt server's health and metrics port.
    pub fn server_http(&self) -> SocketAddr {
        self.port(80)
    }

    /// zt server's agent API.
    pub fn agent_api(&self) -> SocketAddr {
        self.port(81)
    }

    /// zt server's OpenID Provider (HTTPS).
    pub fn idp(&self) -> SocketAddr {
        self.port(82)
    }

    /// The OpenID Provider's issuer: `localhost`, a name WebAuthn accepts as
    /// relying party ID (an IP address is not).
    pub fn issuer(&self) -> String {
        format!("https://localhost:{}", self.idp().port())
    }

    /// The access gateway (HTTPS), in front of service-one.
    pub fn gateway(&self) -> SocketAddr {
        self.port(83)
    }

    /// The gateway's `https://localhost:PORT`, the origin browsers open.
    pub fn gateway_url(&self) -> String {
        format!("https://localhost:{}", self.gateway().port())
    }

    /// The gateway's /healthz, /readyz and /metrics (beside the proxies' admin ports).
    pub fn gateway_admin(&self) -> SocketAddr {
        self.port(23)
    }

    /// zt server's device API (HTTPS).
    pub fn devices(&self) -> SocketAddr {
        self.port(84)
    }

    /// The device API's URL, as the device agent and the gateway reach it.
    pub fn devices_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.devices().port())
    }

    /// This machine enrolled as a demo device: its key, certificate and identity.
    pub fn device_dir(&self) -> PathBuf {
        self.dir.join("device")
    }

    /// The compliance policy (written once from the example; edit it freely).
    pub fn device_policy(&self) -> PathBuf {
        self.dir.join("device-compliance.yaml")
    }

    /// The demo services, with their addresses.
    pub fn services(&self) -> Vec<Service> {
        SERVICES
            .iter()
            .zip(0_u16..)
            .map(|(name, i)| Service {
                name,
                spiffe_id: spiffe_id(name),
                inbound: self.port(1 + i),
                outbound: self.port(11 + i),
                peer: SERVICES[usize::from(1 - i)],
                admin: self.port(21 + i),
                app: self.port(31 + i),
            })
            .collect()
    }

    /// Every port, with what it is for (to check that all are free before starting).
    pub fn ports(&self) -> Vec<(SocketAddr, String)> {
        let mut ports = vec![
            (self.server_http(), "zt server's health and metrics".to_owned()),
            (self.agent_api(), "zt server's agent API".to_owned()),
            (self.idp(), "zt server's OpenID Provider".to_owned()),
            (self.gateway(), "the access gateway's HTTPS".to_owned()),
            (self.gateway_admin(), "the access gateway's admin".to_owned()),
            (self.devices(), "zt server's device API".to_owned()),
        ];
        for s in self.services() {
            ports.push((s.inbound, format!("{}'s mTLS inbound", s.name)));
            ports.push((s.outbound, format!("{}'s outbound to {}", s.name, s.peer)));
            ports.push((s.admin, format!("{}'s proxy admin", s.name)));
            ports.push((s.app, format!("{}'s app", s.name)));
        }
        ports
    }

    /// zt server's data directory.
    pub fn server_dir(&self) -> PathBuf {
        self.dir.join("server")
    }

    /// zt server's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.server_dir().join(zt_server::ADMIN_SOCKET)
    }

    /// zt agent's directory: its socket, data, join token and the server's bundle.
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }

    /// The Workload API socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.agent_dir().join("api.sock")
    }

    /// The agent's join token file.
    pub fn join_token(&self) -> PathBuf {
        self.agent_dir().join("join-token")
    }

    /// The bundle that authenticates zt server to the agent.
    pub fn server_bundle(&self) -> PathBuf {
        self.agent_dir().join("server-bundle.pem")
    }

    /// The proxy's executable: a link to zt at a path of its own, which is what
    /// the agent attests (`unix:path`) to tell the two proxies apart.
    pub fn proxy_binary(&self, service: &str) -> PathBuf {
        self.dir.join("bin").join(format!("{service}-proxy"))
    }

    /// The gateway's executable, a link to zt like the proxies' (see
    /// [`Layout::proxy_binary`]).
    pub fn gateway_binary(&self) -> PathBuf {
        self.dir.join("bin").join("gateway")
    }

    /// The gateway's directory: its configuration, HTTPS certificate, client
    /// secret and session key.
    pub fn gateway_dir(&self) -> PathBuf {
        self.dir.join("gateway")
    }

    /// The gateway's configuration, written by every run.
    pub fn gateway_config(&self) -> PathBuf {
        self.gateway_dir().join("gateway.yaml")
    }

    /// The gateway's OAuth client secret (0600).
    pub fn gateway_secret(&self) -> PathBuf {
        self.gateway_dir().join("client-secret")
    }

    /// The gateway's HTTPS certificate: svid.pem, key.pem, bundle.pem.
    pub fn gateway_tls(&self) -> PathBuf {
        self.gateway_dir().join("tls")
    }

    /// A child's log file.
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// A proxy's decision log.
    pub fn decision_log(&self, service: &str) -> PathBuf {
        self.dir.join("decisions").join(format!("{service}.log"))
    }

    /// The policy directory applied at start.
    pub fn policies(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// svid.pem, key.pem and bundle.pem of `service`, for callers outside the mesh.
    pub fn client_certs(&self, service: &str) -> PathBuf {
        self.dir.join("clients").join(service)
    }

    /// The state file (see [`crate::state`]).
    pub fn state(&self) -> PathBuf {
        self.dir.join("up.json")
    }

    /// The lock file, which holds the running `zt up`'s pid.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("up.lock")
    }

    /// Refuses a directory so deep that the sockets could not be bound in it.
    pub fn check_socket_paths(&self) -> Result<(), Error> {
        for socket in [self.admin_socket(), self.agent_socket()] {
            let length = socket.as_os_str().len();
            if length > MAX_SOCKET_PATH {
                return Err(Error::SocketPathTooLong {
                    dir: self.dir.clone(),
                    socket,
                    length,
                    max: MAX_SOCKET_PATH,
                });
            }
        }
        Ok(())
    }
}

/// The SPIFFE ID of a demo service: Istio's form, namespace `default`.
pub fn spiffe_id(service: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_within_the_block() {
        let layout = Layout::new(PathBuf::from("/tmp/zt-up"), 7000);
        let ports: Vec<u16> = layout.ports().iter().map(|(addr, _)| addr.port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        assert!(ports.iter().all(|p| (7001..=7000 + MAX_PORT_OFFSET).contains(p)));
        assert_eq!(ports.iter().max(), Some(&(7000 + MAX_PORT_OFFSET)));
        let services = layout.services();
        assert_eq!(services[0].peer, services[1].name);
        assert_eq!(
            services[1].spiffe_id,
            "spiffe://cluster.local/ns/default/sa/service-two"
        );
    }

    #[test]
    fn a_directory_too_deep_for_its_sockets_is_refused() {
        assert!(
            Layout::new(PathBuf::from("/tmp/zt-up"), 7000)
                .check_socket_paths()
                .is_ok()
        );
        let deep = PathBuf::from(format!("/tmp/{}", "d".repeat(100)));
        let error = Layout::new(deep, 7000).check_socket_paths().unwrap_err();
        assert!(error.to_string().contains("choose a shorter --dir"), "{error}");
    }
}
