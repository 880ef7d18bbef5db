//! What a device signs: posture reports, its enrollment and its certificate
//! requests — each a compact JWS (ES256) made with the device key, with its
//! own `typ` so that one kind can never be passed off as another.
//!
//! A posture report carries the device's ID, a sequence number that must
//! grow with every report, and when it was sent; the server refuses a report
//! whose number is not above the last one accepted (replayed or re-ordered),
//! that was sent outside a short window of its clock, or that holds facts
//! observed in the future.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zt_identity::jwk::{Curve, PublicKey};
use zt_identity::jwt::Jws;

use crate::facts::Facts;

/// `typ` of a posture report.
pub const REPORT_TYPE: &str = "zt-posture+jwt";
/// `typ` of an enrollment request.
pub const ENROLL_TYPE: &str = "zt-device-enroll+jwt";
/// `typ` of a certificate request (first issue after approval, and renewals).
pub const CERTIFICATE_TYPE: &str = "zt-device-certificate+jwt";
/// The largest signed document accepted.
pub const MAX_SIGNED_BYTES: usize = 64 * 1024;
/// The most facts one report may carry.
pub const MAX_FACTS: usize = 64;

/// DER prefix of a P-256 SubjectPublicKeyInfo, up to its 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a signed document was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignedError {
    /// Not a JWS of the right kind, or not a report.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was expected.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Larger than [`MAX_SIGNED_BYTES`].
    #[error("{what} is {len} bytes, over the limit of {MAX_SIGNED_BYTES}")]
    TooLarge {
        /// What was sent.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The signature is not the device key's.
    #[error("{0} is not signed by the device's key")]
    BadSignature(&'static str),
    /// The key is not an uncompressed P-256 SubjectPublicKeyInfo.
    #[error("the device key is not a P-256 public key")]
    UnsupportedKey,
    /// The device key could not sign.
    #[error("signing with the device key: {0}")]
    Signing(String),
}

/// A posture report, as the device sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The device's ID (the last segment of `spiffe://TD/device/ID`).
    pub device_id: String,
    /// Grows by at least one with every report the device sends.
    pub seq: u64,
    /// When it was sent, Unix milliseconds.
    pub sent_ms: u64,
    /// What was observed.
    pub facts: Facts,
    /// The names of facts taken from a `--facts-override` file rather than
    /// observed: refused unless the device was enrolled in test mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overridden: Vec<String>,
}

/// The public key of a P-256 SubjectPublicKeyInfo (DER).
pub fn p256_key(spki: &[u8]) -> Result<PublicKey, SignedError> {
    let point = spki
        .strip_prefix(P256_SPKI_PREFIX.as_slice())
        .ok_or(SignedError::UnsupportedKey)?;
    PublicKey::from_uncompressed_point(Curve::P256, point).map_err(|_| SignedError::UnsupportedKey)
}

/// A SubjectPublicKeyInfo as standard base64, as enrollment carries it.
pub fn spki_text(spki: &[u8]) -> String {
    STANDARD.encode(spki)
}

/// Signs `claims` as a compact ES256 JWS of type `typ`; `sign` is the
/// device key's ECDSA P-256 SHA-256, returning an ASN.1 DER signature.
pub fn sign(
    typ: &str,
    kid: &str,
    claims: &Value,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, SignedError> {
    let header = json!({ "alg": "ES256", "typ": typ, "kid": kid });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let der = sign(input.as_bytes()).map_err(SignedError::Signing)?;
    let raw = der_to_raw(&der).ok_or_else(|| SignedError::Signing("not an ECDSA P-256 signature".into()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// Decodes a signed document of type `typ` without checking its signature
/// (to find out which device it claims to come from).
pub fn decode(token: &str, typ: &'static str) -> Result<Jws, SignedError> {
    let what = what(typ);
    if token.len() > MAX_SIGNED_BYTES {
        return Err(SignedError::TooLarge {
            what,
            len: token.len(),
        });
    }
    let jws = Jws::decode_within(token, MAX_SIGNED_BYTES, Some(&[typ]), false).map_err(|e| {
        SignedError::Malformed {
            what,
            reason: e.to_string(),
        }
    })?;
    if jws.algorithm().name() != "ES256" {
        return Err(SignedError::Malformed {
            what,
            reason: format!("alg {} (device keys sign ES256)", jws.algorithm().name()),
        });
    }
    Ok(jws)
}

/// Checks that `key` signed `jws`, and returns its claims.
pub fn verified(jws: Jws, typ: &'static str, key: &PublicKey) -> Result<Map<String, Value>, SignedError> {
    if !jws.verify(key) {
        return Err(SignedError::BadSignature(what(typ)));
    }
    Ok(jws.claims)
}

impl Report {
    /// Signs the report with the device key.
    pub fn sign(
        &self,
        sign_der: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
    ) -> Result<String, SignedError> {
        let claims = serde_json::to_value(self).map_err(|e| SignedError::Signing(e.to_string()))?;
        sign(REPORT_TYPE, &self.device_id, &claims, sign_der)
    }

    /// Reads a report from verified claims; bounded in the number of facts.
    pub fn from_claims(claims: Map<String, Value>) -> Result<Self, SignedError> {
        let malformed = |reason: String| SignedError::Malformed {
            what: "posture report",
            reason,
        };
        let report: Report =
            serde_json::from_value(Value::Object(claims)).map_err(|e| malformed(e.to_string()))?;
        if report.facts.len() > MAX_FACTS {
            return Err(malformed(format!(
                "{} facts, over the limit of {MAX_FACTS}",
                report.facts.len()
            )));
        }
        Ok(report)
    }
}

fn what(typ: &str) -> &'static str {
    match typ {
        REPORT_TYPE => "posture report",
        ENROLL_TYPE => "enrollment request",
        CERTIFICATE_TYPE => "certificate request",
        _ => "signed document",
    }
}

/// An ASN.1 DER ECDSA signature (`SEQUENCE { r INTEGER, s INTEGER }`) as
/// JWS wants it: `r || s`, 32 bytes each.
fn der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let (&tag, rest) = der.split_first()?;
    let (&len, body) = rest.split_first()?;
    if tag != 0x30 || usize::from(len) != body.len() || len >= 0x80 {
        return None;
    }
    let (r, rest) = der_integer(body)?;
    let (s, rest) = der_integer(rest)?;
    if !rest.is_empty() {
        return None;
    }
    let mut raw = [0u8; 64];
    raw.get_mut(32 - r.len()..32)?.copy_from_slice(r);
    raw.get_mut(64 - s.len()..64)?.copy_from_slice(s);
    Some(raw)
}

/// One DER INTEGER's magnitude (leading zeros dropped, at most 32 bytes) and what follows.
fn der_integer(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != 0x02 || len >= 0x80 || rest.len() < usize::from(len) {
        return None;
    }
    let (mut value, rest) = rest.split_at(usize::from(len));
    while let Some((0, tail)) = value.split_first() {
        value = tail;
    }
    (value.len() <= 32).then_some((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Observed;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

    fn key() -> (EcdsaKeyPair, Vec<u8>) {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new()).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        (pair, spki)
    }

    fn signer(pair: &EcdsaKeyPair) -> impl FnOnce(&[u8]) -> Result<Vec<u8>, String> + '_ {
        |input| {
            pair.sign(&SystemRandom::new(), input)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|e| e.to_string())
        }
    }

    fn report() -> Report {
        let mut facts = Facts::new();
        facts.insert(
            "firewall.active".into(),
            Observed {
                value: Some(json!(true)),
                observed_at: 1_700_000_000,
            },
        );
        Report {
            device_id: "d1".into(),
            seq: 7,
            sent_ms: 1_700_000_000_123,
            facts,
            overridden: Vec::new(),
        }
    }

    #[test]
    fn a_report_round_trips_under_its_key_and_only_its_key() {
        let (pair, spki) = key();
        let token = report().sign(signer(&pair)).unwrap();
        let jws = decode(&token, REPORT_TYPE).unwrap();
        assert_eq!(jws.kid(), Some("d1"));
        let claims = verified(jws, REPORT_TYPE, &p256_key(&spki).unwrap()).unwrap();
        assert_eq!(Report::from_claims(claims).unwrap(), report());

        let (_, other) = key();
        let jws = decode(&token, REPORT_TYPE).unwrap();
        let err = verified(jws, REPORT_TYPE, &p256_key(&other).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "posture report is not signed by the device's key"
        );
    }

    #[test]
    fn one_kind_of_document_is_never_taken_for_another() {
        let (pair, _) = key();
        let token = sign(CERTIFICATE_TYPE, "d1", &json!({"device_id": "d1"}), signer(&pair)).unwrap();
        let err = decode(&token, REPORT_TYPE).unwrap_err();
        assert!(err.to_string().starts_with("malformed posture report:"), "{err}");
    }

    #[test]
    fn oversized_and_malformed_documents_are_refused_with_a_reason() {
        let big = "a".repeat(MAX_SIGNED_BYTES + 1);
        assert!(matches!(
            decode(&big, REPORT_TYPE),
            Err(SignedError::TooLarge { .. })
        ));
        for bad in ["", "a.b", "a.b.c", "e30.e30.", "a.b.c.d"] {
            let err = decode(bad, REPORT_TYPE).unwrap_err();
            assert!(
                err.to_string().starts_with("malformed posture report"),
                "{bad:?}: {err}"
            );
        }
        let mut claims = serde_json::to_value(report()).unwrap();
        claims["extra"] = json!(1);
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        assert!(Report::from_claims(claims).is_err());
        let mut many = report();
        for i in 0..=MAX_FACTS {
            many.facts.insert(
                format!("f{i}"),
                Observed {
                    value: None,
                    observed_at: 0,
                },
            );
        }
        let Value::Object(claims) = serde_json::to_value(many).unwrap() else {
            unreachable!()
        };
        assert!(
            Report::from_claims(claims)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
    }

    /// A fact named twice: a reader keeping the first and one keeping the
    /// last would see two devices; the report is refused before any reads it.
    #[test]
    fn a_fact_named_twice_is_refused() {
        let (pair, _) = key();
        let fact = |value: bool| format!(r#""firewall.active":{{"value":{value},"observed_at":1700000000}}"#);
        let payload = format!(
            r#"{{"device_id":"d1","seq":8,"sent_ms":1700000000123,"facts":{{{},{}}}}}"#,
            fact(false),
            fact(true)
        );
        // Signed by hand: `sign` serializes a `Value`, which cannot hold a
        // duplicate member.
        let signed = |payload: &str| {
            let header = json!({ "alg": "ES256", "typ": REPORT_TYPE, "kid": "d1" });
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header.to_string()),
                URL_SAFE_NO_PAD.encode(payload)
            );
            let der = signer(&pair)(input.as_bytes()).unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(der_to_raw(&der).unwrap()))
        };
        let err = decode(&signed(&payload), REPORT_TYPE).unwrap_err();
        assert!(err.to_string().starts_with("malformed posture report"), "{err}");
        // The same facts named once each decode.
        let token = signed(&payload.replace(&format!("{},", fact(false)), ""));
        assert!(decode(&token, REPORT_TYPE).is_ok());
    }

    #[test]
    fn der_signatures_become_fixed_width_raw_ones() {
        // r with a leading zero byte (high bit set), s short.
        let mut der = vec![0x30, 0x30, 0x02, 0x21, 0x00];
        der.extend([0x80; 32]);
        der.extend([0x02, 0x01, 0x05]);
        assert_eq!(der_to_raw(&der), None, "length mismatch");
        let mut der = vec![0x30, 0x26, 0x02, 0x21, 0x00];
        der.extend([0x80; 32]);
        der.extend([0x02, 0x01, 0x05]);
        let raw = der_to_raw(&der).unwrap();
        assert_eq!(raw[..32], [0x80; 32]);
        assert_eq!(raw[32..63], [0; 31]);
        assert_eq!(raw[63], 5);
        assert_eq!(
            p256_key(&[0x30, 0x59]).unwrap_err().to_string(),
            "the device key is not a P-256 public key"
        );
    }
}
