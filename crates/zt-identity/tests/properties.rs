//! Property tests for every parser of untrusted input in zt-identity: they never
//! panic, and what they accept they reproduce exactly.

#![allow(clippy::unwrap_used, reason = "a test crate: unwrap is how a test fails")]

use std::time::Duration;

use proptest::prelude::*;
use rustls_pki_types::{CertificateDer, UnixTime};
use zt_identity::{Bundle, Purpose, SpiffeId, TrustDomain, verify_jwt_svid, verify_x509_svid};

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9._-]{1,40}"
}

fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

fn bundle() -> Bundle {
    Bundle::new(TrustDomain::parse("example.org").unwrap())
}

proptest! {
    #[test]
    fn valid_ids_parse_into_their_parts(td in trust_domain(), segments in prop::collection::vec(segment(), 0..6)) {
        let path: String = segments.iter().map(|s| format!("/{s}")).collect();
        let input = format!("spiffe://{td}{path}");
        let id = SpiffeId::parse(&input).unwrap();
        prop_assert_eq!(id.trust_domain().name(), td.as_str());
        prop_assert_eq!(id.path(), path.as_str());
        prop_assert_eq!(id.segments().collect::<Vec<_>>(), segments.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(id.to_string(), input);
    }

    #[test]
    fn any_string_parses_or_fails_without_panicking(input in "\\PC{0,80}|spiffe://\\PC{0,80}") {
        if let Ok(id) = SpiffeId::parse(&input) {
            prop_assert_eq!(id.to_string(), input.clone());
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id);
        }
        if let Ok(td) = TrustDomain::parse(&input) {
            prop_assert!(SpiffeId::parse(&td.id().to_string()).is_ok());
        }
    }

    #[test]
    fn jwt_verification_never_panics(header in "[A-Za-z0-9_-]{0,60}", claims in "[A-Za-z0-9_-]{0,60}", sig in "[A-Za-z0-9_-]{0,90}", junk in "\\PC{0,40}") {
        for token in [format!("{header}.{claims}.{sig}"), junk.clone(), format!("{junk}.{junk}.{junk}")] {
            prop_assert!(verify_jwt_svid(&token, &bundle(), "aud", 0).is_err());
        }
    }

    #[test]
    fn bundle_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), json in "\\{\"keys\":\\[\\PC{0,100}\\]\\}") {
        let _ = Bundle::parse(&bytes, None);
        let _ = Bundle::parse(json.as_bytes(), Some(TrustDomain::parse("example.org").unwrap()));
    }

    #[test]
    fn x509_verification_never_panics(chain in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..4)) {
        let chain: Vec<CertificateDer<'_>> = chain.into_iter().map(CertificateDer::from).collect();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000));
        prop_assert!(verify_x509_svid(&chain, &bundle(), now, Purpose::ClientAuth).is_err());
    }
}
