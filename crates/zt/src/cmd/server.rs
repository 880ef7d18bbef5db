//! `zt server`.

use std::process::ExitCode;

use zt_server::ServerConfig;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use zt_ca::KeyType;
use zt_identity::TrustDomain;

use super::args::{CheckpointArgs, DEFAULT_DATA_DIR, RegoLimitArgs};
use crate::duration;

#[derive(Args)]
pub(crate) struct ServerArgs {
    /// Trust domain this server is the authority of.
    #[arg(long, value_parser = TrustDomain::parse)]
    pub(crate) trust_domain: TrustDomain,
    /// Data directory: admin socket, lock and (by default) the SQLite datastore.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub(crate) data_dir: PathBuf,
    /// Datastore: a postgres:// URL for several servers on one database (default: SQLite in the data dir).
    #[arg(long)]
    pub(crate) datastore: Option<String>,
    /// Health (/healthz, /readyz) and metrics (/metrics) address.
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub(crate) http: std::net::SocketAddr,
    /// Lifetime of each signing authority; the next is prepared at 1/2 and activated at 5/6 of it.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub(crate) ca_ttl: Duration,
    /// Key algorithm of signing authorities: ec-p256, ec-p384 or rsa-2048.
    #[arg(long, default_value = "ec-p256")]
    pub(crate) ca_key_type: KeyType,
    /// Agent API (gRPC over TLS 1.3) address.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) agent_api: std::net::SocketAddr,
    /// Lifetime of agent SVIDs.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub(crate) agent_ttl: Duration,
    /// Serve a policy decision point (OPA's REST API) on the --http port, with these
    /// Rego policies, data files and bundles (repeatable). Policies PUT through the API
    /// live in this server's memory only.
    #[arg(long = "pdp")]
    pub(crate) pdp: Vec<PathBuf>,
    /// With --pdp: serve PUT and DELETE /v1/policies/{id}, as `zt pdp run
    /// --allow-policy-writes` does. Without it they are refused (401).
    #[arg(long, requires = "pdp")]
    pub(crate) allow_policy_writes: bool,
    /// With --pdp: require `Authorization: Bearer TOKEN` on every PDP API call but
    /// /health, the token read once from this file (chmod 600), as `zt pdp run` does.
    #[arg(long, requires = "pdp")]
    pub(crate) api_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) rego_limits: RegoLimitArgs,
    #[command(flatten)]
    pub(crate) idp: IdpArgs,
    #[command(flatten)]
    pub(crate) devices: DeviceArgs,
}

/// Device trust: enrollment, device certificates, posture reports and tiers.
#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// Serve the device API (HTTPS; devices enroll, renew their certificate
    /// and report over mTLS) on this address.
    #[arg(long = "devices", value_name = "ADDR")]
    pub(crate) devices: Option<std::net::SocketAddr>,
    /// The compliance policy (YAML): rules → tiers, fact ages, the heartbeat
    /// window. Without it every device is at the floor, `untrusted`. Read
    /// again when the file changes (a policy that does not load is refused,
    /// and the one in force stays).
    #[arg(long, value_name = "FILE", requires = "devices")]
    pub(crate) device_policy: Option<PathBuf>,
    /// Lifetime of device certificates (renewed at half of it).
    #[arg(long, default_value = "24h", value_parser = duration::parse, requires = "devices")]
    pub(crate) device_cert_ttl: Duration,
    /// Record tier changes and refused reports in this hash-chained log
    /// [default with --devices: DATA_DIR/device-decisions.log].
    #[arg(long, value_name = "FILE", requires = "devices")]
    pub(crate) device_decision_log: Option<PathBuf>,
    /// A workload (SPIFFE ID) that may follow every device's state, such as a
    /// `zt gateway`'s SVID (repeatable). No one else may.
    #[arg(long = "device-state-reader", value_name = "SPIFFE_ID", requires = "devices")]
    pub(crate) device_state_readers: Vec<String>,
}

impl DeviceArgs {
    fn settings(
        self,
        data_dir: &std::path::Path,
        trust_domain: &TrustDomain,
    ) -> anyhow::Result<Option<zt_server::devices::DeviceSettings>> {
        let Some(addr) = self.devices else {
            return Ok(None);
        };
        let state_readers = self
            .device_state_readers
            .iter()
            .map(|id| {
                let parsed = zt_identity::SpiffeId::parse(id)
                    .map_err(|e| anyhow::anyhow!("--device-state-reader {id}: {e}"))?;
                if parsed.trust_domain() != trust_domain {
                    anyhow::bail!("--device-state-reader {id}: not in the trust domain {trust_domain}");
                }
                if parsed.is_device() {
                    anyhow::bail!("--device-state-reader {id}: a device may not read device states");
                }
                Ok(parsed.to_string())
            })
            .collect::<anyhow::Result<_>>()?;
        let policy = self
            .device_policy
            .as_deref()
            .map(|path| {
                zt_device::compliance::Policy::load(path).map_err(|e| anyhow::anyhow!("--device-policy {e}"))
            })
            .transpose()?;
        let log_path = match self.device_decision_log {
            Some(path) => path,
            None => {
                zt_fs::private_dir(data_dir).map_err(|e| anyhow::anyhow!("--data-dir {e}"))?;
                data_dir.join("device-decisions.log")
            }
        };
        let log = zt_audit::Writer::open(&log_path)
            .map_err(|e| anyhow::anyhow!("--device-decision-log {}: {e}", log_path.display()))?;
        Ok(Some(zt_server::devices::DeviceSettings {
            addr,
            policy,
            policy_path: self.device_policy,
            cert_ttl: self.device_cert_ttl,
            decision_log: Some(log),
            state_readers,
        }))
    }
}

/// The OpenID Provider: people sign in, clients get tokens.
#[derive(Args)]
pub(crate) struct IdpArgs {
    /// Serve the OpenID Provider (HTTPS) on this address.
    #[arg(long = "idp", value_name = "ADDR")]
    pub(crate) idp: Option<std::net::SocketAddr>,
    /// The issuer URL clients see [default: https://localhost:PORT of --idp].
    #[arg(long, requires = "idp")]
    pub(crate) idp_issuer: Option<String>,
    /// Serve this certificate chain (PEM) instead of one from the trust domain's CA.
    #[arg(long, requires_all = ["idp", "idp_key"])]
    pub(crate) idp_cert: Option<PathBuf>,
    /// The private key (PEM) of --idp-cert.
    #[arg(long, requires_all = ["idp", "idp_cert"])]
    pub(crate) idp_key: Option<PathBuf>,
    /// Lifetime of access tokens (at most 1h).
    #[arg(long, default_value = "15m", value_parser = duration::parse, requires = "idp")]
    pub(crate) idp_access_ttl: Duration,
    /// Absolute lifetime of a sign-in session, which no refresh token outlives (at most 24h).
    #[arg(long, default_value = "4h", value_parser = duration::parse, requires = "idp")]
    pub(crate) idp_session_ttl: Duration,
    /// How long a spent refresh token may be retried (a lost response) before
    /// its reuse revokes the family (at most 60s).
    #[arg(long, default_value = "10s", value_parser = duration::parse, requires = "idp")]
    pub(crate) idp_refresh_grace: Duration,
    /// Let people sign in with a password (a weaker factor than a passkey: amr "pwd").
    #[arg(long, requires = "idp")]
    pub(crate) idp_passwords: bool,
    /// Only authenticator models with this AAGUID may register a passkey
    /// (repeatable; default: any).
    #[arg(long = "idp-aaguid", value_name = "UUID", requires = "idp")]
    pub(crate) idp_aaguids: Vec<String>,
    /// A network zone for the `zone` claim: NAME=CIDR[,CIDR…] (repeatable; first match wins).
    #[arg(long = "idp-zone", value_name = "NAME=CIDRS", value_parser = parse_zone, requires = "idp")]
    pub(crate) idp_zones: Vec<zt_idp::Zone>,
    /// Also trust these CA certificates (PEM) for clients' back-channel logout
    /// URIs, besides the trust domain's own CA.
    #[arg(long, value_name = "FILE", requires = "idp")]
    pub(crate) idp_backchannel_ca: Option<PathBuf>,
    /// Record authentication events in this hash-chained decision log
    /// [default with --idp: DATA_DIR/idp-decisions.log].
    #[arg(long)]
    pub(crate) decision_log: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) checkpoints: CheckpointArgs,
}

/// `NAME=CIDR[,CIDR…]`.
fn parse_zone(text: &str) -> Result<zt_idp::Zone, String> {
    let (name, blocks) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=CIDR[,CIDR…]"))?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("{name:?}: a zone name is letters, digits, '-' and '_'"));
    }
    let blocks = blocks
        .split(',')
        .map(zt_policy::matching::IpBlock::parse)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(zt_idp::Zone {
        name: name.to_owned(),
        blocks,
    })
}

impl IdpArgs {
    /// The provider's settings, if `--idp` is given; errors name the flag.
    fn settings(
        self,
        trust_domain: &TrustDomain,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Option<zt_server::IdpSettings>> {
        let Some(addr) = self.idp else {
            if self.decision_log.is_some() {
                anyhow::bail!("--decision-log records the OpenID Provider's events: it needs --idp");
            }
            return Ok(None);
        };
        let issuer = self
            .idp_issuer
            .unwrap_or_else(|| format!("https://localhost:{}", addr.port()));
        let certificate = match (&self.idp_cert, &self.idp_key) {
            (Some(cert), Some(key)) => {
                let read = |path: &PathBuf, flag: &str| {
                    std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))
                };
                let chain = zt_identity::x509::certificates_from_pem(&read(cert, "--idp-cert")?)
                    .map_err(|e| anyhow::anyhow!("--idp-cert {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    anyhow::bail!("--idp-cert {}: no certificate in the file", cert.display());
                }
                let key_der = zt_identity::x509::private_key_from_pem(&read(key, "--idp-key")?)
                    .map_err(|e| anyhow::anyhow!("--idp-key {}: {e}", key.display()))?;
                Some(zt_server::server_tls::ServerCertificate::Given {
                    chain,
                    key: std::sync::Arc::new(key_der),
                })
            }
            _ => None,
        };
        let backchannel_ca = match &self.idp_backchannel_ca {
            None => Vec::new(),
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--idp-backchannel-ca {}: {e}", path.display()))?;
                let roots = zt_identity::x509::certificates_from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("--idp-backchannel-ca {}: {e}", path.display()))?;
                if roots.is_empty() {
                    anyhow::bail!(
                        "--idp-backchannel-ca {}: no certificate in the file",
                        path.display()
                    );
                }
                roots
            }
        };
        let log_path = match self.decision_log {
            Some(path) => path,
            None => {
                zt_fs::private_dir(data_dir).map_err(|e| anyhow::anyhow!("--data-dir {e}"))?;
                data_dir.join("idp-decisions.log")
            }
        };
        let decision_log = super::audit::open_log(&log_path, &self.checkpoints)?;
        Ok(Some(zt_server::IdpSettings {
            addr,
            config: zt_idp::IdpConfig {
                issuer,
                trust_domain: trust_domain.clone(),
                access_ttl: self.idp_access_ttl,
                session_ttl: self.idp_session_ttl,
                refresh_grace: self.idp_refresh_grace,
                passwords: self.idp_passwords,
                zones: self.idp_zones,
                aaguids: self.idp_aaguids,
                backchannel_ca,
            },
            certificate,
            decision_log: Some(decision_log),
        }))
    }
}

/// Runs the control plane until SIGINT or SIGTERM.
pub fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    super::init_logging("info,sqlx=warn");
    let idp = args.idp.settings(&args.trust_domain, &args.data_dir)?;
    let devices = args.devices.settings(&args.data_dir, &args.trust_domain)?;
    let config = ServerConfig {
        data_dir: args.data_dir,
        datastore: args.datastore,
        trust_domain: args.trust_domain,
        http_addr: args.http,
        ca_ttl: args.ca_ttl,
        ca_key_type: args.ca_key_type,
        agent_addr: args.agent_api,
        agent_ttl: args.agent_ttl,
        pdp: if args.pdp.is_empty() {
            None
        } else {
            let access = super::pdp::access(args.allow_policy_writes, args.api_token_file.as_deref())?;
            let (policies, _) = super::pdp::load(&args.pdp, "--pdp", args.rego_limits)?;
            Some(zt_pdp::Pdp::new(policies).with_access(access))
        },
        idp,
        devices,
    };
    super::runtime()?.block_on(zt_server::run(config, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}
