//! Trust bundles: the SPIFFE JWKS format, PEM, and trust domain inference.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::KeyPair;
use serde_json::{Value, json};
use support::{Ca, CertSpec, Error, TestResult, assert_error_style, patched};
use zt_identity::bundle::MAX_BUNDLE_BYTES;
use zt_identity::{Bundle, BundleError, JwtSigner, TrustDomain};

fn example_org() -> Result<TrustDomain, Error> {
    Ok(TrustDomain::parse("example.org")?)
}

/// A JWT signer with a fresh key: P-256, or RSA 2048.
fn jwt_signer(rsa: bool) -> Result<JwtSigner, Error> {
    let key = if rsa {
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?
    } else {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
    };
    Ok(JwtSigner::from_pkcs8(key.serialized_der())?)
}

/// The bundle of example.org: one CA, one JWT key, sequence 7, refresh hint 300 s.
struct Example {
    ca: Ca,
    signer: JwtSigner,
    bundle: Bundle,
}

fn example() -> Result<Example, Error> {
    let ca = Ca::root("spiffe://example.org")?;
    let signer = jwt_signer(false)?;
    let mut bundle = Bundle::new(example_org()?);
    bundle.add_x509_authority(ca.cert.clone())?;
    bundle.add_jwt_authority(signer.kid(), signer.public_key().clone())?;
    bundle.set_sequence(7);
    bundle.set_refresh_hint(300);
    Ok(Example { ca, signer, bundle })
}

fn jwks_value(bundle: &Bundle) -> Result<Value, Error> {
    Ok(serde_json::from_str(&bundle.to_jwks()?)?)
}

/// The example's JWKS entries: its x509-svid entry and its jwt-svid entry.
fn example_entries() -> Result<(Example, Value, Value), Error> {
    let example = example()?;
    let keys = jwks_value(&example.bundle)?["keys"].clone();
    let (x509, jwt) = (keys[0].clone(), keys[1].clone());
    assert_eq!(
        (&x509["use"], &jwt["use"]),
        (&json!("x509-svid"), &json!("jwt-svid"))
    );
    Ok((example, x509, jwt))
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// Parses `document` as an example.org JWKS, expecting it to be refused.
fn jwks_rejection(document: &str) -> Result<BundleError, Error> {
    match Bundle::parse_jwks(example_org()?, document.as_bytes()) {
        Ok(bundle) => Err(format!("expected a rejection, but parsed {bundle:?}").into()),
        Err(e) => {
            assert_error_style(&e);
            Ok(e)
        }
    }
}

/// Like [`jwks_rejection`], for errors about one key: returns its index and the reason.
fn jwks_key_rejection(keys: &[Value]) -> Result<(usize, String), Error> {
    match jwks_rejection(&jwks(keys))? {
        BundleError::Key { index, reason } => Ok((index, reason)),
        other => Err(format!("expected a key error, got {other:?}").into()),
    }
}

// ---- JWKS ----

#[test]
fn jwks_round_trip_keeps_every_authority() -> TestResult {
    let Example {
        ca,
        signer,
        mut bundle,
    } = example()?;
    let rsa = jwt_signer(true)?;
    bundle.add_jwt_authority(rsa.kid(), rsa.public_key().clone())?;

    let parsed = Bundle::parse_jwks(example_org()?, bundle.to_jwks()?.as_bytes())?;
    assert_eq!(parsed.trust_domain(), &example_org()?);
    assert_eq!(parsed.x509_authorities(), [ca.cert]);
    assert_eq!(parsed.jwt_authority(signer.kid()), Some(signer.public_key()));
    assert_eq!(parsed.jwt_authority(rsa.kid()), Some(rsa.public_key()));
    assert_eq!(parsed.jwt_authorities().count(), 2);
    assert_eq!(parsed.sequence(), Some(7));
    assert_eq!(parsed.refresh_hint(), Some(300));
    Ok(())
}

#[test]
fn jwks_document_has_the_spiffe_members() -> TestResult {
    let (example, x509, jwt) = example_entries()?;
    let document = jwks_value(&example.bundle)?;
    assert_eq!(document["keys"].as_array().map(Vec::len), Some(2));
    assert_eq!(document["spiffe_sequence"], 7);
    assert_eq!(document["spiffe_refresh_hint"], 300);

    assert_eq!(x509["x5c"], json!([STANDARD.encode(&example.ca.cert)]));
    assert_eq!(x509["kty"], "EC");
    assert_eq!(x509["crv"], "P-256");
    assert!(x509.get("kid").is_none(), "{x509}");

    assert_eq!(jwt["kid"], example.signer.kid());
    assert_eq!(jwt["kty"], "EC");
    assert!(jwt.get("x5c").is_none(), "{jwt}");

    let bare = jwks_value(&Bundle::new(example_org()?))?;
    assert!(bare.get("spiffe_sequence").is_none(), "{bare}");
    assert!(bare.get("spiffe_refresh_hint").is_none(), "{bare}");
    Ok(())
}

#[test]
fn jwks_parsing_skips_keys_it_does_not_understand() -> TestResult {
    let (example, x509, jwt) = example_entries()?;
    let keys = [
        x509.clone(),
        jwt.clone(),
        patched(jwt.clone(), json!({ "use": "enc", "kid": "encryption-key" })),
        json!({ "use": "jwt-svid", "kty": "OKP", "kid": "ed25519-key", "crv": "Ed25519", "x": "AAAA" }),
        patched(x509, json!({ "x5c": null })),
    ];
    let parsed = Bundle::parse_jwks(example_org()?, jwks(&keys).as_bytes())?;
    assert_eq!(parsed.x509_authorities(), [example.ca.cert]);
    let kids = parsed.jwt_authorities().map(|(kid, _)| kid).collect::<Vec<_>>();
    assert_eq!(kids, [example.signer.kid()]);
    Ok(())
}

#[test]
fn jwks_jwt_key_without_kid_is_refused() -> TestResult {
    let (_, _, jwt) = example_entries()?;
    let (index, reason) = jwks_key_rejection(&[patched(jwt, json!({ "kid": null }))])?;
    assert_eq!(index, 0);
    assert!(reason.contains("kid"), "{reason}");
    Ok(())
}

#[test]
fn jwks_duplicate_kid_is_refused() -> TestResult {
    let (_, _, jwt) = example_entries()?;
    let (index, reason) = jwks_key_rejection(&[jwt.clone(), jwt])?;
    assert_eq!(index, 1);
    assert!(reason.contains("duplicate"), "{reason}");
    Ok(())
}

#[test]
fn jwks_key_without_use_is_refused() -> TestResult {
    let (_, x509, _) = example_entries()?;
    let (index, reason) = jwks_key_rejection(&[patched(x509, json!({ "use": null }))])?;
    assert_eq!(index, 0);
    assert!(reason.contains("use"), "{reason}");
    Ok(())
}

#[test]
fn jwks_x5c_that_is_not_base64_is_refused() -> TestResult {
    let (_, x509, jwt) = example_entries()?;
    let keys = [jwt, patched(x509, json!({ "x5c": ["not base64!"] }))];
    let (index, reason) = jwks_key_rejection(&keys)?;
    assert_eq!(index, 1);
    assert!(reason.contains("base64"), "{reason}");
    Ok(())
}

#[test]
fn jwks_x5c_that_is_not_a_ca_is_refused() -> TestResult {
    let (example, x509, _) = example_entries()?;
    let leaf = example.ca.sign(&CertSpec::leaf())?;
    let (index, reason) = jwks_key_rejection(&[patched(x509, json!({ "x5c": [STANDARD.encode(&leaf)] }))])?;
    assert_eq!(index, 0);
    assert!(reason.contains("CA flag"), "{reason}");
    Ok(())
}

#[test]
fn jwks_that_is_not_json_is_refused() -> TestResult {
    for document in ["not json", "{\"keys\": [", "[]", "{}"] {
        let error = jwks_rejection(document)?;
        assert!(matches!(error, BundleError::Json(_)), "{document}: {error:?}");
    }
    Ok(())
}

#[test]
fn bundle_over_the_size_limit_is_refused() -> TestResult {
    let (example, _, _) = example_entries()?;
    let mut document = example.bundle.to_jwks()?;
    document.push_str(&" ".repeat(MAX_BUNDLE_BYTES));
    let len = document.len();
    let error = jwks_rejection(&document)?;
    assert!(
        matches!(error, BundleError::TooLarge { len: l } if l == len),
        "{error:?}"
    );
    let error = Bundle::parse(document.as_bytes(), None);
    assert!(
        matches!(error, Err(BundleError::TooLarge { len: l }) if l == len),
        "{error:?}"
    );
    Ok(())
}

// ---- trust domain inference ----

#[test]
fn parse_takes_the_trust_domain_from_the_authorities() -> TestResult {
    let example = example()?;
    let documents = [example.bundle.to_pem(), example.bundle.to_jwks()?];
    for document in documents {
        let parsed = Bundle::parse(document.as_bytes(), None)?;
        assert_eq!(parsed.trust_domain(), &example_org()?);
        assert_eq!(parsed.x509_authorities(), std::slice::from_ref(&example.ca.cert));

        let other = TrustDomain::parse("other.org")?;
        let given = Bundle::parse(document.as_bytes(), Some(other.clone()))?;
        assert_eq!(given.trust_domain(), &other);
    }
    Ok(())
}

#[test]
fn parse_cannot_infer_a_trust_domain_without_ca_ids() -> TestResult {
    let example = example()?;
    let mut jwt_only = Bundle::new(example_org()?);
    jwt_only.add_jwt_authority(example.signer.kid(), example.signer.public_key().clone())?;
    let error = Bundle::parse(jwt_only.to_jwks()?.as_bytes(), None);
    assert!(matches!(error, Err(BundleError::UnknownTrustDomain)), "{error:?}");

    let other = Ca::root("spiffe://other.org")?;
    let mixed = format!(
        "{}{}",
        example.bundle.to_pem(),
        zt_identity::x509::to_pem(&other.cert)
    );
    let error = Bundle::parse(mixed.as_bytes(), None);
    assert!(
        matches!(error, Err(BundleError::MixedTrustDomains(..))),
        "{error:?}"
    );
    Ok(())
}

// ---- PEM ----

#[test]
fn pem_round_trip_keeps_order() -> TestResult {
    let first = Ca::root("spiffe://example.org")?;
    let second = Ca::self_signed(CertSpec::ca("spiffe://example.org", "second CA"))?;
    let mut bundle = Bundle::new(example_org()?);
    bundle.add_x509_authority(first.cert.clone())?;
    bundle.add_x509_authority(second.cert.clone())?;
    bundle.add_x509_authority(first.cert.clone())?; // a second time: no change

    let pem = bundle.to_pem();
    let parsed = Bundle::parse_pem(example_org()?, pem.as_bytes())?;
    assert_eq!(parsed.x509_authorities(), [first.cert, second.cert]);
    assert_eq!(parsed.to_pem(), pem);
    Ok(())
}

#[test]
fn pem_without_certificates_is_refused() -> TestResult {
    for document in ["", "  \n", "not a certificate"] {
        let error = Bundle::parse_pem(example_org()?, document.as_bytes());
        assert!(
            matches!(error, Err(BundleError::Empty)),
            "{document:?}: {error:?}"
        );
    }
    Ok(())
}

#[test]
fn pem_that_does_not_decode_is_refused() -> TestResult {
    let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    let error = Bundle::parse_pem(example_org()?, bad_base64.as_bytes());
    assert!(matches!(error, Err(BundleError::Pem(_))), "{error:?}");

    let not_der = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let error = Bundle::parse_pem(example_org()?, not_der.as_bytes());
    assert!(matches!(error, Err(BundleError::Authority(_))), "{error:?}");
    Ok(())
}

#[test]
fn jwt_authorities_need_a_unique_non_empty_kid() -> TestResult {
    let Example {
        signer, mut bundle, ..
    } = example()?;
    let duplicate = bundle.add_jwt_authority(signer.kid(), signer.public_key().clone());
    assert!(
        matches!(duplicate, Err(BundleError::DuplicateKeyId(ref kid)) if kid == signer.kid()),
        "{duplicate:?}"
    );
    let empty = bundle.add_jwt_authority("", signer.public_key().clone());
    assert!(matches!(empty, Err(BundleError::Key { .. })), "{empty:?}");
    assert_eq!(bundle.jwt_authorities().count(), 1);
    Ok(())
}
