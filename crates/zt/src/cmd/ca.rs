//! `zt ca`: a local CA kept in a directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use zt_ca::store::{self, PRIVATE_MODE, PUBLIC_MODE};
use zt_ca::{Authority, SvidRequest};
use zt_identity::x509;

use super::{now, timestamp};
use crate::{BundleFormat, CaBundle, CaInit, CaIssue, CaIssueJwt, duration};

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
