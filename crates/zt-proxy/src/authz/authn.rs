//! The RequestAuthentications in force for this workload, made ready to
//! verify tokens: one [`zt_authn::Issuer`] per `jwtRules` entry, built when
//! the policies or the identity change.
//!
//! A `jwksUri`'s keys are fetched over HTTPS trusting the proxy's SPIFFE trust
//! bundles and the `--jwks-ca` certificates, and kept across policy changes
//! (one background fetcher per URI) as long as those roots stay the same.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use zt_authn::request::Rule;
use zt_authn::{Keys, RemoteSettings};
use zt_policy::WorkloadAuthentication;
use zt_policy::request_authentication::JwksSource;

use crate::identity::Identity;

/// Every rule that applies to the workload, and the headers they set.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    /// In policy (`namespace/name`) order, then as written.
    pub(crate) rules: Vec<Rule>,
    /// Every header some rule sets for the app (lower case): the client's
    /// own are removed from every request.
    pub(crate) output_headers: Vec<String>,
}

impl Rules {
    /// Whether authentication has nothing to do.
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// The remote key sets, kept from one build to the next.
#[derive(Default)]
pub(super) struct KeysCache {
    /// The roots the TLS configuration was made of, and it.
    tls: Option<(Vec<CertificateDer<'static>>, Option<Arc<rustls::ClientConfig>>)>,
    /// By URI.
    remote: HashMap<String, Keys>,
}

impl KeysCache {
    /// The rules of `workload`, ready; `extra_roots` are `--jwks-ca`'s.
    pub(super) fn build(
        &mut self,
        workload: &WorkloadAuthentication,
        identity: Option<&Identity>,
        extra_roots: &[CertificateDer<'static>],
    ) -> Rules {
        let mut roots: Vec<CertificateDer<'static>> = identity
            .map(|i| {
                i.bundles
                    .iter()
                    .flat_map(|b| b.x509_authorities().iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        roots.extend(extra_roots.iter().cloned());
        let tls = match &self.tls {
            Some((had, config)) if *had == roots => config.clone(),
            _ => {
                let config = client_config(&roots);
                self.tls = Some((roots, config.clone()));
                // New roots: every fetcher starts again with them.
                self.remote.clear();
                config
            }
        };
        let mut remote = HashMap::new();
        let mut rules = Vec::new();
        for (policy, rule) in workload.rules() {
            let keys = match &rule.jwks {
                JwksSource::Inline(jwks) => match Keys::inline(jwks) {
                    Ok(keys) => keys,
                    Err(error) => {
                        // Checked at load; should it fail here, the rule verifies nothing.
                        tracing::error!(policy = %policy.id(), issuer = %rule.issuer, %error, "inline jwks unusable; the rule accepts no token");
                        continue;
                    }
                },
                JwksSource::Uri(uri) => {
                    let Some(tls) = &tls else {
                        tracing::error!(policy = %policy.id(), issuer = %rule.issuer, "no TLS configuration for jwksUri fetches; the rule accepts no token");
                        continue;
                    };
                    let keys = self.remote.remove(uri).or_else(|| remote.get(uri).cloned());
                    let keys = keys
                        .unwrap_or_else(|| Keys::remote(uri.clone(), tls.clone(), RemoteSettings::default()));
                    remote.insert(uri.clone(), keys.clone());
                    keys
                }
            };
            rules.push(Rule::new(rule.clone(), keys));
        }
        // Fetchers of URIs no rule names any more stop with their last handle.
        self.remote = remote;
        Rules {
            rules,
            output_headers: workload.output_headers(),
        }
    }
}

/// A TLS 1.2/1.3 client trusting `roots` (certificates that are not usable
/// anchors are skipped).
fn client_config(roots: &[CertificateDer<'static>]) -> Option<Arc<rustls::ClientConfig>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        if let Err(error) = store.add(root.clone()) {
            tracing::warn!(%error, "a trust root is not usable for jwksUri fetches");
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(builder) => Some(Arc::new(
            builder.with_root_certificates(store).with_no_client_auth(),
        )),
        Err(error) => {
            tracing::error!(%error, "no TLS configuration for jwksUri fetches");
            None
        }
    }
}
