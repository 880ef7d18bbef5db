//! Public keys as JSON Web Keys (RFC 7517/7518), the form SPIFFE bundles carry them in.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384, OID_NIST_EC_P521};
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// A key type other than `EC` or `RSA`.
    #[error("unsupported key type {0:?}")]
    UnsupportedKeyType(String),
    /// An EC curve other than P-256, P-384 or P-521.
    #[error("unsupported curve {0:?}")]
    UnsupportedCurve(String),
    /// A parameter the key type needs is absent.
    #[error("missing parameter {0:?}")]
    MissingParameter(&'static str),
    /// A parameter is not base64url or has the wrong length.
    #[error("parameter {0:?} is malformed")]
    MalformedParameter(&'static str),
    /// A certificate's public key could not be read.
    #[error("certificate public key is not an EC (P-256/384/521) or RSA key")]
    UnsupportedCertificateKey,
}

/// Elliptic curves allowed in SPIFFE bundles and JWT-SVIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-384.
    P384,
    /// NIST P-521.
    P521,
}

impl Curve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Length in bytes of one coordinate.
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    fn from_name(name: &str) -> Result<Self, JwkError> {
        match name {
            "P-256" => Ok(Curve::P256),
            "P-384" => Ok(Curve::P384),
            "P-521" => Ok(Curve::P521),
            other => Err(JwkError::UnsupportedCurve(other.to_owned())),
        }
    }
}

/// A public signature key.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// An EC key: the affine coordinates, each [`Curve::coordinate_len`] bytes.
    Ec {
        /// The curve.
        curve: Curve,
        /// X coordinate, big-endian.
        x: Vec<u8>,
        /// Y coordinate, big-endian.
        y: Vec<u8>,
    },
    /// An RSA key.
    Rsa {
        /// Modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian, no leading zeros.
        e: Vec<u8>,
    },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKey::Ec { curve, .. } => write!(f, "PublicKey::Ec({})", curve.name()),
            PublicKey::Rsa { n, .. } => write!(f, "PublicKey::Rsa({} bits)", n.len() * 8),
        }
    }
}

impl PublicKey {
    /// Reads the key of a certificate's SubjectPublicKeyInfo.
    pub fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, JwkError> {
        match spki.parsed() {
            Ok(ParsedKey::EC(point)) => {
                let curve_oid = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .ok_or(JwkError::UnsupportedCertificateKey)?;
                let curve = if curve_oid == OID_EC_P256 {
                    Curve::P256
                } else if curve_oid == OID_NIST_EC_P384 {
                    Curve::P384
                } else if curve_oid == OID_NIST_EC_P521 {
                    Curve::P521
                } else {
                    return Err(JwkError::UnsupportedCertificateKey);
                };
                Self::from_uncompressed_point(curve, point.data())
            }
            Ok(ParsedKey::RSA(rsa)) => Ok(PublicKey::Rsa {
                n: strip_leading_zeros(rsa.modulus).to_vec(),
                e: strip_leading_zeros(rsa.exponent).to_vec(),
            }),
            _ => Err(JwkError::UnsupportedCertificateKey),
        }
    }

    /// Reads an uncompressed SEC1 point (`04 || X || Y`).
    pub fn from_uncompressed_point(curve: Curve, point: &[u8]) -> Result<Self, JwkError> {
        let len = curve.coordinate_len();
        match point.split_first() {
            Some((4, xy)) if xy.len() == 2 * len => {
                let (x, y) = xy.split_at(len);
                Ok(PublicKey::Ec {
                    curve,
                    x: x.to_vec(),
                    y: y.to_vec(),
                })
            }
            _ => Err(JwkError::UnsupportedCertificateKey),
        }
    }

    /// The uncompressed SEC1 point of an EC key.
    pub fn uncompressed_point(&self) -> Option<Vec<u8>> {
        match self {
            PublicKey::Ec { x, y, .. } => {
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(4);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                Some(point)
            }
            PublicKey::Rsa { .. } => None,
        }
    }

    /// The RFC 7638 thumbprint (SHA-256, base64url): a key ID derived from the key itself.
    pub fn thumbprint(&self) -> String {
        // RFC 7638 §3: the required members only, in lexicographic order, no whitespace.
        let canonical = match self {
            PublicKey::Ec { curve, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                curve.name(),
                URL_SAFE_NO_PAD.encode(x),
                URL_SAFE_NO_PAD.encode(y)
            ),
            PublicKey::Rsa { n, e } => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(e),
                URL_SAFE_NO_PAD.encode(n)
            ),
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }

    /// The key as a JWK for signature verification (`use: sig`), with its
    /// key ID and the algorithm it signs with: what an OpenID Provider
    /// publishes at its `jwks_uri`.
    pub fn to_signing_jwk(&self, kid: &str, alg: &str) -> serde_json::Value {
        let mut jwk = Jwk {
            use_: Some("sig".into()),
            kid: Some(kid.into()),
            ..Jwk::default()
        };
        self.write_to(&mut jwk);
        let mut value = serde_json::to_value(jwk).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("alg".into(), alg.into());
        }
        value
    }

    /// Fills the key-type parameters of a JWK.
    pub(crate) fn write_to(&self, jwk: &mut Jwk) {
        match self {
            PublicKey::Ec { curve, x, y } => {
                jwk.kty = "EC".into();
                jwk.crv = Some(curve.name().into());
                jwk.x = Some(URL_SAFE_NO_PAD.encode(x));
                jwk.y = Some(URL_SAFE_NO_PAD.encode(y));
            }
            PublicKey::Rsa { n, e } => {
                jwk.kty = "RSA".into();
                jwk.n = Some(URL_SAFE_NO_PAD.encode(n));
                jwk.e = Some(URL_SAFE_NO_PAD.encode(e));
            }
        }
    }

    /// Reads the key-type parameters of a JWK.
    pub(crate) fn read_from(jwk: &Jwk) -> Result<Self, JwkError> {
        match jwk.kty.as_str() {
            "EC" => {
                let curve = Curve::from_name(jwk.crv.as_deref().ok_or(JwkError::MissingParameter("crv"))?)?;
                let x = decode_param(&jwk.x, "x")?;
                let y = decode_param(&jwk.y, "y")?;
                if x.len() != curve.coordinate_len() {
                    return Err(JwkError::MalformedParameter("x"));
                }
                if y.len() != curve.coordinate_len() {
                    return Err(JwkError::MalformedParameter("y"));
                }
                Ok(PublicKey::Ec { curve, x, y })
            }
            "RSA" => {
                let n = decode_param(&jwk.n, "n")?;
                let e = decode_param(&jwk.e, "e")?;
                if n.is_empty() || n[0] == 0 {
                    return Err(JwkError::MalformedParameter("n"));
                }
                if e.is_empty() || e[0] == 0 {
                    return Err(JwkError::MalformedParameter("e"));
                }
                Ok(PublicKey::Rsa { n, e })
            }
            other => Err(JwkError::UnsupportedKeyType(other.to_owned())),
        }
    }
}

/// One JWK as it appears in a SPIFFE bundle; parameters not listed here are ignored.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Jwk {
    pub kty: String,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
}

fn decode_param(value: &Option<String>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    let value = value.as_deref().ok_or(JwkError::MissingParameter(name))?;
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| JwkError::MalformedParameter(name))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// Reads the signature keys of a JWK Set (a client's `private_key_jwt`
/// keys): each with its `kid`, if any. Keys for encryption (`use: enc`) are
/// left out; a key of an unsupported type is an error.
pub fn parse_jwk_set(text: &str) -> Result<Vec<(Option<String>, PublicKey)>, JwkError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Jwk>,
    }
    let set: Set = serde_json::from_str(text).map_err(|_| JwkError::MalformedParameter("keys"))?;
    set.keys
        .iter()
        .filter(|jwk| jwk.use_.as_deref() != Some("enc"))
        .map(|jwk| Ok((jwk.kid.clone(), PublicKey::read_from(jwk)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // The RSA key of RFC 7638 §3.1, whose thumbprint the RFC gives.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = Jwk {
            kty: "RSA".into(),
            n: Some(n.into()),
            e: Some("AQAB".into()),
            ..Jwk::default()
        };
        let key = PublicKey::read_from(&jwk);
        assert_eq!(
            key.map(|k| k.thumbprint()),
            Ok("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".to_owned())
        );
    }

    #[test]
    fn rejects_bad_parameters() {
        let ec = |crv: &str, x: &str| Jwk {
            kty: "EC".into(),
            crv: Some(crv.into()),
            x: Some(x.into()),
            y: Some(URL_SAFE_NO_PAD.encode([1u8; 32])),
            ..Jwk::default()
        };
        let good_x = URL_SAFE_NO_PAD.encode([2u8; 32]);
        assert!(PublicKey::read_from(&ec("P-256", &good_x)).is_ok());
        assert_eq!(
            PublicKey::read_from(&ec("P-257", &good_x)),
            Err(JwkError::UnsupportedCurve("P-257".into()))
        );
        assert_eq!(
            PublicKey::read_from(&ec("P-256", "AAAA")),
            Err(JwkError::MalformedParameter("x"))
        );
        assert_eq!(
            PublicKey::read_from(&ec("P-256", "not base64!")),
            Err(JwkError::MalformedParameter("x"))
        );
        let oct = Jwk {
            kty: "oct".into(),
            ..Jwk::default()
        };
        assert_eq!(
            PublicKey::read_from(&oct),
            Err(JwkError::UnsupportedKeyType("oct".into()))
        );
        let rsa = Jwk {
            kty: "RSA".into(),
            n: Some("AQAB".into()),
            ..Jwk::default()
        };
        assert_eq!(PublicKey::read_from(&rsa), Err(JwkError::MissingParameter("e")));
    }
}
