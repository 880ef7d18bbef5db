//! The signing authority: a CA key that mints X.509-SVIDs and a key that mints
//! JWT-SVIDs, for one trust domain.
//!
//! [`Authority`] is the in-memory CA; [`store`] keeps one in a directory on disk
//! with every write atomic.

#![forbid(unsafe_code)]

pub mod store;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use zt_identity::x509::{self, X509SvidError};
use zt_identity::{Bundle, BundleError, JwtSigner, JwtSvidError, SpiffeId, TrustDomain};

/// Default lifetime of an X.509-SVID: one hour.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default lifetime of a JWT-SVID: five minutes.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// Default lifetime of a local development CA: thirty days.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far notBefore is set in the past, to tolerate clock skew between peers.
pub const BACKDATE: Duration = Duration::from_secs(10);

/// What went wrong creating, loading or using an authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A TTL of zero.
    #[error("ttl must be greater than zero")]
    ZeroTtl,
    /// An SVID that would outlive the CA that signs it.
    #[error(
        "ttl {ttl_secs}s would end at {}, after the CA expires at {}",
        rfc3339(*requested),
        rfc3339(*ca_not_after)
    )]
    TtlBeyondCa {
        /// The TTL asked for, seconds.
        ttl_secs: u64,
        /// The notAfter it would give.
        requested: u64,
        /// The CA's notAfter.
        ca_not_after: u64,
    },
    /// The CA itself has expired.
    #[error("the CA expired at {}", rfc3339(*.0))]
    CaExpired(u64),
    /// A leaf SVID for a trust domain's own ID.
    #[error("SPIFFE ID {0} has no path: leaf SVIDs need one")]
    RootId(SpiffeId),
    /// A leaf SVID for another trust domain.
    #[error("SPIFFE ID {id} is not in this CA's trust domain {trust_domain}")]
    ForeignId {
        /// The ID asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// An invalid DNS SAN.
    #[error("DNS name {0:?} is not a valid DNS SAN")]
    InvalidDnsName(String),
    /// The CA certificate is not a usable SPIFFE signing certificate.
    #[error("CA certificate: {0}")]
    CaCertificate(#[from] X509SvidError),
    /// The CA key does not belong to the CA certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// Key generation, parsing or signing failed in rcgen.
    #[error("{0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM document that is not what it should be.
    #[error("{what}: {reason}")]
    Pem {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A certificate signing request that does not parse or whose signature does not verify.
    #[error("certificate signing request: {0}")]
    Csr(String),
    /// A time that X.509 cannot encode.
    #[error("time {0} (unix) is out of range")]
    TimeOutOfRange(u64),
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The JWT key.
    #[error("JWT signing key: {0}")]
    Jwt(#[from] JwtSvidError),
    /// Building the bundle.
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
}

/// Key algorithms a CA can be created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    #[default]
    EcP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures.
    Rsa2048,
}

impl KeyType {
    /// Every key type, for help texts.
    pub const ALL: [KeyType; 3] = [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
        }
    }

    fn generate(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            KeyType::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let names = Self::ALL.map(KeyType::name).join(", ");
            format!("unknown key type {s:?} (expected one of {names})")
        })
    }
}

/// What an X.509-SVID is issued for.
#[derive(Debug, Clone)]
pub struct SvidRequest {
    /// The identity; must be in the CA's trust domain and have a path.
    pub spiffe_id: SpiffeId,
    /// DNS SANs, for peers that check host names.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Lifetime from now.
    pub ttl: Duration,
}

/// An X.509-SVID signed for a key its holder keeps.
#[derive(Debug, Clone)]
pub struct SignedSvid {
    /// Leaf first, then the chain up to (not including) the root of trust.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's serial number.
    pub serial: Vec<u8>,
    /// notAfter, unix seconds.
    pub not_after: u64,
}

/// Largest certificate signing request accepted, in bytes.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// A freshly minted X.509-SVID with its private key.
pub struct IssuedSvid {
    /// Leaf first, then the chain up to (not including) the root of trust.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 PEM.
    pub private_key_pem: String,
    /// The leaf's serial number.
    pub serial: Vec<u8>,
    /// notAfter, unix seconds.
    pub not_after: u64,
}

impl fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedSvid(serial {})", x509::hex_compact(&self.serial))
    }
}

/// A certificate authority for one trust domain.
pub struct Authority {
    trust_domain: TrustDomain,
    certificate: CertificateDer<'static>,
    not_after: u64,
    issuer: Issuer<'static, KeyPair>,
    jwt_key: KeyPair,
    jwt_signer: JwtSigner,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Authority({}, until {})", self.trust_domain, self.not_after)
    }
}

impl Authority {
    /// Creates a self-signed root CA for `trust_domain`, valid from `now` for `ttl`,
    /// and a fresh EC P-256 key for JWT-SVIDs.
    pub fn generate(
        trust_domain: TrustDomain,
        key_type: KeyType,
        ttl: Duration,
        now: u64,
    ) -> Result<Self, CaError> {
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain.name());
        params.distinguished_name.push(DnType::CommonName, "zt CA");
        params.subject_alt_names = vec![SanType::URI(trust_domain.id().to_string().try_into()?)];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        // Backdated for clock skew, but never by more than a tenth of the life, so
        // that short-lived authorities (tests) keep their rotation schedule.
        let backdate = BACKDATE.min(ttl / 10).as_secs();
        params.not_before = to_datetime(now.saturating_sub(backdate))?;
        params.not_after = to_datetime(now.saturating_add(ttl.as_secs()))?;
        let cert = params.self_signed(&key)?;
        let jwt_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::from_parts(cert.der().clone(), key, jwt_key)
    }

    /// Assembles an authority from its certificate, its key and the JWT key,
    /// checking that the certificate is a SPIFFE signing certificate and the key is its own.
    pub fn from_parts(
        certificate: CertificateDer<'static>,
        key: KeyPair,
        jwt_key: KeyPair,
    ) -> Result<Self, CaError> {
        x509::check_signing_certificate(&certificate)?;
        let trust_domain = x509::authority_trust_domain(&certificate)?.ok_or(X509SvidError::MissingUriSan)?;
        if x509::subject_public_key(&certificate)? != key.public_key_raw() {
            return Err(CaError::KeyMismatch);
        }
        let not_after = x509::summarize(&certificate)?.not_after;
        let issuer = Issuer::from_ca_cert_der(&certificate, key)?;
        Ok(Self {
            trust_domain,
            certificate,
            not_after,
            issuer,
            jwt_signer: JwtSigner::from_pkcs8(jwt_key.serialized_der())?,
            jwt_key,
        })
    }

    /// Assembles an authority from PEM: the CA certificate, its PKCS#8 key and the JWT key.
    pub fn from_pem(ca_cert_pem: &str, ca_key_pem: &str, jwt_key_pem: &str) -> Result<Self, CaError> {
        let pem = |what| move |reason| CaError::Pem { what, reason };
        let cert = single_certificate(ca_cert_pem.as_bytes()).map_err(pem("CA certificate"))?;
        let key = key_pair_from_pem(ca_key_pem.as_bytes()).map_err(pem("CA key"))?;
        let jwt_key = key_pair_from_pem(jwt_key_pem.as_bytes()).map_err(pem("JWT key"))?;
        Self::from_parts(cert, key, jwt_key)
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> String {
        x509::to_pem(&self.certificate)
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The CA's notAfter, unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }

    /// The CA's signing key, PKCS#8 PEM, for storing.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The trust bundle: this CA certificate and the JWT key.
    pub fn bundle(&self) -> Result<Bundle, CaError> {
        let mut bundle = Bundle::new(self.trust_domain.clone());
        bundle.add_x509_authority(self.certificate.clone())?;
        bundle.add_jwt_authority(self.jwt_signer.kid(), self.jwt_signer.public_key().clone())?;
        Ok(bundle)
    }

    /// The JWT-SVID signing key, PKCS#8 PEM, for storing.
    pub fn jwt_key_pem(&self) -> String {
        self.jwt_key.serialize_pem()
    }

    /// The key ID of the JWT-SVID signing key.
    pub fn jwt_key_id(&self) -> &str {
        self.jwt_signer.kid()
    }

    /// Issues an X.509-SVID with a fresh EC P-256 key.
    pub fn issue_x509_svid(&self, request: &SvidRequest, now: u64) -> Result<IssuedSvid, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let signed = self.sign_leaf(&key, request, now, now.saturating_sub(BACKDATE.as_secs()))?;
        Ok(IssuedSvid {
            chain: signed.chain,
            private_key_pem: key.serialize_pem(),
            serial: signed.serial,
            not_after: signed.not_after,
        })
    }

    /// Signs an X.509-SVID for the key of a PKCS#10 request (DER). The request's
    /// signature must verify (proof of possession); its names are ignored: the
    /// SVID carries only what `request` says.
    pub fn sign_x509_svid_csr(
        &self,
        csr_der: &[u8],
        request: &SvidRequest,
        now: u64,
    ) -> Result<SignedSvid, CaError> {
        self.sign_x509_svid_csr_not_before(csr_der, request, now, 0)
    }

    /// As [`Authority::sign_x509_svid_csr`], with notBefore no earlier than
    /// `earliest` (at most `now`): an SVID signed just after its SPIFFE ID was
    /// revoked must not be backdated to before the revocation's cutoff, or it would
    /// count as revoked itself.
    pub fn sign_x509_svid_csr_not_before(
        &self,
        csr_der: &[u8],
        request: &SvidRequest,
        now: u64,
        earliest: u64,
    ) -> Result<SignedSvid, CaError> {
        let csr = parse_csr(csr_der)?;
        let not_before = now.saturating_sub(BACKDATE.as_secs()).max(earliest.min(now));
        self.sign_leaf(&csr.public_key, request, now, not_before)
    }

    /// Signs an X.509-SVID for a public key (SubjectPublicKeyInfo, DER) whose
    /// possession the caller has already proven (a device key: at enrollment,
    /// then by a signed request for each certificate).
    pub fn sign_x509_svid_for_key(
        &self,
        spki_der: &[u8],
        request: &SvidRequest,
        now: u64,
    ) -> Result<SignedSvid, CaError> {
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der)?;
        self.sign_leaf(&public_key, request, now, now.saturating_sub(BACKDATE.as_secs()))
    }

    /// The X.509-SVID profile: one URI SAN, `cA=false`, digitalSignature, server and client auth.
    fn sign_leaf(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        request: &SvidRequest,
        now: u64,
        not_before: u64,
    ) -> Result<SignedSvid, CaError> {
        let not_after = self.check_request(&request.spiffe_id, request.ttl, now)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "zt");
        let mut sans = vec![SanType::URI(request.spiffe_id.to_string().try_into()?)];
        for dns in &request.dns_names {
            let invalid = || CaError::InvalidDnsName(dns.clone());
            if !x509::is_dns_name(dns) {
                return Err(invalid());
            }
            sans.push(SanType::DnsName(dns.clone().try_into().map_err(|_| invalid())?));
        }
        sans.extend(request.ip_addresses.iter().copied().map(SanType::IpAddress));
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        params.not_before = to_datetime(not_before)?;
        params.not_after = to_datetime(not_after)?;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(SignedSvid {
            chain: vec![cert.der().clone()],
            serial: serial.to_bytes(),
            not_after,
        })
    }

    /// A certificate revocation list (DER) signed by this authority, listing
    /// `serials` (big-endian bytes, each with when it was revoked), issued at `now`
    /// with number `number`. Its nextUpdate is this authority's notAfter: holders
    /// get a fresh list pushed whenever revocations change, not by polling.
    pub fn sign_crl(&self, serials: &[(Vec<u8>, u64)], number: u64, now: u64) -> Result<Vec<u8>, CaError> {
        let revoked_certs = serials
            .iter()
            .map(|(serial, revoked_at)| {
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: to_datetime(*revoked_at)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CaError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: to_datetime(now)?,
            next_update: to_datetime(self.not_after.max(now + 1))?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: match x509::subject_key_identifier(&self.certificate)? {
                Some(ski) => rcgen::KeyIdMethod::PreSpecified(ski),
                None => rcgen::KeyIdMethod::Sha256,
            },
        };
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// The key that signs this authority's JWTs (JWT-SVIDs, and the OpenID
    /// Provider's tokens).
    pub fn jwt_signer(&self) -> &zt_identity::JwtSigner {
        &self.jwt_signer
    }

    /// Mints a JWT-SVID for `spiffe_id` and `audience`, valid for `ttl` from `now`.
    pub fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        now: u64,
    ) -> Result<String, CaError> {
        let exp = self.check_request(spiffe_id, ttl, now)?;
        Ok(zt_identity::mint_jwt_svid(
            &self.jwt_signer,
            spiffe_id,
            audience,
            now,
            exp,
        )?)
    }

    /// Checks an SVID request against this CA and returns its notAfter.
    fn check_request(&self, id: &SpiffeId, ttl: Duration, now: u64) -> Result<u64, CaError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(CaError::ForeignId {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        if id.is_root() {
            return Err(CaError::RootId(id.clone()));
        }
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        if now >= self.not_after {
            return Err(CaError::CaExpired(self.not_after));
        }
        let requested = now.saturating_add(ttl.as_secs());
        if requested > self.not_after {
            return Err(CaError::TtlBeyondCa {
                ttl_secs: ttl.as_secs(),
                requested,
                ca_not_after: self.not_after,
            });
        }
        Ok(requested)
    }
}

/// A unix time as RFC 3339 UTC, e.g. `2026-11-22T13:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{unix} (unix)"))
}

/// A fresh EC P-256 key (PKCS#8 PEM) and a PKCS#10 request for it (DER), as an
/// agent sends to have an SVID signed: the request proves possession of the key.
pub fn key_and_csr() -> Result<(String, Vec<u8>), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// Checks a PKCS#10 request (DER): size, syntax and proof of possession.
pub fn check_csr(csr_der: &[u8]) -> Result<(), CaError> {
    parse_csr(csr_der).map(drop)
}

fn parse_csr(csr_der: &[u8]) -> Result<rcgen::CertificateSigningRequestParams, CaError> {
    if csr_der.len() > MAX_CSR_BYTES {
        return Err(CaError::Csr(format!(
            "{} bytes, the limit is {MAX_CSR_BYTES}",
            csr_der.len()
        )));
    }
    let der = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
    rcgen::CertificateSigningRequestParams::from_der(&der).map_err(|e| CaError::Csr(e.to_string()))
}

/// The one certificate of a PEM document.
pub fn single_certificate(pem: &[u8]) -> Result<CertificateDer<'static>, String> {
    let certs = x509::certificates_from_pem(pem)?;
    let count = certs.len();
    <[_; 1]>::try_from(certs)
        .map(|[cert]| cert)
        .map_err(|_| format!("expected one certificate, found {count}"))
}

/// A private key (PKCS#8, SEC1 or PKCS#1 PEM) that can sign.
pub fn key_pair_from_pem(pem: &[u8]) -> Result<KeyPair, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not PEM text".to_owned())?;
    x509::private_key_from_pem(pem)?;
    KeyPair::from_pem(text).map_err(|e| format!("unusable private key: {e}"))
}

/// The raw public key of a private key, comparable with
/// [`zt_identity::x509::subject_public_key`] to tell whether a key belongs to a certificate.
pub fn public_key_of(key: &rustls_pki_types::PrivateKeyDer<'_>) -> Result<Vec<u8>, CaError> {
    Ok(KeyPair::try_from(key)?.public_key_raw().to_vec())
}

/// A random positive 128-bit serial (RFC 5280 §4.1.2.2: positive, at most 20 octets).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40; // positive, and no leading zero octet
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_datetime(unix: u64) -> Result<OffsetDateTime, CaError> {
    i64::try_from(unix)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or(CaError::TimeOutOfRange(unix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::UnixTime;
    use zt_identity::{Purpose, verify_jwt_svid, verify_x509_svid};

    const NOW: u64 = 1_800_000_000;

    fn ca() -> Result<Authority, CaError> {
        Authority::generate(
            TrustDomain::parse("example.org").map_err(|_| CaError::ZeroTtl)?,
            KeyType::EcP256,
            DEFAULT_CA_TTL,
            NOW,
        )
    }

    fn request(id: &str, ttl: Duration) -> Result<SvidRequest, Box<dyn std::error::Error>> {
        Ok(SvidRequest {
            spiffe_id: SpiffeId::parse(id)?,
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse()?],
            ttl,
        })
    }

    #[test]
    fn crls_list_the_serials_and_only_their_issuer_is_believed() -> Result<(), Box<dyn std::error::Error>> {
        let other = ca()?;
        let ca = ca()?;
        let serials = vec![(vec![0x41, 0x02, 0x03], NOW - 5), (vec![0x7f, 0xff], NOW - 1)];
        let crl = ca.sign_crl(&serials, 7, NOW)?;
        let listed = x509::crl_revoked_serials(&crl, &[ca.certificate().clone()])?;
        assert_eq!(listed, vec![vec![0x41, 0x02, 0x03], vec![0x7f, 0xff]]);
        // The same list is not believed on the word of another authority.
        let refused = x509::crl_revoked_serials(&crl, &[other.certificate().clone()]);
        assert!(refused.is_err(), "{refused:?}");
        assert!(x509::crl_revoked_serials(&crl[..crl.len() - 1], &[ca.certificate().clone()]).is_err());
        // An empty list is a valid list.
        assert!(
            x509::crl_revoked_serials(&ca.sign_crl(&[], 8, NOW)?, &[ca.certificate().clone()])?.is_empty()
        );
        Ok(())
    }

    #[test]
    fn issued_svid_verifies_for_both_purposes() -> Result<(), Box<dyn std::error::Error>> {
        let ca = ca()?;
        let svid = ca.issue_x509_svid(
            &request("spiffe://example.org/service-one", DEFAULT_X509_SVID_TTL)?,
            NOW,
        )?;
        let bundle = ca.bundle()?;
        for purpose in [Purpose::ClientAuth, Purpose::ServerAuth] {
            let verified = verify_x509_svid(
                &svid.chain,
                &bundle,
                UnixTime::since_unix_epoch(Duration::from_secs(NOW + 1)),
                purpose,
            )?;
            assert_eq!(
                verified.spiffe_id().to_string(),
                "spiffe://example.org/service-one"
            );
            assert_eq!(verified.not_after(), NOW + 3600);
            assert_eq!(verified.not_before(), NOW - BACKDATE.as_secs());
            assert_eq!(verified.serial(), svid.serial.as_slice());
        }
        let summary = x509::summarize(&svid.chain[0])?;
        assert_eq!(summary.dns_names, ["localhost"]);
        assert_eq!(summary.ip_addresses, ["127.0.0.1".parse::<IpAddr>()?]);
        Ok(())
    }

    #[test]
    fn every_key_type_signs_verifiable_svids() -> Result<(), Box<dyn std::error::Error>> {
        for key_type in KeyType::ALL {
            let ca = Authority::generate(TrustDomain::parse("example.org")?, key_type, DEFAULT_CA_TTL, NOW)?;
            let svid = ca.issue_x509_svid(&request("spiffe://example.org/a", DEFAULT_X509_SVID_TTL)?, NOW)?;
            let now = UnixTime::since_unix_epoch(Duration::from_secs(NOW));
            verify_x509_svid(&svid.chain, &ca.bundle()?, now, Purpose::ServerAuth)?;
        }
        Ok(())
    }

    #[test]
    fn refuses_bad_requests() -> Result<(), Box<dyn std::error::Error>> {
        let ca = ca()?;
        let err = |id: &str, ttl: Duration| ca.issue_x509_svid(&request(id, ttl).ok()?, NOW).err();
        assert!(matches!(
            err("spiffe://example.org/a", Duration::ZERO),
            Some(CaError::ZeroTtl)
        ));
        assert!(matches!(
            err("spiffe://example.org/a", DEFAULT_CA_TTL + Duration::from_secs(1)),
            Some(CaError::TtlBeyondCa { .. })
        ));
        assert!(matches!(
            err("spiffe://other.org/a", DEFAULT_X509_SVID_TTL),
            Some(CaError::ForeignId { .. })
        ));
        assert!(matches!(
            err("spiffe://example.org", DEFAULT_X509_SVID_TTL),
            Some(CaError::RootId(_))
        ));
        let mut bad_dns = request("spiffe://example.org/a", DEFAULT_X509_SVID_TTL)?;
        bad_dns.dns_names = vec!["bad name".into()];
        assert!(matches!(
            ca.issue_x509_svid(&bad_dns, NOW),
            Err(CaError::InvalidDnsName(_))
        ));
        assert!(matches!(
            ca.issue_x509_svid(
                &request("spiffe://example.org/a", DEFAULT_X509_SVID_TTL)?,
                NOW + DEFAULT_CA_TTL.as_secs()
            ),
            Err(CaError::CaExpired(_))
        ));
        Ok(())
    }

    #[test]
    fn jwt_svid_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let ca = ca()?;
        let id = SpiffeId::parse("spiffe://example.org/client")?;
        let token = ca.mint_jwt_svid(
            &id,
            &["spiffe://example.org/server".into()],
            DEFAULT_JWT_SVID_TTL,
            NOW,
        )?;
        let bundle = ca.bundle()?;
        let verified = verify_jwt_svid(&token, &bundle, "spiffe://example.org/server", NOW + 1)?;
        assert_eq!(verified.spiffe_id(), &id);
        assert_eq!(verified.expiry(), NOW + 300);
        Ok(())
    }

    #[test]
    fn signs_csrs_for_the_requested_identity_only() -> Result<(), Box<dyn std::error::Error>> {
        let ca = ca()?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // The CSR asks for another name; the SVID carries the one the CA decided.
        let csr = CertificateParams::new(vec!["evil.example".to_owned()])?.serialize_request(&key)?;
        let request = request("spiffe://example.org/workload", DEFAULT_X509_SVID_TTL)?;
        let signed = ca.sign_x509_svid_csr(csr.der(), &request, NOW)?;
        let summary = x509::summarize(&signed.chain[0])?;
        assert_eq!(summary.spiffe_id?.to_string(), "spiffe://example.org/workload");
        assert_eq!(summary.dns_names, ["localhost"]);
        assert_eq!(x509::subject_public_key(&signed.chain[0])?, key.public_key_raw());
        // A tampered request fails its signature check.
        let mut tampered = csr.der().to_vec();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            ca.sign_x509_svid_csr(&tampered, &request, NOW),
            Err(CaError::Csr(_))
        ));
        assert!(matches!(
            ca.sign_x509_svid_csr(b"garbage", &request, NOW),
            Err(CaError::Csr(_))
        ));
        Ok(())
    }

    #[test]
    fn mismatched_key_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let ca = ca()?;
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let jwt = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let result = Authority::from_parts(ca.certificate().clone(), other, jwt);
        assert!(matches!(result, Err(CaError::KeyMismatch)), "{result:?}");
        Ok(())
    }

    #[test]
    fn dns_names() {
        use x509::is_dns_name;
        for ok in ["localhost", "a.b-c.example", "*.example.org", "x1"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a",
            "a-",
            "a b",
            "a_b",
            "*",
            "a.*.b",
            &"a".repeat(64),
        ] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }
}
