//! Envoy's Secret Discovery Service (`envoy.service.secret.v3`), on the
//! Workload API socket, as SPIRE's agent serves it: Envoy gets its SVIDs and
//! trust bundles from zt agent, and new ones on the open stream whenever they
//! rotate.
//!
//! The caller is attested from the kernel as for the Workload API (Envoy does
//! not send the Workload API's security header, so SDS does not ask for it).
//! Secret names, as SPIRE's:
//! - a SPIFFE ID the caller is entitled to: a `tls_certificate` with its SVID;
//!   [`DEFAULT_SVID`] (`default`): the caller's first SVID;
//! - the trust domain's ID (`spiffe://example.org`) and [`DEFAULT_BUNDLE`]
//!   (`ROOTCA`): a validation context with its bundle; [`ALL_BUNDLES`] (`ALL`):
//!   one with every bundle. For Envoy 1.18 and later, validation contexts use
//!   Envoy's SPIFFE certificate validator (`envoy.tls.cert_validator.spiffe`),
//!   which checks that a peer's trust domain is the bundle's; older Envoys get
//!   the bundle as `trusted_ca`.
//!
//! No names asked: everything the caller may have, under SPIFFE IDs. A name the
//! caller is not entitled to ends the stream with `INVALID_ARGUMENT`, as in SPIRE.
//!
//! A stream answers a request whose names differ from the last ones, and sends
//! again when what those names hold changes; the response to an update carries
//! a fresh version and nonce. Envoy's ACKs and NACKs (`response_nonce`,
//! `error_detail`) change nothing: a rejected version is logged and not sent
//! again, and a request for a stale nonce is ignored.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, TypedExtensionConfig, data_source, node};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::spiffe_cert_validator_config::TrustDomain as SpiffeTrustDomain;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message as _, Name as _};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use zt_identity::Bundle;

use crate::attest::Workload;
use crate::cache::Snapshot;
use crate::workload_api::{ResponseStream, View, WorkloadApi, matching};
use crate::{now, stopped};

/// The secret holding the caller's first SVID.
pub const DEFAULT_SVID: &str = "default";
/// The validation context with the agent's own trust domain's bundle.
pub const DEFAULT_BUNDLE: &str = "ROOTCA";
/// The validation context with every bundle the agent has.
pub const ALL_BUNDLES: &str = "ALL";
/// Envoy's name for its SPIFFE certificate validator.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

/// What one stream asked for and was last sent.
#[derive(Default)]
struct StreamState {
    /// The names of the last request; `None` before the first.
    names: Option<BTreeSet<String>>,
    /// Whether Envoy can use the SPIFFE validator (from its node's version).
    spiffe_validator: bool,
    /// The secrets last sent, to send only what changed.
    sent: Option<Vec<Secret>>,
    /// The version of the content last built (sent or not).
    version: u64,
    /// The nonce of the last response; empty before the first.
    nonce: String,
}

impl StreamState {
    /// Takes in a request; returns whether a response is due (new names).
    fn take_request(&mut self, request: &DiscoveryRequest, pid: i32) -> bool {
        if !self.nonce.is_empty() && request.response_nonce != self.nonce {
            tracing::debug!(pid, nonce = %request.response_nonce, expected = %self.nonce, "SDS: a request for a stale response: ignored");
            return false;
        }
        if let Some(error) = &request.error_detail {
            // A NACK: Envoy keeps what it had. The same secrets are not sent
            // again; the next change is.
            tracing::warn!(pid, version = %request.version_info, names = ?request.resource_names, error = %error.message, "SDS: Envoy rejected the secrets sent");
        }
        if let Some(node) = &request.node {
            self.spiffe_validator = supports_spiffe_validator(node);
        }
        let names = requested(&request.resource_names);
        let changed = self.names.as_ref() != Some(&names);
        self.names = Some(names);
        if changed {
            // New names: whatever was sent is not what they hold.
            self.sent = None;
        }
        changed
    }

    /// The response to send for `secrets`, if they differ from the last sent.
    fn respond(&mut self, secrets: Vec<Secret>, type_url: &str) -> Option<DiscoveryResponse> {
        if self.sent.as_ref() == Some(&secrets) {
            return None;
        }
        self.version += 1;
        self.nonce = nonce();
        let response = DiscoveryResponse {
            version_info: self.version.to_string(),
            resources: secrets.iter().map(pack).collect(),
            type_url: type_url.to_owned(),
            nonce: self.nonce.clone(),
            ..Default::default()
        };
        self.sent = Some(secrets);
        Some(response)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for WorkloadApi {
    type DeltaSecretsStream = ResponseStream<DeltaDiscoveryResponse>;
    type StreamSecretsStream = ResponseStream<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "incremental SDS is not supported by this agent: use StreamSecrets",
        ))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let workload = self.attest(&request).await?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let mut snapshots = self.snapshots.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut state = StreamState::default();
            let type_url = Secret::type_url();
            loop {
                let due = tokio::select! {
                    next = requests.message() => match next {
                        Ok(Some(request)) => {
                            if !request.type_url.is_empty() && request.type_url != type_url {
                                let why = format!("SDS serves {type_url}, not {}", request.type_url);
                                let _ = tx.send(Err(Status::invalid_argument(why))).await;
                                return;
                            }
                            state.take_request(&request, workload.pid)
                        }
                        // Envoy closed its side, or the connection is gone.
                        Ok(None) | Err(_) => return,
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            let _ = tx.send(Err(Status::unavailable("the agent is stopping"))).await;
                            return;
                        }
                        // Seen, even before the first request: no spinning on it.
                        snapshots.borrow_and_update();
                        state.names.is_some()
                    }
                    _ = tx.closed() => return,
                    () = stopped(&mut stop) => {
                        let _ = tx.send(Err(Status::unavailable("the agent is stopping"))).await;
                        return;
                    }
                };
                let Some(names) = state.names.as_ref().filter(|_| due) else {
                    continue;
                };
                let snapshot = snapshots.borrow().clone();
                match secrets(&snapshot, &workload, names, state.spiffe_validator) {
                    Secrets::Wait => {}
                    Secrets::Denied(why) => {
                        let _ = tx.send(Err(why)).await;
                        return;
                    }
                    Secrets::Ready(secrets) => {
                        if let Some(response) = state.respond(secrets, &type_url) {
                            tracing::debug!(pid = workload.pid, version = %response.version_info, count = response.resources.len(), "SDS: sending secrets");
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let workload = self.attest(&request).await?;
        let request = request.into_inner();
        let names = requested(&request.resource_names);
        let validator = request.node.as_ref().is_some_and(supports_spiffe_validator);
        let mut snapshots = self.snapshots.clone();
        let wait = snapshots.wait_for(|s| !matches!(secrets(s, &workload, &names, validator), Secrets::Wait));
        let snapshot = match tokio::time::timeout(std::time::Duration::from_secs(5), wait).await {
            Ok(Ok(snapshot)) => snapshot.clone(),
            _ => return Err(Status::unavailable("the agent has no secrets to serve yet")),
        };
        match secrets(&snapshot, &workload, &names, validator) {
            Secrets::Ready(secrets) => Ok(Response::new(DiscoveryResponse {
                resources: secrets.iter().map(pack).collect(),
                type_url: Secret::type_url(),
                ..Default::default()
            })),
            Secrets::Denied(why) => Err(why),
            Secrets::Wait => Err(Status::unavailable("the agent has no secrets to serve yet")),
        }
    }
}

/// What a caller is to be sent now.
enum Secrets {
    /// Nothing yet (starting, or an SVID is being signed).
    Wait,
    /// It may not have what it asked: the stream ends with this.
    Denied(Status),
    Ready(Vec<Secret>),
}

/// The secrets `names` (all the caller may have when empty) hold for `workload`.
fn secrets(
    snapshot: &Snapshot,
    workload: &Workload,
    names: &BTreeSet<String>,
    spiffe_validator: bool,
) -> Secrets {
    let identities = match matching(snapshot, workload) {
        View::Ready(identities) => identities,
        View::Wait => return Secrets::Wait,
        View::Denied(why) => return Secrets::Denied(Status::permission_denied(why)),
    };
    let Some(bundle) = &snapshot.bundle else {
        return Secrets::Wait;
    };
    let all = names.is_empty();
    let mut wanted = names.clone();
    let mut out = Vec::new();
    let td_id = bundle.trust_domain().id().to_string();
    for name in [td_id.as_str(), DEFAULT_BUNDLE, ALL_BUNDLES] {
        if (all && name == td_id) || wanted.remove(name) {
            out.push(validation_context(name, bundle, spiffe_validator));
        }
    }
    let now = now();
    for (i, identity) in identities.iter().enumerate() {
        let id = identity.entry.spiffe_id.as_str();
        let asked = all || wanted.contains(id);
        let default = i == 0 && wanted.contains(DEFAULT_SVID);
        if !asked && !default {
            continue;
        }
        let Some(svid) = identity.svid.as_ref().filter(|s| now < s.not_after) else {
            // Its SVID is still being signed: wait for it rather than send less.
            return Secrets::Wait;
        };
        if asked {
            wanted.remove(id);
            out.push(tls_certificate(id, svid));
        }
        if default {
            wanted.remove(DEFAULT_SVID);
            out.push(tls_certificate(DEFAULT_SVID, svid));
        }
    }
    if !wanted.is_empty() {
        let names: Vec<&String> = wanted.iter().collect();
        return Secrets::Denied(Status::invalid_argument(format!(
            "workload is not authorized for the requested identities {names:?}"
        )));
    }
    Secrets::Ready(out)
}

fn tls_certificate(name: &str, svid: &crate::cache::X509Material) -> Secret {
    let chain: String = svid.chain.iter().map(zt_identity::x509::to_pem).collect();
    let key = zt_identity::x509::pem_encode("PRIVATE KEY", &svid.key_pkcs8);
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain.into_bytes())),
            private_key: Some(inline(key.into_bytes())),
            ..Default::default()
        })),
    }
}

fn validation_context(name: &str, bundle: &Bundle, spiffe_validator: bool) -> Secret {
    let pem = bundle.to_pem().into_bytes();
    let context = if spiffe_validator {
        let config = SpiffeCertValidatorConfig {
            trust_domains: vec![SpiffeTrustDomain {
                name: bundle.trust_domain().name().to_owned(),
                trust_bundle: Some(inline(pem)),
                ..Default::default()
            }],
            ..Default::default()
        };
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.to_owned(),
                typed_config: Some(Any {
                    type_url: SpiffeCertValidatorConfig::type_url(),
                    value: config.encode_to_vec(),
                }),
            }),
            ..Default::default()
        }
    } else {
        CertificateValidationContext {
            trusted_ca: Some(inline(pem)),
            ..Default::default()
        }
    };
    Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    }
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

fn pack(secret: &Secret) -> Any {
    Any {
        type_url: Secret::type_url(),
        value: secret.encode_to_vec(),
    }
}

/// Envoy 1.18 and later have the SPIFFE certificate validator (SPIRE's test).
fn supports_spiffe_validator(node: &Node) -> bool {
    match &node.user_agent_version_type {
        Some(node::UserAgentVersionType::UserAgentBuildVersion(build)) => build
            .version
            .as_ref()
            .is_some_and(|v| v.major_number > 1 || (v.major_number == 1 && v.minor_number >= 18)),
        _ => false,
    }
}

/// 64 random bits in hex.
fn nonce() -> String {
    let mut bytes = [0u8; 8];
    // The system RNG does not fail on Linux.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret names a request asks for (an empty name is none).
fn requested(names: &[String]) -> BTreeSet<String> {
    names.iter().filter(|n| !n.is_empty()).cloned().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use std::sync::Arc;

    use envoy_types::pb::google::rpc;
    use zt_api::agent::Entry;
    use zt_identity::TrustDomain;

    use super::*;
    use crate::cache::{Identity, Status as ServeStatus, X509Material};

    fn request(names: &[&str], nonce: &str, nack: bool) -> DiscoveryRequest {
        DiscoveryRequest {
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            response_nonce: nonce.to_owned(),
            type_url: Secret::type_url(),
            error_detail: nack.then(|| rpc::Status {
                code: 3,
                message: "bad".into(),
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn secret(name: &str) -> Secret {
        Secret {
            name: name.into(),
            r#type: None,
        }
    }

    #[test]
    fn acks_and_nacks_send_nothing_new_names_and_changes_do() {
        let mut state = StreamState::default();
        let url = Secret::type_url();
        assert!(state.take_request(&request(&["default"], "", false), 1));
        let first = state.respond(vec![secret("default")], &url).unwrap();
        assert_eq!(first.version_info, "1");
        assert_eq!(first.resources.len(), 1);
        // The ACK, and a NACK of the same response: nothing to send.
        assert!(!state.take_request(&request(&["default"], &first.nonce, false), 1));
        assert!(!state.take_request(&request(&["default"], &first.nonce, true), 1));
        // Unchanged secrets are not sent again, whatever wakes the stream.
        assert!(state.respond(vec![secret("default")], &url).is_none());
        // A request answering an older response is stale.
        assert!(!state.take_request(&request(&["default", "ROOTCA"], "stale", false), 1));
        // New names are answered, even with secrets sent before.
        assert!(state.take_request(&request(&["default", "ROOTCA"], &first.nonce, false), 1));
        let second = state
            .respond(vec![secret("default"), secret("ROOTCA")], &url)
            .unwrap();
        assert_eq!(second.version_info, "2");
        assert_ne!(second.nonce, first.nonce);
        // A rotation is sent after a NACK too.
        assert!(!state.take_request(&request(&["default", "ROOTCA"], &second.nonce, true), 1));
        let mut rotated = secret("default");
        rotated.r#type = Some(secret::Type::ValidationContext(Default::default()));
        assert!(state.respond(vec![rotated, secret("ROOTCA")], &url).is_some());
    }

    fn snapshot() -> Snapshot {
        let td = TrustDomain::parse("example.org").unwrap();
        let ca = zt_ca::Authority::generate(
            td,
            zt_ca::KeyType::EcP256,
            std::time::Duration::from_secs(3600),
            now(),
        )
        .unwrap();
        let identity = |id: &str, uid: &str| Identity {
            entry: Entry {
                id: id.into(),
                spiffe_id: format!("spiffe://example.org/{id}"),
                selectors: vec![format!("unix:uid:{uid}")],
                ..Entry::default()
            },
            svid: Some(Arc::new(X509Material {
                spiffe_id: format!("spiffe://example.org/{id}"),
                chain: Vec::new(),
                key_pkcs8: vec![1, 2, 3],
                serial: "01".into(),
                not_before: 0,
                not_after: now() + 3600,
                rotate_at: now() + 1800,
                revision: 1,
            })),
        };
        Snapshot {
            status: ServeStatus::Serving,
            identities: Arc::new(vec![
                identity("web", "1000"),
                identity("api", "1000"),
                identity("db", "2000"),
            ]),
            bundle: Some(Arc::new(ca.bundle().unwrap())),
            ..Snapshot::default()
        }
    }

    fn names_of(found: Secrets) -> Vec<String> {
        match found {
            Secrets::Ready(secrets) => secrets.into_iter().map(|s| s.name).collect(),
            Secrets::Denied(status) => vec![format!("denied: {}", status.message())],
            Secrets::Wait => vec!["wait".into()],
        }
    }

    #[test]
    fn secrets_are_named_as_spire_names_them() {
        let snapshot = snapshot();
        let web = Workload {
            pid: 1,
            selectors: vec!["unix:uid:1000".into()],
        };
        let ask = |names: &[&str]| {
            let names = names.iter().map(|n| (*n).to_owned()).collect();
            names_of(secrets(&snapshot, &web, &names, true))
        };
        assert_eq!(
            ask(&[]),
            [
                "spiffe://example.org",
                "spiffe://example.org/web",
                "spiffe://example.org/api"
            ]
        );
        assert_eq!(ask(&["default", "ROOTCA", "ALL"]), ["ROOTCA", "ALL", "default"]);
        assert_eq!(ask(&["spiffe://example.org/api"]), ["spiffe://example.org/api"]);
        // Another workload's identity is not the caller's to have.
        assert_eq!(
            ask(&["spiffe://example.org/db", "default"]),
            ["denied: workload is not authorized for the requested identities [\"spiffe://example.org/db\"]"]
        );
        let nobody = Workload {
            pid: 2,
            selectors: vec!["unix:uid:3000".into()],
        };
        assert_eq!(
            names_of(secrets(&snapshot, &nobody, &BTreeSet::new(), true)),
            ["denied: no identity issued"]
        );
    }

    #[test]
    fn validation_contexts_use_the_spiffe_validator_for_envoys_that_have_it() {
        let snapshot = snapshot();
        let bundle = snapshot.bundle.as_ref().unwrap();
        let Some(secret::Type::ValidationContext(spiffe)) = validation_context("ALL", bundle, true).r#type
        else {
            panic!("not a validation context");
        };
        let config = spiffe.custom_validator_config.unwrap();
        assert_eq!(config.name, SPIFFE_VALIDATOR);
        let typed = config.typed_config.unwrap();
        let decoded = SpiffeCertValidatorConfig::decode(typed.value.as_slice()).unwrap();
        assert_eq!(decoded.trust_domains[0].name, "example.org");
        let Some(secret::Type::ValidationContext(plain)) = validation_context("ROOTCA", bundle, false).r#type
        else {
            panic!("not a validation context");
        };
        assert!(plain.custom_validator_config.is_none());
        assert!(plain.trusted_ca.is_some());
        let mut envoy = Node::default();
        assert!(!supports_spiffe_validator(&envoy));
        envoy.user_agent_version_type = Some(node::UserAgentVersionType::UserAgentBuildVersion(
            envoy_types::pb::envoy::config::core::v3::BuildVersion {
                version: Some(envoy_types::pb::envoy::r#type::v3::SemanticVersion {
                    major_number: 1,
                    minor_number: 40,
                    patch: 0,
                }),
                ..Default::default()
            },
        ));
        assert!(supports_spiffe_validator(&envoy));
    }
}
