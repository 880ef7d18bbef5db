//! Device keys in a real (software) TPM: swtpm instances started on loopback
//! ports, one per test, each with its own fresh state (its own seeds: another
//! machine's TPM as far as the keys can tell).
//!
//! Needs `swtpm` (scripts/setup-test-env installs it); without it these tests
//! fail, they do not skip.

#![cfg(feature = "tpm")]
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate: a panic is how a test fails"
)]

use std::path::Path;
use std::str::FromStr as _;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::{CommandCode, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{Digest, Public, SymmetricDefinition, SymmetricDefinitionObject};
use tss_esapi::{Context, TctiNameConf};
use zt_device::key::tpm::{KeyBlob, device_key_template, storage_key_template};
use zt_device::key::{DeviceKey, KeyChoice, KeyError, KeyKind, META_FILE, TPM_FILE, TpmLocation, p256_point};
use zt_testkit::swtpm::{Swtpm, free_port_pair};

/// The test's own view of the TPM.
trait TestTpm {
    fn location(&self) -> TpmLocation;
    fn context(&self) -> Context;
}

impl TestTpm for Swtpm {
    fn location(&self) -> TpmLocation {
        TpmLocation::tcti(self.tcti())
    }

    /// A context of the test's own on this TPM (swtpm serves one connection at
    /// a time: drop any `DeviceKey` on it first).
    fn context(&self) -> Context {
        let mut context = Context::new(TctiNameConf::from_str(&self.tcti()).unwrap()).unwrap();
        context.set_sessions((Some(AuthSession::Password), None, None));
        context
    }
}

fn verifies(key: &DeviceKey, message: &[u8], signature: &[u8]) -> bool {
    let spki = key.public_key_der();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, p256_point(&spki).unwrap())
        .verify(message, signature)
        .is_ok()
}

fn read_blob(dir: &Path) -> KeyBlob {
    let path = dir.join(TPM_FILE);
    KeyBlob::decode(&path, &std::fs::read(&path).unwrap()).unwrap()
}

/// Recreates the storage key and loads `public`/`private` under it.
fn load(context: &mut Context, blob: &KeyBlob) -> (KeyHandle, KeyHandle) {
    let primary = context
        .create_primary(
            Hierarchy::Owner,
            storage_key_template().unwrap(),
            None,
            None,
            None,
            None,
        )
        .unwrap()
        .key_handle;
    let key = context
        .load(primary, blob.private.clone(), blob.public.clone())
        .unwrap();
    (primary, key)
}

#[test]
fn tpm_key_signs_and_loads_again() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let created = DeviceKey::create(dir.path(), KeyChoice::Tpm, &tpm.location()).unwrap();
    assert_eq!(created.kind(), KeyKind::Tpm);
    let meta = std::fs::read_to_string(dir.path().join(META_FILE)).unwrap();
    assert_eq!(meta, r#"{"kind":"tpm"}"#);

    let signature = created.sign(b"posture report 1").unwrap();
    assert!(verifies(&created, b"posture report 1", &signature));
    assert!(!verifies(&created, b"posture report 2", &signature));
    // ECDSA signatures are randomised: two differ, both verify.
    let again = created.sign(b"posture report 1").unwrap();
    assert_ne!(signature, again);
    assert!(verifies(&created, b"posture report 1", &again));

    let spki = created.public_key_der();
    drop(created);
    let loaded = DeviceKey::load(dir.path(), &tpm.location()).unwrap();
    assert_eq!(loaded.kind(), KeyKind::Tpm);
    assert_eq!(loaded.public_key_der(), spki);
    let signature = loaded.sign(b"posture report 3").unwrap();
    assert!(verifies(&loaded, b"posture report 3", &signature));

    // The rustls key signs through the TPM as well.
    let loaded = std::sync::Arc::new(loaded);
    let signer = loaded
        .rustls_key()
        .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
        .unwrap();
    let signature = signer.sign(b"certificate verify").unwrap();
    assert!(verifies(&loaded, b"certificate verify", &signature));
}

#[test]
fn auto_picks_the_tpm_when_there_is_one() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = DeviceKey::create(dir.path(), KeyChoice::Auto, &tpm.location()).unwrap();
    assert_eq!(key.kind(), KeyKind::Tpm);
}

#[test]
fn the_private_key_is_never_on_disk() {
    let tpm = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = DeviceKey::create(dir.path(), KeyChoice::Tpm, &tpm.location()).unwrap();
    let spki = key.public_key_der();
    drop(key);

    // No file in the key directory is a private key, whole or from any offset.
    let mut files = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for start in 0..bytes.len() {
            let tail = &bytes[start..];
            assert!(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, tail).is_err(),
                "{} parses as PKCS#8 from byte {start}",
                path.display()
            );
            assert!(
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, tail).is_err(),
                "{} parses as a SEC1/PKCS#8 private key from byte {start}",
                path.display()
            );
        }
    }
    assert_eq!(files, 2, "device-key.json and device-key.tpm only");

    // The TPM says the key is fixed to it and to its parent.
    let blob = read_blob(dir.path());
    let mut context = tpm.context();
    let (primary, handle) = load(&mut context, &blob);
    // TPM2_ReadPublic takes no authorisation: no session with it.
    let (public, _, _) = context
        .execute_without_session(|context| context.read_public(handle))
        .unwrap();
    let attributes = public.object_attributes();
    assert!(attributes.fixed_tpm(), "fixedTPM clear");
    assert!(attributes.fixed_parent(), "fixedParent clear");
    assert!(attributes.sensitive_data_origin(), "sensitiveDataOrigin clear");
    assert!(attributes.sign_encrypt() && !attributes.decrypt() && !attributes.restricted());
    assert_eq!(public, blob.public);
    assert_eq!(
        tss_esapi::utils::PublicKey::try_from(public).unwrap(),
        tss_esapi::utils::PublicKey::Ecc {
            x: p256_point(&spki).unwrap()[1..33].to_vec(),
            y: p256_point(&spki).unwrap()[33..].to_vec(),
        }
    );

    // And refuses to duplicate it, with a policy session that would satisfy a
    // duplication policy.
    // (It has no policy at all, so the TPM fails the policy session first:
    // TPM_RC_POLICY_FAIL.)
    let Err(refused) = duplicate(&mut context, handle) else {
        panic!("the TPM duplicated the device key");
    };
    assert!(
        refused.to_string().to_lowercase().contains("policy"),
        "device key refused, but not by its policy check: {refused}"
    );
    // swtpm has room for three transient objects: make some.
    context.flush_context(handle.into()).unwrap();

    // The refusal is the key's, not this test's: a twin without fixedTPM and
    // fixedParent, whose policy allows duplication, is duplicated...
    let policy = duplication_policy(&mut context);
    let twin = create_twin(&mut context, primary, &policy, false);
    duplicate(&mut context, twin).unwrap();
    context.flush_context(twin.into()).unwrap();
    // ...and the same twin with fixedParent set is refused for its attributes.
    let fixed_twin = create_twin(&mut context, primary, &policy, true);
    let err = duplicate(&mut context, fixed_twin).unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("attribute"),
        "fixedParent twin refused, but not for its attributes: {err}"
    );
}

/// TPM2_Duplicate of `key` to no new parent, authorised by a policy session
/// that has run TPM2_PolicyCommandCode(TPM2_CC_Duplicate); the result is that
/// of TPM2_Duplicate alone (the session's setup must succeed).
fn duplicate(context: &mut Context, key: KeyHandle) -> tss_esapi::Result<()> {
    let session = policy_session(context, SessionType::Policy);
    let result = context.execute_with_session(Some(session), |context| {
        context.duplicate(
            ObjectHandle::from(key),
            ObjectHandle::Null,
            None,
            SymmetricDefinitionObject::Null,
        )
    });
    context
        .execute_without_session(|context| {
            context.flush_context(ObjectHandle::from(SessionHandle::from(session)))
        })
        .unwrap();
    result.map(|_| ())
}

/// A policy (or trial) session that has run TPM2_PolicyCommandCode(TPM2_CC_Duplicate).
fn policy_session(context: &mut Context, kind: SessionType) -> AuthSession {
    context.execute_without_session(|context| {
        let session = context
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .unwrap()
            .unwrap();
        context
            .policy_command_code(PolicySession::try_from(session).unwrap(), CommandCode::Duplicate)
            .unwrap();
        session
    })
}

/// The policy digest of TPM2_PolicyCommandCode(TPM2_CC_Duplicate).
fn duplication_policy(context: &mut Context) -> Digest {
    let trial = policy_session(context, SessionType::Trial);
    context.execute_without_session(|context| {
        let digest = context
            .policy_get_digest(PolicySession::try_from(trial).unwrap())
            .unwrap();
        context
            .flush_context(ObjectHandle::from(SessionHandle::from(trial)))
            .unwrap();
        digest
    })
}

/// A signing key like the device key but whose policy allows duplication,
/// with fixedTPM and fixedParent both `fixed` (the device key's) or both clear.
fn create_twin(context: &mut Context, parent: KeyHandle, policy: &Digest, fixed: bool) -> KeyHandle {
    let template = device_key_template().unwrap();
    let Public::Ecc {
        parameters,
        unique,
        name_hashing_algorithm,
        ..
    } = template
    else {
        panic!("the device key template is not ECC");
    };
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(fixed)
        .with_fixed_parent(fixed)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .unwrap();
    let public = tss_esapi::structures::PublicBuilder::new()
        .with_public_algorithm(tss_esapi::interface_types::algorithm::PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(name_hashing_algorithm)
        .with_object_attributes(attributes)
        .with_auth_policy(policy.clone())
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(unique)
        .build()
        .unwrap();
    let created = context.create(parent, public, None, None, None, None).unwrap();
    context
        .load(parent, created.out_private, created.out_public)
        .unwrap()
}

#[test]
fn another_tpm_cannot_load_the_key() {
    let first = Swtpm::start();
    let dir = tempfile::tempdir().unwrap();
    let key = DeviceKey::create(dir.path(), KeyChoice::Tpm, &first.location()).unwrap();
    drop(key);

    // The same files on another machine: another TPM, other seeds.
    let second = Swtpm::start();
    let err = DeviceKey::load(dir.path(), &second.location()).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, KeyError::Tpm { .. }), "{message}");
    assert!(message.contains("TPM2_Load"), "{message}");
    assert!(message.contains(&second.tcti()), "{message}");
    assert!(
        message.contains(&dir.path().join(TPM_FILE).display().to_string()),
        "{message}"
    );
    assert!(message.contains("was not made by this TPM"), "{message}");

    // The first TPM still loads it.
    let key = DeviceKey::load(dir.path(), &first.location()).unwrap();
    let signature = key.sign(b"still here").unwrap();
    assert!(verifies(&key, b"still here", &signature));
}

#[test]
fn no_tpm_at_the_location() {
    // A port nothing listens on.
    let port = free_port_pair();
    let dir = tempfile::tempdir().unwrap();
    let tpm = TpmLocation::tcti(format!("swtpm:host=127.0.0.1,port={port}"));
    let err = DeviceKey::create(dir.path(), KeyChoice::Tpm, &tpm).unwrap_err();
    assert!(matches!(err, KeyError::Tpm { .. }), "{err}");
    assert!(err.to_string().contains(&format!("port={port}")), "{err}");
    assert!(!dir.path().join(META_FILE).exists());
}
