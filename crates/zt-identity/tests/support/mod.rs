//! Fixtures shared by the integration tests: certificates built with rcgen, the
//! validation time, and checks of error messages.
//!
//! A [`CertSpec`] describes one certificate; its constructors give the values of a
//! valid X.509-SVID leaf or signing certificate, and each test changes only the
//! field it is about.

#![allow(dead_code, reason = "each test crate uses a different part of the fixtures")]

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::Value;
use time::OffsetDateTime;

/// The validation time of every test, unix seconds.
pub const NOW: u64 = 1_800_000_000;

/// Any failure of a test or of a fixture.
pub type Error = Box<dyn std::error::Error>;

/// What every test returns.
pub type TestResult = Result<(), Error>;

/// [`NOW`] as webpki wants it.
pub fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW))
}

/// Everything a test may want to vary about a certificate.
#[derive(Debug, Clone)]
pub struct CertSpec {
    pub common_name: &'static str,
    pub uri_sans: Vec<&'static str>,
    pub dns_sans: Vec<&'static str>,
    pub is_ca: IsCa,
    pub key_usages: Vec<KeyUsagePurpose>,
    pub extended_key_usages: Vec<ExtendedKeyUsagePurpose>,
    pub custom_extensions: Vec<CustomExtension>,
    pub serial: Vec<u8>,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
}

impl CertSpec {
    /// A valid X.509-SVID leaf: `spiffe://example.org/workload`.
    pub fn leaf() -> Self {
        Self {
            common_name: "workload",
            uri_sans: vec!["spiffe://example.org/workload"],
            dns_sans: Vec::new(),
            is_ca: IsCa::ExplicitNoCa,
            key_usages: vec![KeyUsagePurpose::DigitalSignature],
            extended_key_usages: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            custom_extensions: Vec::new(),
            serial: vec![0x42, 0x01, 0x02, 0x03],
            not_before: NOW - 10,
            not_after: NOW + 3600,
        }
    }

    /// A valid signing certificate whose SPIFFE ID is `uri` (e.g. `spiffe://example.org`).
    pub fn ca(uri: &'static str, common_name: &'static str) -> Self {
        Self {
            common_name,
            uri_sans: vec![uri],
            dns_sans: Vec::new(),
            is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
            key_usages: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            extended_key_usages: Vec::new(),
            custom_extensions: Vec::new(),
            serial: vec![0x01],
            not_before: NOW - 86_400,
            not_after: NOW + 30 * 86_400,
        }
    }

    fn params(&self) -> Result<CertificateParams, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, self.common_name);
        let uris = self.uri_sans.iter().map(|u| Ok(SanType::URI((*u).try_into()?)));
        let dns = self
            .dns_sans
            .iter()
            .map(|d| Ok(SanType::DnsName((*d).try_into()?)));
        params.subject_alt_names = uris.chain(dns).collect::<Result<_, rcgen::Error>>()?;
        params.is_ca = self.is_ca;
        params.key_usages = self.key_usages.clone();
        params.extended_key_usages = self.extended_key_usages.clone();
        params.custom_extensions = self.custom_extensions.clone();
        params.serial_number = Some(SerialNumber::from_slice(&self.serial));
        params.not_before = datetime(self.not_before)?;
        params.not_after = datetime(self.not_after)?;
        Ok(params)
    }
}

fn datetime(unix: u64) -> Result<OffsetDateTime, Error> {
    Ok(OffsetDateTime::from_unix_timestamp(i64::try_from(unix)?)?)
}

/// A certificate authority: its certificate and the issuer that signs with its key.
pub struct Ca {
    pub cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A self-signed root CA whose SPIFFE ID, and common name, is `trust_domain_id`.
    pub fn root(trust_domain_id: &'static str) -> Result<Self, Error> {
        Self::self_signed(CertSpec::ca(trust_domain_id, trust_domain_id))
    }

    /// A self-signed certificate made from `spec`.
    pub fn self_signed(spec: CertSpec) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = spec.params()?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self {
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// A certificate made from `spec`, with a fresh key, signed by this CA.
    pub fn sign(&self, spec: &CertSpec) -> Result<CertificateDer<'static>, Error> {
        Ok(self.sign_with_key(spec)?.0)
    }

    /// An intermediate made from `spec`, signed by this CA, that can sign in turn.
    pub fn intermediate(&self, spec: CertSpec) -> Result<Self, Error> {
        let (cert, key) = self.sign_with_key(&spec)?;
        Ok(Self {
            cert,
            issuer: Issuer::new(spec.params()?, key),
        })
    }

    fn sign_with_key(&self, spec: &CertSpec) -> Result<(CertificateDer<'static>, KeyPair), Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = spec.params()?.signed_by(&key, &self.issuer)?.der().clone();
        Ok((cert, key))
    }
}

/// Asserts that an error message reads like one: a single line, no trailing period,
/// and lowercase first unless it starts with an acronym (`URI`, `SPIFFE`).
pub fn assert_error_style(error: &dyn std::error::Error) {
    let text = error.to_string();
    assert!(!text.is_empty(), "empty error message");
    assert!(!text.contains('\n'), "multi-line error message: {text:?}");
    assert!(!text.ends_with('.'), "error message ends with a period: {text:?}");
    let first_word = text.split(' ').next().unwrap_or_default();
    let is_acronym = first_word.len() > 1 && first_word.chars().all(|c| c.is_ascii_uppercase());
    let starts_lowercase = !text.starts_with(|c: char| c.is_uppercase());
    assert!(
        starts_lowercase || is_acronym,
        "error message does not start lowercase: {text:?}"
    );
}

/// A JSON object with the members of `patch` set, or removed where `patch` has `null`.
pub fn patched(mut base: Value, patch: Value) -> Value {
    if let (Some(base), Value::Object(patch)) = (base.as_object_mut(), patch) {
        for (name, value) in patch {
            if value.is_null() {
                base.remove(&name);
            } else {
                base.insert(name, value);
            }
        }
    }
    base
}
