//! `zt svid`: inspect and verify SVIDs.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rustls_pki_types::UnixTime;
use serde_json::json;
use zt_identity::TrustDomain;
use zt_identity::x509::{self, CertificateSummary};
use zt_identity::{Purpose, verify_x509_svid};

use super::args::Output;
use super::{load_bundle, now, read_input, timestamp};
use crate::duration;

#[derive(Subcommand)]
pub(crate) enum SvidCommand {
    /// Show an X.509-SVID's SPIFFE ID, serial and validity, and whether it verifies
    /// against a bundle (exit 1 if it does not).
    Inspect(SvidInspect),
    /// Verify a JWT-SVID against a bundle and an audience (exit 1 if it does not verify).
    VerifyJwt(SvidVerifyJwt),
}

/// Where the trust bundle comes from.
#[derive(Args)]
pub(crate) struct BundleArgs {
    /// Trust bundle, PEM or SPIFFE JWKS.
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// Trust domain of the bundle, when its authorities carry no SPIFFE ID.
    #[arg(long, value_parser = TrustDomain::parse, requires = "bundle")]
    pub(crate) trust_domain: Option<TrustDomain>,
}

#[derive(Args)]
pub(crate) struct SvidInspect {
    /// PEM file: the leaf first, then its chain.
    pub(crate) file: PathBuf,
    #[command(flatten)]
    pub(crate) bundle: BundleArgs,
    /// Private key file to check against the certificate.
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Args)]
pub(crate) struct SvidVerifyJwt {
    /// The token, or `-` to read it from standard input.
    pub(crate) token: String,
    #[command(flatten)]
    pub(crate) bundle: BundleArgs,
    /// The audience this verifier identifies with.
    #[arg(long)]
    pub(crate) audience: String,
    /// The longest lifetime accepted, from iat (or now) to exp: a correctly
    /// signed token that lives longer is refused.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub(crate) max_lifetime: Duration,
}

/// `zt svid inspect`.
pub fn inspect(args: SvidInspect) -> anyhow::Result<ExitCode> {
    let file = args.file.display().to_string();
    let chain = x509::certificates_from_pem(&read_input("", &args.file)?)
        .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let leaf = chain.first().context("no certificate")?;
    let summary = x509::summarize(leaf).with_context(|| file.clone())?;

    let key_matches = match &args.key {
        None => None,
        Some(path) => {
            let key = x509::private_key_from_pem(&read_input("--key", path)?)
                .map_err(|e| anyhow::anyhow!("--key {}: {e}", path.display()))?;
            let public = zt_ca::public_key_of(&key).with_context(|| format!("--key {}", path.display()))?;
            Some(public == x509::subject_public_key(leaf)?)
        }
    };

    let now = now();
    let bundle = load_bundle(&args.bundle)?;
    // Both purposes: an SVID is meant to serve as client and server alike.
    let verification = bundle.as_ref().map(|bundle| {
        let at = UnixTime::since_unix_epoch(Duration::from_secs(now));
        verify_x509_svid(&chain, bundle, at, Purpose::ClientAuth)
            .and_then(|_| verify_x509_svid(&chain, bundle, at, Purpose::ServerAuth))
    });

    match args.output {
        Output::Text => print_text(&summary, chain.len(), now, key_matches, &verification, &args),
        Output::Json => {
            let doc = json!({
                "spiffe_id": summary.spiffe_id.as_ref().map(ToString::to_string).ok(),
                "spiffe_id_error": summary.spiffe_id.as_ref().err().map(ToString::to_string),
                "serial": x509::hex_compact(&summary.serial),
                "not_before": timestamp(summary.not_before),
                "not_after": timestamp(summary.not_after),
                "is_ca": summary.is_ca,
                "dns_names": summary.dns_names,
                "ip_addresses": summary.ip_addresses,
                "chain_length": chain.len(),
                "key_matches": key_matches,
                "verified": verification.as_ref().map(Result::is_ok),
                "verification_error": verification.as_ref().and_then(|v| v.as_ref().err()).map(ToString::to_string),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
    }
    let failed = key_matches == Some(false) || matches!(verification, Some(Err(_)));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(
    summary: &CertificateSummary,
    chain_len: usize,
    now: u64,
    key_matches: Option<bool>,
    verification: &Option<Result<zt_identity::VerifiedX509Svid, zt_identity::X509SvidError>>,
    args: &SvidInspect,
) {
    match &summary.spiffe_id {
        Ok(id) => println!("SPIFFE ID:    {id}"),
        Err(e) => println!("SPIFFE ID:    none ({e})"),
    }
    println!("Serial:       {}", x509::hex_compact(&summary.serial));
    println!("Not before:   {}", timestamp(summary.not_before));
    let remaining = match summary.not_after.checked_sub(now) {
        Some(left) if left > 0 => format!("expires in {}", crate::duration::format(left)),
        _ => "expired".to_owned(),
    };
    println!("Not after:    {} ({remaining})", timestamp(summary.not_after));
    if summary.is_ca {
        println!("CA:           yes");
    }
    if !summary.dns_names.is_empty() {
        println!("DNS names:    {}", summary.dns_names.join(", "));
    }
    if !summary.ip_addresses.is_empty() {
        let ips: Vec<String> = summary.ip_addresses.iter().map(ToString::to_string).collect();
        println!("IP addresses: {}", ips.join(", "));
    }
    println!("Chain:        {chain_len} certificate(s)");
    if let (Some(matches), Some(path)) = (key_matches, &args.key) {
        let verdict = if matches {
            "matches the certificate"
        } else {
            "does NOT match the certificate"
        };
        println!("Key:          {} {verdict}", path.display());
    }
    match (verification, &args.bundle.bundle) {
        (Some(Ok(svid)), Some(path)) => println!(
            "Verified:     yes, {} against {} (client and server use)",
            svid.spiffe_id(),
            path.display()
        ),
        (Some(Err(e)), Some(path)) => println!("Verified:     no, against {}: {e}", path.display()),
        _ => println!("Verified:     not checked (no --bundle)"),
    }
}

/// `zt svid verify-jwt`.
pub fn verify_jwt(args: SvidVerifyJwt) -> anyhow::Result<ExitCode> {
    let token = if args.token == "-" {
        let mut token = String::new();
        std::io::stdin()
            .take(zt_identity::jwt::MAX_TOKEN_LEN as u64 + 1)
            .read_to_string(&mut token)
            .context("standard input")?;
        token.trim().to_owned()
    } else {
        args.token.clone()
    };
    let bundle = load_bundle(&args.bundle)?.context("--bundle is required")?;
    let max_lifetime = args.max_lifetime.as_secs();
    match zt_identity::jwt::verify_jwt_svid_within(&token, &bundle, &args.audience, now(), max_lifetime) {
        Ok(svid) => {
            println!(
                "valid JWT-SVID for {} (audience {:?}, expires {})",
                svid.spiffe_id(),
                svid.audience(),
                timestamp(svid.expiry())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("zt: invalid JWT-SVID: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
