//! X.509-SVID verification against rcgen-built fixtures: one valid SVID, and one
//! fixture per rule of the X509-SVID specification, each rejected with its own error.

mod support;

use rcgen::{BasicConstraints, CustomExtension, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use support::{Ca, CertSpec, Error, NOW, TestResult, assert_error_style, now};
use zt_identity::x509::MAX_CHAIN_LEN;
use zt_identity::{
    Bundle, BundleError, BundleSet, BundleSource, Purpose, SpiffeId, SpiffeIdError, TrustDomain,
    VerifiedX509Svid, X509SvidError, verify_x509_svid,
};

/// A root CA for `spiffe://example.org` and the bundle that trusts it.
fn example_org() -> Result<(Ca, Bundle), Error> {
    let ca = Ca::root("spiffe://example.org")?;
    let mut bundle = Bundle::new(TrustDomain::parse("example.org")?);
    bundle.add_x509_authority(ca.cert.clone())?;
    Ok((ca, bundle))
}

/// Verifies `chain` at [`NOW`] for client authentication, expecting it to be rejected;
/// returns the error after checking that its message is well formed.
fn rejection(chain: &[CertificateDer<'_>], bundles: &impl BundleSource) -> Result<X509SvidError, Error> {
    match verify_x509_svid(chain, bundles, now(), Purpose::ClientAuth) {
        Ok(svid) => Err(format!("expected a rejection, but {svid:?} verified").into()),
        Err(e) => {
            assert_error_style(&e);
            Ok(e)
        }
    }
}

/// The error for a leaf made from `spec`, signed by the example.org root.
fn leaf_rejection(spec: CertSpec) -> Result<X509SvidError, Error> {
    let (ca, bundle) = example_org()?;
    rejection(&[ca.sign(&spec)?], &bundle)
}

/// The error for `leaf <- intermediate (from spec) <- example.org root`.
fn intermediate_rejection(intermediate: CertSpec) -> Result<X509SvidError, Error> {
    let (root, bundle) = example_org()?;
    let intermediate = root.intermediate(intermediate)?;
    let leaf = intermediate.sign(&CertSpec::leaf())?;
    rejection(&[leaf, intermediate.cert], &bundle)
}

fn example_intermediate() -> CertSpec {
    CertSpec::ca("spiffe://example.org", "intermediate CA")
}

fn assert_verified_workload(svid: &VerifiedX509Svid) -> TestResult {
    assert_eq!(
        svid.spiffe_id(),
        &SpiffeId::parse("spiffe://example.org/workload")?
    );
    Ok(())
}

// ---- valid SVIDs ----

#[test]
fn valid_leaf_verifies_for_client_and_server_auth() -> TestResult {
    let (ca, bundle) = example_org()?;
    let leaf = ca.sign(&CertSpec::leaf())?;
    for purpose in [Purpose::ClientAuth, Purpose::ServerAuth] {
        let svid = verify_x509_svid(std::slice::from_ref(&leaf), &bundle, now(), purpose)?;
        assert_verified_workload(&svid)?;
        assert_eq!(svid.serial(), [0x42, 0x01, 0x02, 0x03]);
        assert_eq!(svid.not_before(), NOW - 10);
        assert_eq!(svid.not_after(), NOW + 3600);
    }
    Ok(())
}

#[test]
fn chain_through_intermediate_verifies() -> TestResult {
    let (root, bundle) = example_org()?;
    let intermediate = root.intermediate(example_intermediate())?;
    let leaf = intermediate.sign(&CertSpec::leaf())?;
    let svid = verify_x509_svid(
        &[leaf.clone(), intermediate.cert],
        &bundle,
        now(),
        Purpose::ServerAuth,
    )?;
    assert_verified_workload(&svid)?;
    // Without the intermediate the leaf does not chain to the bundle.
    assert_eq!(
        rejection(&[leaf], &bundle)?,
        X509SvidError::UntrustedIssuer(TrustDomain::parse("example.org")?)
    );
    Ok(())
}

#[test]
fn bundle_set_uses_the_bundle_of_the_leaf_trust_domain() -> TestResult {
    let (example_ca, example_bundle) = example_org()?;
    let other_ca = Ca::root("spiffe://other.org")?;
    let mut other_bundle = Bundle::new(TrustDomain::parse("other.org")?);
    other_bundle.add_x509_authority(other_ca.cert.clone())?;
    let mut set = BundleSet::default();
    set.insert(example_bundle);
    set.insert(other_bundle);

    let example_leaf = example_ca.sign(&CertSpec::leaf())?;
    assert_verified_workload(&verify_x509_svid(
        &[example_leaf],
        &set,
        now(),
        Purpose::ClientAuth,
    )?)?;

    let other_spec = CertSpec {
        uri_sans: vec!["spiffe://other.org/workload"],
        ..CertSpec::leaf()
    };
    let other_leaf = other_ca.sign(&other_spec)?;
    let svid = verify_x509_svid(&[other_leaf], &set, now(), Purpose::ClientAuth)?;
    assert_eq!(svid.spiffe_id(), &SpiffeId::parse("spiffe://other.org/workload")?);

    // An other.org ID signed by the example.org CA: the other.org bundle is the one consulted.
    let crossed = example_ca.sign(&other_spec)?;
    assert_eq!(
        rejection(&[crossed], &set)?,
        X509SvidError::UntrustedIssuer(TrustDomain::parse("other.org")?)
    );
    Ok(())
}

#[test]
fn bundle_refuses_an_authority_that_is_not_a_ca() -> TestResult {
    let (ca, mut bundle) = example_org()?;
    let leaf = ca.sign(&CertSpec::leaf())?;
    let result = bundle.add_x509_authority(leaf);
    assert!(
        matches!(
            result,
            Err(BundleError::Authority(X509SvidError::SigningCertNotCa {
                index: 0
            }))
        ),
        "{result:?}"
    );
    assert_eq!(bundle.x509_authorities(), [ca.cert]);
    Ok(())
}

// ---- leaf rules ----

#[test]
fn leaf_with_ca_flag_is_rejected() -> TestResult {
    let spec = CertSpec {
        is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::LeafIsCa);
    Ok(())
}

#[test]
fn leaf_with_key_cert_sign_is_rejected() -> TestResult {
    let spec = CertSpec {
        key_usages: vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::LeafHasKeyCertSign);
    Ok(())
}

#[test]
fn leaf_with_crl_sign_is_rejected() -> TestResult {
    let spec = CertSpec {
        key_usages: vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::LeafHasCrlSign);
    Ok(())
}

#[test]
fn leaf_with_two_uri_sans_is_rejected() -> TestResult {
    let spec = CertSpec {
        uri_sans: vec!["spiffe://example.org/a", "spiffe://example.org/b"],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::MultipleUriSans { count: 2 });
    Ok(())
}

#[test]
fn leaf_without_uri_san_is_rejected() -> TestResult {
    let spec = CertSpec {
        uri_sans: Vec::new(),
        dns_sans: vec!["workload.example.org"],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::MissingUriSan);
    Ok(())
}

#[test]
fn expired_leaf_is_rejected() -> TestResult {
    let spec = CertSpec {
        not_before: NOW - 7200,
        not_after: NOW - 1,
        ..CertSpec::leaf()
    };
    assert_eq!(
        leaf_rejection(spec)?,
        X509SvidError::Expired {
            not_after: NOW - 1,
            now: NOW
        }
    );
    Ok(())
}

#[test]
fn not_yet_valid_leaf_is_rejected() -> TestResult {
    let spec = CertSpec {
        not_before: NOW + 60,
        ..CertSpec::leaf()
    };
    assert_eq!(
        leaf_rejection(spec)?,
        X509SvidError::NotYetValid {
            not_before: NOW + 60,
            now: NOW
        }
    );
    Ok(())
}

#[test]
fn leaf_signed_by_another_ca_of_the_trust_domain_is_rejected() -> TestResult {
    let (_, bundle) = example_org()?;
    // Both impostors claim spiffe://example.org; the second also copies the trusted
    // root's subject name, so the issuer name matches but the key does not.
    let impostors = [
        CertSpec::ca("spiffe://example.org", "impostor CA"),
        CertSpec::ca("spiffe://example.org", "spiffe://example.org"),
    ];
    for impostor in impostors {
        let leaf = Ca::self_signed(impostor)?.sign(&CertSpec::leaf())?;
        assert_eq!(
            rejection(&[leaf], &bundle)?,
            X509SvidError::UntrustedIssuer(TrustDomain::parse("example.org")?)
        );
    }
    Ok(())
}

#[test]
fn leaf_with_trust_domain_id_is_rejected() -> TestResult {
    let spec = CertSpec {
        uri_sans: vec!["spiffe://example.org"],
        ..CertSpec::leaf()
    };
    assert_eq!(
        leaf_rejection(spec)?,
        X509SvidError::LeafIdHasNoPath(SpiffeId::parse("spiffe://example.org")?)
    );
    Ok(())
}

#[test]
fn uri_san_that_is_not_a_spiffe_id_is_rejected() -> TestResult {
    let cases = [
        ("https://example.org/x", SpiffeIdError::WrongScheme),
        (
            "spiffe://Example.org/x",
            SpiffeIdError::Uppercase { ch: 'E', at: 9 },
        ),
    ];
    for (uri, reason) in cases {
        let spec = CertSpec {
            uri_sans: vec![uri],
            ..CertSpec::leaf()
        };
        assert_eq!(
            leaf_rejection(spec)?,
            X509SvidError::InvalidSpiffeId {
                uri: uri.to_owned(),
                reason
            }
        );
    }
    Ok(())
}

#[test]
fn leaf_of_a_trust_domain_without_bundle_is_rejected() -> TestResult {
    let spec = CertSpec {
        uri_sans: vec!["spiffe://other.org/x"],
        ..CertSpec::leaf()
    };
    assert_eq!(
        leaf_rejection(spec)?,
        X509SvidError::NoBundle(TrustDomain::parse("other.org")?)
    );
    Ok(())
}

#[test]
fn leaf_without_key_usage_is_rejected() -> TestResult {
    let spec = CertSpec {
        key_usages: Vec::new(),
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::MissingKeyUsage);
    Ok(())
}

#[test]
fn leaf_without_digital_signature_is_rejected() -> TestResult {
    let spec = CertSpec {
        key_usages: vec![KeyUsagePurpose::KeyAgreement],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::LeafLacksDigitalSignature);
    Ok(())
}

#[test]
fn leaf_with_non_critical_key_usage_is_rejected() -> TestResult {
    // rcgen always marks key usage critical; write it by hand:
    // BIT STRING, 7 unused bits, digitalSignature.
    let mut key_usage = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
    key_usage.set_criticality(false);
    let spec = CertSpec {
        key_usages: Vec::new(),
        custom_extensions: vec![key_usage],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::KeyUsageNotCritical);
    Ok(())
}

#[test]
fn leaf_with_client_auth_only_eku_is_rejected() -> TestResult {
    let spec = CertSpec {
        extended_key_usages: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..CertSpec::leaf()
    };
    assert_eq!(leaf_rejection(spec)?, X509SvidError::IncompleteExtendedKeyUsage);
    Ok(())
}

// ---- chain shape ----

#[test]
fn empty_chain_is_rejected() -> TestResult {
    let (_, bundle) = example_org()?;
    assert_eq!(rejection(&[], &bundle)?, X509SvidError::EmptyChain);
    Ok(())
}

#[test]
fn garbage_der_is_rejected() -> TestResult {
    let (_, bundle) = example_org()?;
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert_eq!(
        rejection(&[garbage], &bundle)?,
        X509SvidError::Malformed { index: 0 }
    );
    Ok(())
}

#[test]
fn chain_over_the_length_limit_is_rejected() -> TestResult {
    let (ca, bundle) = example_org()?;
    let leaf = ca.sign(&CertSpec::leaf())?;
    let chain = vec![leaf; MAX_CHAIN_LEN + 1];
    assert_eq!(
        rejection(&chain, &bundle)?,
        X509SvidError::ChainTooLong {
            len: MAX_CHAIN_LEN + 1
        }
    );
    Ok(())
}

#[test]
fn intermediate_that_is_not_a_ca_is_rejected() -> TestResult {
    let spec = CertSpec {
        is_ca: IsCa::ExplicitNoCa,
        ..example_intermediate()
    };
    assert_eq!(
        intermediate_rejection(spec)?,
        X509SvidError::SigningCertNotCa { index: 1 }
    );
    Ok(())
}

#[test]
fn intermediate_with_a_path_in_its_id_is_rejected() -> TestResult {
    let spec = CertSpec::ca("spiffe://example.org/intermediate", "intermediate CA");
    assert_eq!(
        intermediate_rejection(spec)?,
        X509SvidError::SigningCertIdHasPath {
            index: 1,
            id: SpiffeId::parse("spiffe://example.org/intermediate")?
        }
    );
    Ok(())
}

#[test]
fn intermediate_without_key_cert_sign_is_rejected() -> TestResult {
    let spec = CertSpec {
        key_usages: vec![KeyUsagePurpose::DigitalSignature],
        ..example_intermediate()
    };
    assert_eq!(
        intermediate_rejection(spec)?,
        X509SvidError::SigningCertLacksKeyCertSign { index: 1 }
    );
    Ok(())
}

#[test]
fn intermediate_without_key_usage_is_rejected() -> TestResult {
    let spec = CertSpec {
        key_usages: vec![],
        ..example_intermediate()
    };
    assert_eq!(
        intermediate_rejection(spec)?,
        X509SvidError::SigningCertMissingKeyUsage { index: 1 }
    );
    Ok(())
}

#[test]
fn concatenated_der_certificates_split_and_garbage_fails() -> Result<(), Error> {
    use zt_identity::x509::split_der_certificates;
    let ca = Ca::root("spiffe://example.org")?;
    let first = ca.sign(&CertSpec::leaf())?;
    let second = ca.sign(&CertSpec::ca("spiffe://example.org", "intermediate"))?;
    let both: Vec<u8> = first.iter().chain(second.iter()).copied().collect();
    assert_eq!(
        split_der_certificates(&both).unwrap(),
        vec![first.clone(), second]
    );
    assert!(split_der_certificates(&[]).unwrap().is_empty());
    assert!(
        split_der_certificates(&first[..first.len() - 1]).is_err(),
        "truncated"
    );
    let mut trailing = first.to_vec();
    trailing.extend_from_slice(&[0x30, 0x03, 0x02, 0x01]);
    assert!(
        split_der_certificates(&trailing).is_err(),
        "garbage after a certificate"
    );
    Ok(())
}
