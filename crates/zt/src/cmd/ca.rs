//! `zt ca`: a local CA kept in a directory.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use anyhow::Context as _;
use zt_ca::KeyType;
use zt_ca::store::{self, PRIVATE_MODE, PUBLIC_MODE};
use zt_ca::{Authority, SvidRequest};
use zt_identity::x509;
use zt_identity::{SpiffeId, TrustDomain};

use super::args::{AdminArgs, BundleFormat};
use super::{now, timestamp};
use crate::duration;

#[derive(Subcommand)]
pub(crate) enum CaCommand {
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

#[derive(Args)]
pub(crate) struct CaInit {
    /// Trust domain name, e.g. example.org.
    #[arg(long, value_parser = TrustDomain::parse)]
    pub(crate) trust_domain: TrustDomain,
    /// Directory to keep the CA in (created with mode 0700).
    #[arg(long)]
    pub(crate) dir: PathBuf,
    /// Key algorithm of the CA: ec-p256, ec-p384 or rsa-2048.
    #[arg(long, default_value = "ec-p256")]
    pub(crate) key_type: KeyType,
    /// Lifetime of the CA certificate.
    #[arg(long, default_value = "30d", value_parser = duration::parse)]
    pub(crate) ttl: Duration,
    /// Replace a CA that already exists in the directory.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args)]
pub(crate) struct CaIssue {
    /// Directory of the CA (from `zt ca init`).
    #[arg(long = "ca")]
    pub(crate) ca_dir: PathBuf,
    /// SPIFFE ID of the workload; must be in the CA's trust domain and have a path.
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: SpiffeId,
    /// DNS name to add as a SAN (repeatable).
    #[arg(long = "dns")]
    pub(crate) dns_names: Vec<String>,
    /// IP address to add as a SAN (repeatable).
    #[arg(long = "ip")]
    pub(crate) ip_addresses: Vec<IpAddr>,
    /// Lifetime of the SVID.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub(crate) ttl: Duration,
    /// Output prefix: writes PREFIX.crt and PREFIX.key.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

#[derive(Args)]
pub(crate) struct CaIssueJwt {
    /// Directory of the CA.
    #[arg(long = "ca")]
    pub(crate) ca_dir: PathBuf,
    /// SPIFFE ID of the subject.
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: SpiffeId,
    /// Audience (repeatable; one is strongly recommended).
    #[arg(long = "audience", required = true)]
    pub(crate) audiences: Vec<String>,
    /// Lifetime of the token.
    #[arg(long, default_value = "5m", value_parser = duration::parse)]
    pub(crate) ttl: Duration,
}

#[derive(Args)]
pub(crate) struct CaBundle {
    /// Directory of the CA.
    #[arg(long = "ca")]
    pub(crate) ca_dir: PathBuf,
    /// pem (X.509 authorities only) or jwks (the SPIFFE bundle format, with JWT keys).
    #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
    pub(crate) format: BundleFormat,
    /// Write to this file instead of standard output.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

/// `zt ca init`.
pub fn init(args: CaInit) -> anyhow::Result<ExitCode> {
    let authority = Authority::generate(args.trust_domain, args.key_type, args.ttl, now())
        .with_context(|| format!("--ttl {}", duration::format(args.ttl.as_secs())))?;
    store::save(&args.dir, &authority, args.force)?;
    println!(
        "created CA for trust domain {} in {} ({}, expires {})",
        authority.trust_domain(),
        args.dir.display(),
        args.key_type,
        timestamp(authority.not_after())
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt ca issue`.
pub fn issue(args: CaIssue) -> anyhow::Result<ExitCode> {
    let authority = load(&args.ca_dir)?;
    let request = SvidRequest {
        spiffe_id: args.spiffe_id,
        dns_names: args.dns_names,
        ip_addresses: args.ip_addresses,
        ttl: args.ttl,
    };
    let svid = authority
        .issue_x509_svid(&request, now())
        .with_context(|| issue_context(&request))?;
    let cert_path = with_suffix(&args.out, ".crt");
    let key_path = with_suffix(&args.out, ".key");
    let chain_pem: String = svid.chain.iter().map(|c| x509::to_pem(c)).collect();
    store::write_atomically(&[
        (cert_path.clone(), chain_pem.into_bytes(), PUBLIC_MODE),
        (key_path.clone(), svid.private_key_pem.into_bytes(), PRIVATE_MODE),
    ])?;
    println!(
        "issued {} (serial {}, expires {}): {} {}",
        request.spiffe_id,
        x509::hex_compact(&svid.serial),
        timestamp(svid.not_after),
        cert_path.display(),
        key_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt ca issue-jwt`.
pub fn issue_jwt(args: CaIssueJwt) -> anyhow::Result<ExitCode> {
    let authority = load(&args.ca_dir)?;
    let token = authority
        .mint_jwt_svid(&args.spiffe_id, &args.audiences, args.ttl, now())
        .with_context(|| {
            format!(
                "--spiffe-id {} --ttl {}",
                args.spiffe_id,
                duration::format(args.ttl.as_secs())
            )
        })?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `zt ca bundle`.
pub fn bundle(args: CaBundle) -> anyhow::Result<ExitCode> {
    let authority = load(&args.ca_dir)?;
    let mut bundle = authority.bundle()?;
    // The CA's notBefore only grows when the CA is replaced: a sequence that changes with the content.
    bundle.set_sequence(x509::summarize(authority.certificate())?.not_before);
    bundle.set_refresh_hint(300);
    let text = match args.format {
        BundleFormat::Pem => bundle.to_pem(),
        BundleFormat::Jwks => bundle.to_jwks()? + "\n",
    };
    match args.out {
        Some(path) => store::write_atomically(&[(path, text.into_bytes(), PUBLIC_MODE)])?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn load(dir: &Path) -> anyhow::Result<Authority> {
    store::load(dir).with_context(|| format!("--ca {}", dir.display()))
}

fn issue_context(request: &SvidRequest) -> String {
    format!(
        "--spiffe-id {} --ttl {}",
        request.spiffe_id,
        duration::format(request.ttl.as_secs())
    )
}

/// `PREFIX` + `suffix`, keeping any extension-like dots in the prefix.
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(prefix.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}
