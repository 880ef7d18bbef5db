//! `zt bench`: figures for BENCHMARKS.md, measured on the machine it runs on.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rustls_pki_types::UnixTime;
use zt_ca::{Authority, DEFAULT_CA_TTL, DEFAULT_JWT_SVID_TTL, DEFAULT_X509_SVID_TTL, KeyType, SvidRequest};
use zt_identity::{Purpose, SpiffeId, TrustDomain, verify_jwt_svid, verify_x509_svid};

use super::now;
use crate::BenchIdentity;

/// `zt bench identity`: the identity operations on every hot path.
pub fn identity(args: BenchIdentity) -> anyhow::Result<ExitCode> {
    let n = args.iterations.max(1);
    let now = now();
    let ca = Authority::generate(
        TrustDomain::parse("example.org")?,
        KeyType::EcP256,
        DEFAULT_CA_TTL,
        now,
    )?;
    let bundle = ca.bundle()?;
    let id = SpiffeId::parse("spiffe://example.org/ns/production/sa/payment-service")?;
    let request = SvidRequest {
        spiffe_id: id.clone(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![],
        ttl: DEFAULT_X509_SVID_TTL,
    };
    let svid = ca.issue_x509_svid(&request, now)?;
    let audience = vec!["spiffe://example.org/billing".to_owned()];
    let token = ca.mint_jwt_svid(&id, &audience, DEFAULT_JWT_SVID_TTL, now)?;
    let at = UnixTime::since_unix_epoch(Duration::from_secs(now));

    println!(
        "{:<28} {:>10} {:>10} {:>14}",
        "operation", "p50", "p99", "ops/s (1 core)"
    );
    report(
        "parse SPIFFE ID",
        &measure(n, || {
            black_box(
                SpiffeId::parse(black_box("spiffe://example.org/ns/production/sa/payment-service")).is_ok(),
            );
        }),
    );
    report(
        "verify X.509-SVID",
        &measure(n, || {
            black_box(verify_x509_svid(&svid.chain, &bundle, at, Purpose::ClientAuth).is_ok());
        }),
    );
    report(
        "verify JWT-SVID (ES256)",
        &measure(n, || {
            black_box(verify_jwt_svid(&token, &bundle, &audience[0], now).is_ok());
        }),
    );
    report(
        "mint JWT-SVID (ES256)",
        &measure(n, || {
            black_box(
                ca.mint_jwt_svid(&id, &audience, DEFAULT_JWT_SVID_TTL, now)
                    .is_ok(),
            );
        }),
    );
    report(
        "issue X.509-SVID (+keygen)",
        &measure(n.min(2000), || {
            black_box(ca.issue_x509_svid(&request, now).is_ok());
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Times each of `n` calls of `op`, sorted.
fn measure(n: usize, mut op: impl FnMut()) -> Vec<Duration> {
    for _ in 0..n.min(100) {
        op(); // warm-up
    }
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples
}

fn report(name: &str, sorted: &[Duration]) {
    let at = |q: f64| {
        sorted
            .get(((sorted.len() - 1) as f64 * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let total: Duration = sorted.iter().sum();
    let ops = sorted.len() as f64 / total.as_secs_f64().max(f64::MIN_POSITIVE);
    println!(
        "{name:<28} {:>10} {:>10} {:>14.0}",
        fmt(at(0.5)),
        fmt(at(0.99)),
        ops
    );
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}
