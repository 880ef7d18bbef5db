//! Credential lifetimes: the X.509-SVID and JWT-SVID TTLs registration entries
//! give, longest and median, those over the limits short-lived credentials are
//! held to (1 h for X.509-SVIDs, 15 min for JWT-SVIDs), and the lifetime of
//! each CA certificate in the trust bundle.

use serde::Serialize;

/// X.509-SVID TTLs above this (seconds) are flagged.
pub const X509_TTL_LIMIT: u64 = 3600;
/// JWT-SVID TTLs above this (seconds) are flagged.
pub const JWT_TTL_LIMIT: u64 = 900;

/// What one registration entry issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The entry's SPIFFE ID.
    pub spiffe_id: String,
    /// X.509-SVID TTL, seconds, if known.
    pub x509_ttl: Option<u64>,
    /// JWT-SVID TTL, seconds, if known.
    pub jwt_ttl: Option<u64>,
}

/// One CA certificate's validity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaLifetime {
    /// Its subject.
    pub subject: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// notAfter − notBefore, seconds.
    pub lifetime_secs: i64,
}

/// The longest and the median of one kind of TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// How many entries gave one.
    pub entries: usize,
    /// The longest, seconds.
    pub longest_secs: u64,
    /// The entry that gives it (the first, if several).
    pub longest: String,
    /// The median, seconds (the mean of the middle two, rounded down, for an
    /// even count).
    pub median_secs: u64,
    /// The limit above which a TTL is flagged, seconds.
    pub limit_secs: u64,
    /// The entries above the limit: SPIFFE ID and TTL, longest first.
    pub over_limit: Vec<(String, u64)>,
}

/// Every lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lifetimes {
    /// Registration entries (or workloads with TTLs) looked at.
    pub entries: usize,
    /// X.509-SVID TTLs; `null` when no entry gave one.
    pub x509: Option<Stats>,
    /// JWT-SVID TTLs; `null` when no entry gave one.
    pub jwt: Option<Stats>,
    /// The trust bundle's CA certificates (empty when no bundle was read).
    pub ca: Vec<CaLifetime>,
}

/// The lifetimes of `credentials` and `ca`.
pub fn compute(credentials: &[Credential], ca: Vec<CaLifetime>) -> Lifetimes {
    let x509: Vec<(&str, u64)> = credentials
        .iter()
        .filter_map(|c| Some((c.spiffe_id.as_str(), c.x509_ttl?)))
        .collect();
    let jwt: Vec<(&str, u64)> = credentials
        .iter()
        .filter_map(|c| Some((c.spiffe_id.as_str(), c.jwt_ttl?)))
        .collect();
    Lifetimes {
        entries: credentials.len(),
        x509: stats(&x509, X509_TTL_LIMIT),
        jwt: stats(&jwt, JWT_TTL_LIMIT),
        ca,
    }
}

fn stats(ttls: &[(&str, u64)], limit: u64) -> Option<Stats> {
    let mut sorted: Vec<u64> = ttls.iter().map(|(_, ttl)| *ttl).collect();
    sorted.sort_unstable();
    let n = sorted.len();
    let median = match n {
        0 => return None,
        _ if n % 2 == 1 => sorted.get(n / 2).copied().unwrap_or_default(),
        _ => {
            let (a, b) = (sorted.get(n / 2 - 1), sorted.get(n / 2));
            (a.copied().unwrap_or_default() + b.copied().unwrap_or_default()) / 2
        }
    };
    let (longest, longest_secs) = ttls.iter().fold(
        ("", 0),
        |best, &(id, ttl)| if ttl > best.1 { (id, ttl) } else { best },
    );
    let mut over_limit: Vec<(String, u64)> = ttls
        .iter()
        .filter(|(_, ttl)| *ttl > limit)
        .map(|(id, ttl)| ((*id).to_owned(), *ttl))
        .collect();
    over_limit.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Some(Stats {
        entries: n,
        longest_secs,
        longest: longest.to_owned(),
        median_secs: median,
        limit_secs: limit,
        over_limit,
    })
}

/// Why a bundle's CA certificates could not be read: which one (from 0), and
/// how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// A block is not PEM.
    #[error("certificate {index}: not PEM: {reason}")]
    NotPem {
        /// Its position.
        index: usize,
        /// The parser's words.
        reason: String,
    },
    /// A certificate block is not X.509.
    #[error("certificate {index}: not X.509: {reason}")]
    NotX509 {
        /// Its position.
        index: usize,
        /// The parser's words.
        reason: String,
    },
}

/// The CA certificates of a PEM bundle, with their validity; the error names
/// the certificate that did not parse.
pub fn ca_lifetimes(pem: &[u8]) -> Result<Vec<CaLifetime>, BundleError> {
    let mut found = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| BundleError::NotPem {
            index: i,
            reason: e.to_string(),
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block.parse_x509().map_err(|e| BundleError::NotX509 {
            index: i,
            reason: e.to_string(),
        })?;
        let validity = cert.validity();
        let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
        found.push(CaLifetime {
            subject: cert.subject().to_string(),
            not_before,
            not_after,
            lifetime_secs: not_after - not_before,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, x509: u64, jwt: Option<u64>) -> Credential {
        Credential {
            spiffe_id: id.into(),
            x509_ttl: Some(x509),
            jwt_ttl: jwt,
        }
    }

    #[test]
    fn longest_median_and_over_the_limits() {
        let credentials = [
            entry("spiffe://td/a", 3600, Some(300)),
            entry("spiffe://td/b", 86_400, Some(3600)),
            entry("spiffe://td/c", 1800, None),
            entry("spiffe://td/d", 7200, Some(900)),
        ];
        let lifetimes = compute(&credentials, Vec::new());
        assert_eq!(lifetimes.entries, 4);
        let x509 = lifetimes.x509.unwrap_or_else(|| unreachable!());
        assert_eq!(
            (x509.longest_secs, x509.longest.as_str()),
            (86_400, "spiffe://td/b")
        );
        // 1800, 3600, 7200, 86400: the mean of the middle two.
        assert_eq!(x509.median_secs, 5400);
        assert_eq!(
            x509.over_limit,
            vec![
                ("spiffe://td/b".to_owned(), 86_400),
                ("spiffe://td/d".to_owned(), 7200)
            ],
            "exactly 1 h is not over"
        );
        let jwt = lifetimes.jwt.unwrap_or_else(|| unreachable!());
        assert_eq!((jwt.entries, jwt.median_secs, jwt.longest_secs), (3, 900, 3600));
        assert_eq!(jwt.over_limit, vec![("spiffe://td/b".to_owned(), 3600)]);
        assert_eq!(compute(&[], Vec::new()).x509, None);
    }

    #[test]
    fn a_bundle_gives_each_cas_validity() {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|_| unreachable!());
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before =
            time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap_or_else(|_| unreachable!());
        params.not_after = params.not_before + time::Duration::days(365);
        let key = rcgen::KeyPair::generate().unwrap_or_else(|_| unreachable!());
        let pem = params.self_signed(&key).unwrap_or_else(|_| unreachable!()).pem();
        let found = ca_lifetimes(format!("{pem}{pem}").as_bytes()).unwrap_or_default();
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].not_before, found[0].lifetime_secs),
            (1_700_000_000, 365 * 86_400)
        );
        assert_eq!(ca_lifetimes(b"").map(|v| v.len()), Ok(0));
        assert!(
            ca_lifetimes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
