//! JWT-SVID minting and verification: round trips for every algorithm, and
//! hand-built tokens in which exactly one property is wrong.

mod support;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{KeyPair, RsaKeySize, SignatureAlgorithm};
use serde_json::{Value, json};
use support::{Error, NOW, TestResult, assert_error_style, patched};
use zt_identity::jwt::MAX_TOKEN_LEN;
use zt_identity::{
    Algorithm, Bundle, JwtSigner, JwtSvidError, SpiffeId, SpiffeIdError, TrustDomain, VerifiedJwtSvid,
    mint_jwt_svid, verify_jwt_svid,
};

const SUBJECT: &str = "spiffe://example.org/client";
const AUDIENCE: &str = "spiffe://example.org/server";

/// A private key as PKCS#8 DER, and the signer made from it.
struct Key {
    pkcs8: Vec<u8>,
    signer: JwtSigner,
}

impl Key {
    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, Error> {
        let signer = JwtSigner::from_pkcs8(&pkcs8)?;
        Ok(Self { pkcs8, signer })
    }

    fn ec(alg: &'static SignatureAlgorithm) -> Result<Self, Error> {
        Self::from_pkcs8(KeyPair::generate_for(alg)?.serialize_der())
    }

    fn p256() -> Result<Self, Error> {
        Self::ec(&rcgen::PKCS_ECDSA_P256_SHA256)
    }

    fn rsa() -> Result<Self, Error> {
        Self::from_pkcs8(
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?.serialize_der(),
        )
    }

    /// Signs `header` and `claims` as given, with ES256; only for P-256 keys.
    fn sign_raw(&self, header: &Value, claims: &Value) -> Result<String, Error> {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.pkcs8)?;
        let signature = pair.sign(&SystemRandom::new(), input.as_bytes())?;
        Ok(format!("{input}.{}", b64(signature)))
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn example_org() -> Result<TrustDomain, Error> {
    Ok(TrustDomain::parse("example.org")?)
}

/// A bundle for example.org holding the public keys of `keys` under their key IDs.
fn bundle_of(keys: &[&Key]) -> Result<Bundle, Error> {
    let mut bundle = Bundle::new(example_org()?);
    for key in keys {
        bundle.add_jwt_authority(key.signer.kid(), key.signer.public_key().clone())?;
    }
    Ok(bundle)
}

/// Mints a token for [`SUBJECT`] and `audience`, issued at `NOW - 10`.
fn mint(signer: &JwtSigner, audience: &[&str], expires_at: u64) -> Result<String, JwtSvidError> {
    let audience = audience.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let subject = SpiffeId::parse(SUBJECT).map_err(JwtSvidError::InvalidSubject)?;
    mint_jwt_svid(signer, &subject, &audience, NOW - 10, expires_at)
}

fn verify(token: &str, bundle: &Bundle) -> Result<VerifiedJwtSvid, JwtSvidError> {
    verify_jwt_svid(token, bundle, AUDIENCE, NOW)
}

/// Verifies `token` expecting a rejection; returns the error after checking its message.
fn rejection(token: &str, bundle: &Bundle) -> Result<JwtSvidError, Error> {
    match verify(token, bundle) {
        Ok(svid) => Err(format!("expected a rejection, but {svid:?} verified").into()),
        Err(e) => {
            assert_error_style(&e);
            Ok(e)
        }
    }
}

/// A token with the header and claims `mint_jwt_svid` would write, changed by the
/// patches, signed correctly with the P-256 `key`.
fn token(key: &Key, header_patch: Value, claims_patch: Value) -> Result<String, Error> {
    let header = json!({ "alg": "ES256", "typ": "JWT", "kid": key.signer.kid() });
    let claims = json!({ "sub": SUBJECT, "aud": AUDIENCE, "exp": NOW + 300, "iat": NOW - 10 });
    key.sign_raw(&patched(header, header_patch), &patched(claims, claims_patch))
}

/// A P-256 key and a bundle that trusts it, to sign hand-built tokens.
struct Fixture {
    key: Key,
    bundle: Bundle,
}

impl Fixture {
    fn new() -> Result<Self, Error> {
        let key = Key::p256()?;
        let bundle = bundle_of(&[&key])?;
        Ok(Self { key, bundle })
    }

    fn token(&self, header_patch: Value, claims_patch: Value) -> Result<String, Error> {
        token(&self.key, header_patch, claims_patch)
    }

    fn header_rejection(&self, header_patch: Value) -> Result<JwtSvidError, Error> {
        rejection(&self.token(header_patch, json!({}))?, &self.bundle)
    }

    fn claims_rejection(&self, claims_patch: Value) -> Result<JwtSvidError, Error> {
        rejection(&self.token(json!({}), claims_patch)?, &self.bundle)
    }
}

fn header_of(token: &str) -> Result<Value, Error> {
    let header = token.split('.').next().ok_or("empty token")?;
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?)
}

/// Mints with `key`, verifies with a bundle of that key, and checks every verified field.
fn assert_round_trip(key: &Key, algorithm: Algorithm) -> TestResult {
    assert_eq!(key.signer.algorithm(), algorithm);
    let token = mint(&key.signer, &[AUDIENCE], NOW + 300)?;
    let header = header_of(&token)?;
    assert_eq!(header["alg"], algorithm.name(), "{header}");
    assert_eq!(header["kid"], key.signer.kid(), "{header}");
    assert_eq!(header["typ"], "JWT", "{header}");

    let svid = verify(&token, &bundle_of(&[key])?)?;
    assert_eq!(svid.spiffe_id(), &SpiffeId::parse(SUBJECT)?);
    assert_eq!(svid.audience(), [AUDIENCE]);
    assert_eq!(svid.expiry(), NOW + 300);
    assert_eq!(svid.claims()["iat"], NOW - 10);
    Ok(())
}

// ---- round trips ----

#[test]
fn ec_tokens_round_trip() -> TestResult {
    let cases = [
        (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        (&rcgen::PKCS_ECDSA_P384_SHA384, Algorithm::ES384),
        (&rcgen::PKCS_ECDSA_P521_SHA512, Algorithm::ES512),
    ];
    for (alg, algorithm) in cases {
        assert_round_trip(&Key::ec(alg)?, algorithm)?;
    }
    Ok(())
}

#[test]
fn rsa_tokens_round_trip_with_every_rsa_algorithm() -> TestResult {
    // rcgen serializes RSA keys as PKCS#8, which from_pkcs8 reads; PS256 is the default.
    let default = Key::rsa()?;
    assert_round_trip(&default, Algorithm::PS256)?;
    let algorithms = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    for algorithm in algorithms {
        let key = Key {
            signer: JwtSigner::from_pkcs8(&default.pkcs8)?.with_rsa_algorithm(algorithm)?,
            pkcs8: default.pkcs8.clone(),
        };
        assert_round_trip(&key, algorithm)?;
    }
    Ok(())
}

#[test]
fn signer_refuses_an_algorithm_that_does_not_suit_its_key() -> TestResult {
    let rsa = Key::rsa()?;
    let ec = Key::p256()?;
    assert!(matches!(
        rsa.signer.with_rsa_algorithm(Algorithm::ES256),
        Err(JwtSvidError::InvalidRequest(_))
    ));
    assert!(matches!(
        ec.signer.with_rsa_algorithm(Algorithm::RS256),
        Err(JwtSvidError::InvalidRequest(_))
    ));
    assert!(matches!(
        JwtSigner::from_pkcs8(b"not a key"),
        Err(JwtSvidError::UnsupportedSigningKey)
    ));
    Ok(())
}

#[test]
fn audience_array_containing_the_audience_verifies() -> TestResult {
    let f = Fixture::new()?;
    let token = mint(
        &f.key.signer,
        &["spiffe://example.org/other", AUDIENCE],
        NOW + 300,
    )?;
    let svid = verify(&token, &f.bundle)?;
    assert_eq!(svid.audience(), ["spiffe://example.org/other", AUDIENCE]);
    Ok(())
}

#[test]
fn token_without_kid_verifies_by_trying_each_key() -> TestResult {
    let key = Key::p256()?;
    let bundle = bundle_of(&[&Key::p256()?, &key, &Key::rsa()?])?;
    let no_kid = json!({ "kid": null });
    let signed = token(&key, no_kid.clone(), json!({}))?;
    let header = header_of(&signed)?;
    assert!(header.get("kid").is_none(), "{header}");
    assert_eq!(verify(&signed, &bundle)?.spiffe_id(), &SpiffeId::parse(SUBJECT)?);

    let signed_by_stranger = token(&Key::p256()?, no_kid, json!({}))?;
    assert_eq!(
        rejection(&signed_by_stranger, &bundle)?,
        JwtSvidError::BadSignature
    );
    Ok(())
}

#[test]
fn typ_jose_or_absent_verifies() -> TestResult {
    let f = Fixture::new()?;
    for typ in [json!("JOSE"), Value::Null] {
        let token = f.token(json!({ "typ": typ }), json!({}))?;
        verify(&token, &f.bundle)?;
    }
    Ok(())
}

// ---- time and audience ----

#[test]
fn expired_token_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let at_now = mint(&f.key.signer, &[AUDIENCE], NOW)?;
    assert_eq!(
        rejection(&at_now, &f.bundle)?,
        JwtSvidError::Expired { exp: NOW, now: NOW }
    );
    let one_second_left = mint(&f.key.signer, &[AUDIENCE], NOW + 1)?;
    verify(&one_second_left, &f.bundle)?;
    Ok(())
}

#[test]
fn tokens_that_live_too_long_are_rejected() -> TestResult {
    let f = Fixture::new()?;
    let max = zt_identity::jwt::DEFAULT_MAX_LIFETIME;
    // Year 9999, with or without iat; a backdated iat only lengthens it.
    let year_9999 = 253_402_300_799u64;
    for patch in [
        json!({ "exp": year_9999 }),
        json!({ "exp": year_9999, "iat": null }),
        json!({ "exp": NOW + max, "iat": NOW - 3600 }),
        json!({ "exp": NOW + max + 1, "iat": null }),
        // An iat in the future does not shorten the count.
        json!({ "exp": NOW + max + 10, "iat": NOW + 3600 }),
    ] {
        assert!(
            matches!(
                f.claims_rejection(patch.clone())?,
                JwtSvidError::LifetimeTooLong { max: m, .. } if m == max
            ),
            "{patch}"
        );
    }
    // At the maximum it verifies; a tighter maximum is the caller's to set.
    verify(
        &f.token(json!({}), json!({ "exp": NOW + max, "iat": NOW }))?,
        &f.bundle,
    )?;
    let five_minutes = f.token(json!({}), json!({}))?;
    assert!(matches!(
        zt_identity::jwt::verify_jwt_svid_within(&five_minutes, &f.bundle, AUDIENCE, NOW, 60),
        Err(JwtSvidError::LifetimeTooLong {
            lifetime: 310,
            max: 60
        })
    ));
    Ok(())
}

#[test]
fn token_not_yet_valid_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.claims_rejection(json!({ "nbf": NOW + 60 }))?,
        JwtSvidError::NotYetValid {
            nbf: NOW + 60,
            now: NOW
        }
    );
    Ok(())
}

#[test]
fn audience_mismatch_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let token = mint(&f.key.signer, &["spiffe://example.org/other"], NOW + 300)?;
    assert_eq!(
        rejection(&token, &f.bundle)?,
        JwtSvidError::AudienceMismatch {
            expected: AUDIENCE.to_owned(),
            actual: vec!["spiffe://example.org/other".to_owned()],
        }
    );
    Ok(())
}

// ---- keys and signatures ----

#[test]
fn token_signed_by_another_key_under_a_trusted_kid_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let impostor = Key::p256()?;
    let forged = token(&impostor, json!({ "kid": f.key.signer.kid() }), json!({}))?;
    assert_eq!(rejection(&forged, &f.bundle)?, JwtSvidError::BadSignature);
    Ok(())
}

#[test]
fn token_with_unknown_kid_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let stranger = Key::p256()?;
    let token = mint(&stranger.signer, &[AUDIENCE], NOW + 300)?;
    assert_eq!(
        rejection(&token, &f.bundle)?,
        JwtSvidError::UnknownKey(stranger.signer.kid().to_owned(), example_org()?)
    );
    Ok(())
}

#[test]
fn es256_token_against_an_rsa_key_under_its_kid_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let mut bundle = Bundle::new(example_org()?);
    bundle.add_jwt_authority(f.key.signer.kid(), Key::rsa()?.signer.public_key().clone())?;
    let token = mint(&f.key.signer, &[AUDIENCE], NOW + 300)?;
    assert_eq!(rejection(&token, &bundle)?, JwtSvidError::BadSignature);
    Ok(())
}

#[test]
fn token_with_a_flipped_signature_bit_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let token = mint(&f.key.signer, &[AUDIENCE], NOW + 300)?;
    let (signing_input, signature) = token.rsplit_once('.').ok_or("no signature")?;
    let mut signature = URL_SAFE_NO_PAD.decode(signature)?;
    signature[10] ^= 0x01;
    let tampered = format!("{signing_input}.{}", b64(signature));
    assert_eq!(rejection(&tampered, &f.bundle)?, JwtSvidError::BadSignature);
    Ok(())
}

// ---- header rules ----

#[test]
fn alg_none_with_empty_signature_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let signed = f.token(json!({ "alg": "none" }), json!({}))?;
    let (signing_input, _) = signed.rsplit_once('.').ok_or("no signature")?;
    let unsigned = format!("{signing_input}.");
    assert_eq!(
        rejection(&unsigned, &f.bundle)?,
        JwtSvidError::UnsupportedAlgorithm("none".into())
    );
    Ok(())
}

#[test]
fn algorithms_outside_the_allow_list_are_rejected() -> TestResult {
    let f = Fixture::new()?;
    // HMAC, EdDSA, and an allowed name in the wrong case (alg is case-sensitive).
    for alg in ["HS256", "EdDSA", "es256"] {
        assert_eq!(
            f.header_rejection(json!({ "alg": alg }))?,
            JwtSvidError::UnsupportedAlgorithm(alg.into())
        );
    }
    Ok(())
}

#[test]
fn typ_other_than_jwt_or_jose_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.header_rejection(json!({ "typ": "at+jwt" }))?,
        JwtSvidError::BadType("at+jwt".into())
    );
    Ok(())
}

#[test]
fn headers_that_choose_the_key_are_rejected() -> TestResult {
    let f = Fixture::new()?;
    for name in ["jwk", "jku", "x5u", "x5c", "crit"] {
        let mut patch = serde_json::Map::new();
        patch.insert(name.to_owned(), json!("https://attacker.example/key"));
        assert_eq!(
            f.header_rejection(Value::Object(patch))?,
            JwtSvidError::ForbiddenHeader(name.into())
        );
    }
    Ok(())
}

// ---- claim rules ----

#[test]
fn missing_required_claims_are_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.claims_rejection(json!({ "aud": null }))?,
        JwtSvidError::MissingClaim("aud")
    );
    assert_eq!(
        f.claims_rejection(json!({ "exp": null }))?,
        JwtSvidError::MissingClaim("exp")
    );
    assert_eq!(
        f.claims_rejection(json!({ "sub": null }))?,
        JwtSvidError::MissingClaim("sub")
    );
    Ok(())
}

#[test]
fn empty_audience_array_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.claims_rejection(json!({ "aud": [] }))?,
        JwtSvidError::InvalidClaim {
            claim: "aud",
            reason: "empty"
        }
    );
    Ok(())
}

#[test]
fn subject_that_is_not_a_spiffe_id_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.claims_rejection(json!({ "sub": "https://example.org/client" }))?,
        JwtSvidError::InvalidSubject(SpiffeIdError::WrongScheme)
    );
    Ok(())
}

#[test]
fn subject_of_a_trust_domain_without_bundle_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.claims_rejection(json!({ "sub": "spiffe://other.org/client" }))?,
        JwtSvidError::NoBundle(TrustDomain::parse("other.org")?)
    );
    Ok(())
}

// ---- token shape ----

#[test]
fn token_without_three_parts_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let token = f.token(json!({}), json!({}))?;
    let (signing_input, _) = token.rsplit_once('.').ok_or("no signature")?;
    for malformed in [signing_input.to_owned(), format!("{token}.")] {
        let error = rejection(&malformed, &f.bundle)?;
        assert!(matches!(error, JwtSvidError::Malformed(_)), "{error:?}");
    }
    Ok(())
}

#[test]
fn token_over_the_length_limit_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    let token = f.token(json!({}), json!({ "padding": "x".repeat(MAX_TOKEN_LEN) }))?;
    assert_eq!(
        rejection(&token, &f.bundle)?,
        JwtSvidError::TooLong { len: token.len() }
    );
    Ok(())
}

// ---- minting ----

#[test]
fn minting_refuses_bad_requests() -> TestResult {
    let key = Key::p256()?;
    for (audience, expires_at) in [
        (&[][..], NOW + 300),
        (&[""][..], NOW + 300),
        (&[AUDIENCE][..], NOW - 10),
    ] {
        let result = mint(&key.signer, audience, expires_at);
        assert!(
            matches!(result, Err(JwtSvidError::InvalidRequest(_))),
            "{result:?}"
        );
    }
    Ok(())
}

#[test]
fn fractional_nbf_is_rounded_up() -> TestResult {
    let f = Fixture::new()?;
    assert_eq!(
        f.claims_rejection(json!({ "nbf": NOW as f64 + 0.5 }))?,
        JwtSvidError::NotYetValid {
            nbf: NOW + 1,
            now: NOW
        }
    );
    verify(
        &f.token(json!({}), json!({ "nbf": NOW as f64 - 0.5 }))?,
        &f.bundle,
    )?;
    Ok(())
}

#[test]
fn subject_without_a_path_is_rejected() -> TestResult {
    let f = Fixture::new()?;
    assert!(matches!(
        f.claims_rejection(json!({ "sub": "spiffe://example.org" }))?,
        JwtSvidError::InvalidClaim { claim: "sub", .. }
    ));
    let root = SpiffeId::parse("spiffe://example.org")?;
    let minted = mint_jwt_svid(&f.key.signer, &root, &[AUDIENCE.to_owned()], NOW, NOW + 60);
    assert!(
        matches!(minted, Err(JwtSvidError::InvalidRequest(_))),
        "{minted:?}"
    );
    Ok(())
}

/// `{"alg":"none","alg":"ES256"}` means `none` to a parser that keeps the first
/// member and ES256 to one that keeps the last: such a token must not verify,
/// nor one with a duplicate member at any depth.
#[test]
fn duplicate_members_are_rejected() -> TestResult {
    let f = Fixture::new()?;
    let kid = f.key.signer.kid();
    let header = format!(r#"{{"alg":"none","alg":"ES256","typ":"JWT","kid":"{kid}"}}"#);
    let claims = format!(r#"{{"sub":"{SUBJECT}","aud":"{AUDIENCE}","exp":{}}}"#, NOW + 60);
    let dup_claims = format!(
        r#"{{"sub":"spiffe://example.org/admin","sub":"{SUBJECT}","aud":"{AUDIENCE}","exp":{}}}"#,
        NOW + 60
    );
    // Nested: in an object inside the claims, or inside an array.
    let nested = format!(
        r#"{{"sub":"{SUBJECT}","aud":"{AUDIENCE}","exp":{},"cnf":{{"x5t#S256":"a","x5t#S256":"b"}}}}"#,
        NOW + 60
    );
    let in_array = format!(
        r#"{{"sub":"{SUBJECT}","aud":"{AUDIENCE}","exp":{},"act":[{{"sub":"a","sub":"b"}}]}}"#,
        NOW + 60
    );
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &f.key.pkcs8)?;
    for (header, claims) in [
        (header.as_str(), claims.as_str()),
        (r#"{"alg":"ES256"}"#, dup_claims.as_str()),
        (r#"{"alg":"ES256"}"#, nested.as_str()),
        (r#"{"alg":"ES256"}"#, in_array.as_str()),
    ] {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes())?;
        let err = rejection(&format!("{input}.{}", b64(sig)), &f.bundle)?;
        assert!(matches!(err, JwtSvidError::Malformed(_)), "{err:?}");
    }
    Ok(())
}
