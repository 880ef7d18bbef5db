//! X.509-SVIDs: the SPIFFE checks of the X509-SVID specification on top of
//! RFC 5280 path validation to a trust bundle.

use std::fmt;

use rustls_pki_types::TrustAnchor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::bundle::BundleSource;
use crate::jwk::PublicKey;
use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Longest certificate chain accepted (leaf included).
pub const MAX_CHAIN_LEN: usize = 8;

/// Why a certificate is not a valid X.509-SVID, or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X509SvidError {
    /// No certificate at all.
    #[error("no certificate")]
    EmptyChain,
    /// More certificates than [`MAX_CHAIN_LEN`].
    #[error("chain has {len} certificates, the limit is {MAX_CHAIN_LEN}")]
    ChainTooLong {
        /// Length found.
        len: usize,
    },
    /// DER that does not parse as a certificate.
    #[error("certificate {index} of the chain is not valid DER X.509")]
    Malformed {
        /// Position in the chain (0 is the leaf).
        index: usize,
    },
    /// No URI SAN.
    #[error("certificate has no URI SAN, so no SPIFFE ID")]
    MissingUriSan,
    /// Several URI SANs.
    #[error("certificate has {count} URI SANs, an SVID has exactly one")]
    MultipleUriSans {
        /// How many.
        count: usize,
    },
    /// The URI SAN is not a SPIFFE ID.
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The SAN.
        uri: String,
        /// Why.
        reason: SpiffeIdError,
    },
    /// A leaf whose ID is the trust domain's own.
    #[error("leaf SPIFFE ID {0} has no path")]
    LeafIdHasNoPath(SpiffeId),
    /// A leaf with `cA=true`.
    #[error("leaf certificate has the CA flag set")]
    LeafIsCa,
    /// A leaf allowed to sign certificates.
    #[error("leaf certificate has key usage keyCertSign")]
    LeafHasKeyCertSign,
    /// A leaf allowed to sign CRLs.
    #[error("leaf certificate has key usage cRLSign")]
    LeafHasCrlSign,
    /// A leaf without digitalSignature.
    #[error("leaf certificate lacks key usage digitalSignature")]
    LeafLacksDigitalSignature,
    /// A leaf without a key usage extension.
    #[error("leaf certificate has no key usage extension")]
    MissingKeyUsage,
    /// A leaf whose key usage is not critical.
    #[error("leaf certificate key usage extension is not critical")]
    KeyUsageNotCritical,
    /// A leaf EKU without both TLS purposes.
    #[error("leaf extended key usage must include both serverAuth and clientAuth")]
    IncompleteExtendedKeyUsage,
    /// An issuer that is not a CA.
    #[error("signing certificate {index} does not have the CA flag set")]
    SigningCertNotCa {
        /// Position in the chain.
        index: usize,
    },
    /// An issuer without a key usage extension.
    #[error("signing certificate {index} has no key usage extension")]
    SigningCertMissingKeyUsage {
        /// Position in the chain.
        index: usize,
    },
    /// An issuer whose key usage is not critical.
    #[error("signing certificate {index} key usage extension is not critical")]
    SigningCertKeyUsageNotCritical {
        /// Position in the chain.
        index: usize,
    },
    /// An issuer without keyCertSign.
    #[error("signing certificate {index} lacks key usage keyCertSign")]
    SigningCertLacksKeyCertSign {
        /// Position in the chain.
        index: usize,
    },
    /// An issuer whose SPIFFE ID has a path.
    #[error("signing certificate {index} has SPIFFE ID {id}, which must have no path")]
    SigningCertIdHasPath {
        /// Position in the chain.
        index: usize,
        /// Its ID.
        id: SpiffeId,
    },
    /// No bundle for the SVID's trust domain.
    #[error("no trust bundle for trust domain {0}")]
    NoBundle(TrustDomain),
    /// Past notAfter.
    #[error("certificate expired at {not_after} (unix), now is {now}")]
    Expired {
        /// notAfter, unix seconds.
        not_after: u64,
        /// Validation time.
        now: u64,
    },
    /// Before notBefore.
    #[error("certificate is not valid before {not_before} (unix), now is {now}")]
    NotYetValid {
        /// notBefore, unix seconds.
        not_before: u64,
        /// Validation time.
        now: u64,
    },
    /// The chain does not lead to an authority of the trust domain.
    #[error("certificate is not signed by an authority of trust domain {0}")]
    UntrustedIssuer(TrustDomain),
    /// The certificate's extended key usage does not permit the use asked for.
    #[error("certificate extended key usage does not permit {0}")]
    WrongPurpose(Purpose),
    /// The serial is on the revocation list.
    #[error("certificate has been revoked")]
    Revoked,
    /// A public key that cannot be written as a JWK (neither EC P-256/384/521 nor RSA).
    #[error("unsupported public key: {0}")]
    UnsupportedPublicKey(String),
    /// Any other RFC 5280 path validation failure.
    #[error("path validation failed: {0}")]
    PathValidation(String),
}

/// What the verified certificate will be used for: an SVID of a TLS client, or of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The peer is a TLS client (`id-kp-clientAuth`).
    ClientAuth,
    /// The peer is a TLS server (`id-kp-serverAuth`).
    ServerAuth,
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::ClientAuth => "clientAuth",
            Purpose::ServerAuth => "serverAuth",
        })
    }
}

/// An X.509-SVID that passed path validation and every SPIFFE check.
///
/// Only [`verify_x509_svid`] makes one, so holding one is proof of verification.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedX509Svid {
    spiffe_id: SpiffeId,
    serial: Vec<u8>,
    not_before: u64,
    not_after: u64,
}

impl VerifiedX509Svid {
    /// The verified SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The leaf's serial number, big-endian.
    pub fn serial(&self) -> &[u8] {
        &self.serial
    }

    /// notBefore of the leaf, unix seconds.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// notAfter of the leaf, unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
}

impl fmt::Debug for VerifiedX509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VerifiedX509Svid({}, serial {})",
            self.spiffe_id,
            hex_compact(&self.serial)
        )
    }
}

/// What a certificate says about itself, before anything is verified: for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The single URI SAN parsed as a SPIFFE ID, or why it could not be.
    pub spiffe_id: Result<SpiffeId, X509SvidError>,
    /// Serial number, big-endian.
    pub serial: Vec<u8>,
    /// notBefore, unix seconds.
    pub not_before: u64,
    /// notAfter, unix seconds.
    pub not_after: u64,
    /// Whether `cA=true`.
    pub is_ca: bool,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<std::net::IpAddr>,
}

/// Verifies an X.509-SVID chain (leaf first, then intermediates) against the bundle
/// of the leaf's trust domain, at time `now`, for `purpose`.
pub fn verify_x509_svid(
    chain: &[CertificateDer<'_>],
    bundles: &impl BundleSource,
    now: UnixTime,
    purpose: Purpose,
) -> Result<VerifiedX509Svid, X509SvidError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(X509SvidError::EmptyChain)?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(X509SvidError::ChainTooLong { len: chain.len() });
    }
    let leaf = parse(leaf_der, 0)?;
    let spiffe_id = check_leaf(&leaf)?;
    for (i, der) in intermediates.iter().enumerate() {
        check_signing(&parse(der, i + 1)?, i + 1)?;
    }

    let td = spiffe_id.trust_domain();
    let bundle = bundles
        .bundle_for(td)
        .ok_or_else(|| X509SvidError::NoBundle(td.clone()))?;
    let anchors = bundle
        .x509_authorities()
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .collect::<Vec<TrustAnchor<'_>>>();
    if anchors.is_empty() {
        return Err(X509SvidError::NoBundle(td.clone()));
    }

    let end_entity = EndEntityCert::try_from(leaf_der).map_err(|_| X509SvidError::Malformed { index: 0 })?;
    let usage = match purpose {
        Purpose::ClientAuth => KeyUsage::client_auth(),
        Purpose::ServerAuth => KeyUsage::server_auth(),
    };
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| path_error(e, td, purpose, now))?;

    Ok(VerifiedX509Svid {
        spiffe_id,
        serial: leaf.raw_serial().to_vec(),
        not_before: to_unix(leaf.validity().not_before.timestamp()),
        not_after: to_unix(leaf.validity().not_after.timestamp()),
    })
}

/// A certificate's RFC 8705 thumbprint, `x5t#S256`: the SHA-256 of its DER,
/// base64url without padding (what a token bound to it names in `cnf`).
pub fn x5t_s256(der: &[u8]) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Reads what a certificate says about itself, without verifying anything.
pub fn summarize(der: &CertificateDer<'_>) -> Result<CertificateSummary, X509SvidError> {
    let cert = parse(der, 0)?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    for name in sans(&cert) {
        match name {
            GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
            GeneralName::IPAddress(bytes) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                    ip_addresses.push(v4.into());
                } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                    ip_addresses.push(v6.into());
                }
            }
            _ => {}
        }
    }
    Ok(CertificateSummary {
        spiffe_id: spiffe_id_of(&cert),
        serial: cert.raw_serial().to_vec(),
        not_before: to_unix(cert.validity().not_before.timestamp()),
        not_after: to_unix(cert.validity().not_after.timestamp()),
        is_ca: cert.is_ca(),
        dns_names,
        ip_addresses,
    })
}

/// Checks that `der` is a signing certificate fit for a bundle: `cA=true`, keyCertSign,
/// and no path in its SPIFFE ID if it has one.
pub fn check_signing_certificate(der: &CertificateDer<'_>) -> Result<(), X509SvidError> {
    check_signing(&parse(der, 0)?, 0)
}

/// The trust domain of an authority's SPIFFE ID, if it carries one.
pub fn authority_trust_domain(der: &CertificateDer<'_>) -> Result<Option<TrustDomain>, X509SvidError> {
    let cert = parse(der, 0)?;
    match spiffe_id_of(&cert) {
        Ok(id) => Ok(Some(id.trust_domain().clone())),
        Err(X509SvidError::MissingUriSan) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The public key of a certificate, as a JWK key.
pub fn authority_public_key(der: &CertificateDer<'_>) -> Result<PublicKey, X509SvidError> {
    let cert = parse(der, 0)?;
    PublicKey::from_spki(cert.public_key()).map_err(|e| X509SvidError::UnsupportedPublicKey(e.to_string()))
}

/// The subjectKeyIdentifier of a certificate, if it has one: what the
/// authorityKeyIdentifier of everything it signs (SVIDs, CRLs) must carry.
pub fn subject_key_identifier(der: &CertificateDer<'_>) -> Result<Option<Vec<u8>>, X509SvidError> {
    let cert = parse(der, 0)?;
    Ok(cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ski) => Some(ski.0.to_vec()),
            _ => None,
        }))
}

/// Splits concatenated DER certificates (how the SPIFFE Workload API carries chains
/// and bundles), each checked to parse. Bounded by the input's size: callers bound that.
pub fn split_der_certificates(mut bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, X509SvidError> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let Ok((rest, _)) = X509Certificate::from_der(bytes) else {
            return Err(X509SvidError::Malformed { index: certs.len() });
        };
        let (cert, _) = bytes.split_at(bytes.len() - rest.len());
        certs.push(CertificateDer::from(cert.to_vec()));
        bytes = rest;
    }
    Ok(certs)
}

/// The serials (big-endian bytes) a certificate revocation list revokes, once its
/// signature verifies with the key of the authority in `authorities` that issued
/// it. A list from anyone else, or one that does not parse, is an error: revocation
/// lists only ever add revocations, so refusing one never lets a certificate in.
pub fn crl_revoked_serials(
    crl_der: &[u8],
    authorities: &[CertificateDer<'_>],
) -> Result<Vec<Vec<u8>>, String> {
    use x509_parser::revocation_list::CertificateRevocationList;
    let crl = match CertificateRevocationList::from_der(crl_der) {
        Ok(([], crl)) => crl,
        _ => return Err("not a DER certificate revocation list".into()),
    };
    let signed_by_an_authority = authorities
        .iter()
        .filter_map(|der| X509Certificate::from_der(der.as_ref()).ok().map(|(_, cert)| cert))
        .any(|cert| cert.subject() == crl.issuer() && crl.verify_signature(cert.public_key()).is_ok());
    if !signed_by_an_authority {
        return Err(format!(
            "no authority in the bundle issued and signed the CRL of {}",
            crl.issuer()
        ));
    }
    Ok(crl
        .iter_revoked_certificates()
        .map(|revoked| revoked.raw_serial().to_vec())
        .collect())
}

/// The raw subjectPublicKey of a certificate: an uncompressed point for EC keys,
/// a PKCS#1 RSAPublicKey for RSA; compare it with a private key's public half.
pub fn subject_public_key(der: &CertificateDer<'_>) -> Result<Vec<u8>, X509SvidError> {
    Ok(parse(der, 0)?.public_key().subject_public_key.data.to_vec())
}

/// Reads every certificate of a PEM document, in order.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

/// Reads the private key of a PEM document (PKCS#8, SEC1 or PKCS#1).
pub fn private_key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".to_owned(),
        other => pem_error(other),
    })
}

/// A PEM reading error in words, without the decoder's internal names.
pub fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a PEM block has no END line".into(),
        Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        Error::Base64Decode(_) => "a PEM block is not valid base64".into(),
        Error::NoItemsFound => "no PEM block found".into(),
        other => other.to_string(),
    }
}

/// A certificate as a PEM block.
pub fn to_pem(der: &CertificateDer<'_>) -> String {
    pem_encode("CERTIFICATE", der)
}

/// DER bytes as a PEM document with `label` (`CERTIFICATE`, `PRIVATE KEY`, …).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A DNS SAN: dot-separated labels of letters, digits and hyphens (a leading `*.` allowed).
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Lowercase hex without separators: how zt prints and stores serials (`:`
/// separators are accepted as input) and how digests appear in selectors (`unix:sha256:…`) and XFCC (`Hash=…`).
pub fn hex_compact(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse<'a>(der: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>, X509SvidError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(X509SvidError::Malformed { index }),
    }
}

fn sans<'a>(cert: &'a X509Certificate<'_>) -> impl Iterator<Item = &'a GeneralName<'a>> {
    cert.extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san.general_names.iter()),
            _ => None,
        })
        .flatten()
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let uris = sans(cert)
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect::<Vec<_>>();
    match uris.as_slice() {
        [] => Err(X509SvidError::MissingUriSan),
        [uri] => SpiffeId::parse(uri).map_err(|reason| X509SvidError::InvalidSpiffeId {
            uri: (*uri).to_owned(),
            reason,
        }),
        more => Err(X509SvidError::MultipleUriSans { count: more.len() }),
    }
}

/// The leaf rules of X509-SVID §3.1, §4.1, §4.3, §4.4 and §5.2.
fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, X509SvidError> {
    let id = spiffe_id_of(cert)?;
    if id.is_root() {
        return Err(X509SvidError::LeafIdHasNoPath(id));
    }
    if cert.is_ca() {
        return Err(X509SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|_| X509SvidError::Malformed { index: 0 })?
        .ok_or(X509SvidError::MissingKeyUsage)?;
    if ku.value.key_cert_sign() {
        return Err(X509SvidError::LeafHasKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(X509SvidError::LeafHasCrlSign);
    }
    if !ku.critical {
        return Err(X509SvidError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(X509SvidError::LeafLacksDigitalSignature);
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|_| X509SvidError::Malformed { index: 0 })?;
    if eku.is_some_and(|eku| !(eku.value.server_auth && eku.value.client_auth)) {
        return Err(X509SvidError::IncompleteExtendedKeyUsage);
    }
    Ok(id)
}

/// The signing-certificate rules of X509-SVID §3.2, §4.1 and §4.3.
fn check_signing(cert: &X509Certificate<'_>, index: usize) -> Result<(), X509SvidError> {
    if !cert.is_ca() {
        return Err(X509SvidError::SigningCertNotCa { index });
    }
    let ku = cert
        .key_usage()
        .map_err(|_| X509SvidError::Malformed { index })?
        .ok_or(X509SvidError::SigningCertMissingKeyUsage { index })?;
    if !ku.value.key_cert_sign() {
        return Err(X509SvidError::SigningCertLacksKeyCertSign { index });
    }
    if !ku.critical {
        return Err(X509SvidError::SigningCertKeyUsageNotCritical { index });
    }
    match spiffe_id_of(cert) {
        Ok(id) if !id.is_root() => Err(X509SvidError::SigningCertIdHasPath { index, id }),
        // A signing certificate SHOULD be an SVID but need not be.
        Ok(_) | Err(X509SvidError::MissingUriSan) => Ok(()),
        Err(e) => Err(e),
    }
}

fn path_error(e: webpki::Error, td: &TrustDomain, purpose: Purpose, now: UnixTime) -> X509SvidError {
    match e {
        webpki::Error::CertExpired { not_after, .. } => X509SvidError::Expired {
            not_after: not_after.as_secs(),
            now: now.as_secs(),
        },
        webpki::Error::CertNotValidYet { not_before, .. } => X509SvidError::NotYetValid {
            not_before: not_before.as_secs(),
            now: now.as_secs(),
        },
        // An issuer name that matches an authority whose key did not sign it is
        // as untrusted as an unknown issuer.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            X509SvidError::UntrustedIssuer(td.clone())
        }
        webpki::Error::CertRevoked => X509SvidError::Revoked,
        webpki::Error::RequiredEkuNotFoundContext(_) => X509SvidError::WrongPurpose(purpose),
        other => X509SvidError::PathValidation(format!("{other:?}")),
    }
}

fn to_unix(timestamp: i64) -> u64 {
    u64::try_from(timestamp).unwrap_or(0)
}
