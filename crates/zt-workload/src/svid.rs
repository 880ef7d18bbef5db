//! A Workload API X.509-SVID response decoded once, into typed parts: each
//! SVID's chain, key and bundle as DER values, the CRLs and the federated
//! bundles. Nothing here verifies; callers verify against the bundle.

use std::collections::BTreeMap;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zt_api::workload::X509svidResponse;

/// One X.509-SVID as the Workload API handed it out.
#[derive(Debug)]
pub struct X509Svid {
    /// The SPIFFE ID the response names (the leaf's is what counts).
    pub spiffe_id: String,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The SVID's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// The authorities of its trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
    /// The operator's hint for choosing among several SVIDs.
    pub hint: String,
}

/// A whole X.509-SVID response.
#[derive(Debug)]
pub struct X509Svids {
    /// In the order given: the first is the default.
    pub svids: Vec<X509Svid>,
    /// DER CRLs (zt agent's revocations; unverified here).
    pub crls: Vec<Vec<u8>>,
    /// Trust domain → its authorities.
    pub federated: BTreeMap<String, Vec<CertificateDer<'static>>>,
}

/// A response that does not decode: the field at fault and why.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DecodeError {
    /// The field, with the SPIFFE ID it belongs to.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Decodes `response`; an SVID without certificates, an unreadable key or a
/// malformed certificate list is an error naming the field.
pub fn decode(response: &X509svidResponse) -> Result<X509Svids, DecodeError> {
    let certificates = |field: String, bytes: &[u8]| {
        zt_identity::x509::split_der_certificates(bytes).map_err(|e| DecodeError {
            field,
            reason: e.to_string(),
        })
    };
    let svids = response
        .svids
        .iter()
        .map(|svid| {
            let id = &svid.spiffe_id;
            let chain = certificates(format!("x509_svid of {id}"), &svid.x509_svid)?;
            if chain.is_empty() {
                return Err(DecodeError {
                    field: format!("x509_svid of {id}"),
                    reason: "no certificate".into(),
                });
            }
            let key = PrivateKeyDer::try_from(svid.x509_svid_key.clone()).map_err(|e| DecodeError {
                field: format!("x509_svid_key of {id}"),
                reason: e.to_owned(),
            })?;
            Ok(X509Svid {
                spiffe_id: id.clone(),
                chain,
                key,
                bundle: certificates(format!("bundle of {id}"), &svid.bundle)?,
                hint: svid.hint.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let federated = response
        .federated_bundles
        .iter()
        .map(|(domain, der)| {
            Ok((
                domain.clone(),
                certificates(format!("federated bundle of {domain}"), der)?,
            ))
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok(X509Svids {
        svids,
        crls: response.crl.clone(),
        federated,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use zt_api::workload::X509svid;

    use super::*;

    fn svid(der: Vec<u8>, key: Vec<u8>) -> X509svid {
        X509svid {
            spiffe_id: "spiffe://example.org/web".into(),
            x509_svid: der,
            x509_svid_key: key,
            bundle: Vec::new(),
            hint: "web".into(),
        }
    }

    #[test]
    fn a_response_decodes_and_errors_name_the_field() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let hour = std::time::Duration::from_secs(3600);
        let ca = zt_ca::Authority::generate(
            zt_identity::TrustDomain::parse("example.org").unwrap(),
            zt_ca::KeyType::default(),
            hour,
            now,
        )
        .unwrap();
        let request = zt_ca::SvidRequest {
            spiffe_id: zt_identity::SpiffeId::parse("spiffe://example.org/web").unwrap(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            ttl: hour,
        };
        let issued = ca.issue_x509_svid(&request, now).unwrap();
        let chain: Vec<u8> = issued.chain.iter().flat_map(|c| c.to_vec()).collect();
        let key = zt_identity::x509::private_key_from_pem(issued.private_key_pem.as_bytes())
            .unwrap()
            .secret_der()
            .to_vec();
        let mut response = X509svidResponse {
            svids: vec![svid(chain.clone(), key.clone())],
            crl: vec![vec![1, 2]],
            federated_bundles: [("other.org".to_owned(), ca.certificate().to_vec())].into(),
        };
        let decoded = decode(&response).unwrap();
        assert_eq!(decoded.svids[0].chain.len(), issued.chain.len());
        assert_eq!(decoded.svids[0].hint, "web");
        assert_eq!(decoded.federated["other.org"].len(), 1);
        assert_eq!(decoded.crls, [vec![1, 2]]);

        response.svids = vec![svid(Vec::new(), key.clone())];
        let e = decode(&response).unwrap_err();
        assert_eq!(e.field, "x509_svid of spiffe://example.org/web");
        response.svids = vec![svid(chain.clone(), b"not a key".to_vec())];
        assert!(decode(&response).unwrap_err().field.starts_with("x509_svid_key"));
        response.svids = vec![svid(vec![0x30, 0x82, 0xff], key)];
        assert!(decode(&response).is_err());
    }
}
