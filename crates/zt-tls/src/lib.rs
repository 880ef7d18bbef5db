//! rustls configurations that authenticate both ends by X.509-SVID.
//!
//! Peers are authenticated by SPIFFE ID, not host name: the verifiers here run the
//! full X.509-SVID verification of `zt-identity` against the bundle of the peer's
//! trust domain, then check the ID against what the caller expects. TLS 1.3 only
//! unless TLS 1.2 is asked for by name.

#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use zt_identity::{BundleSet, Purpose, SpiffeId, TrustDomain, X509SvidError, verify_x509_svid};

/// Which TLS versions a configuration speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// TLS 1.3 only (the default).
    #[default]
    Tls13,
    /// TLS 1.3 and, for peers that cannot do better, TLS 1.2.
    Tls12AndTls13,
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS12_AND_TLS13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

impl TlsVersions {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        match self {
            TlsVersions::Tls13 => TLS13_ONLY,
            TlsVersions::Tls12AndTls13 => TLS12_AND_TLS13,
        }
    }
}

/// Which verified peers are acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatcher {
    /// Any peer whose SVID verifies against the bundles.
    Any,
    /// Only these IDs.
    OneOf(Vec<SpiffeId>),
    /// Any ID of this trust domain.
    MemberOf(TrustDomain),
}

impl PeerMatcher {
    /// Whether `id` is acceptable.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            PeerMatcher::Any => true,
            PeerMatcher::OneOf(ids) => ids.contains(id),
            PeerMatcher::MemberOf(td) => id.trust_domain() == td,
        }
    }
}

/// Why a configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// rustls refused the certificate, key or versions.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// Not one certificate of the root bundle could be used.
    #[error("no usable CA certificate in the bundle")]
    NoRoots,
}

/// A peer SVID that verified but is not among the expected IDs.
#[derive(Debug)]
struct UnexpectedPeer(SpiffeId);

impl fmt::Display for UnexpectedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {} is not an expected identity", self.0)
    }
}

impl std::error::Error for UnexpectedPeer {}

/// A TLS failure as one readable line: rustls prints a reason of its own
/// (`CertificateError::Other`) as a debug dump, so the reason's own message is
/// used instead (`invalid peer certificate: peer spiffe://… is not an expected
/// identity`). Takes the I/O error a handshake over tokio-rustls fails with.
pub fn handshake_error_text(error: &std::io::Error) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(reason)))) => {
            format!("invalid peer certificate: {reason}")
        }
        Some(tls) => tls_error_text(tls),
        None => error.to_string(),
    }
}

/// A rustls error as one line that says what to change when the peer cannot
/// speak TLS 1.3: zt requires it by default, while Envoy's upstream TLS, for
/// one, stops at TLS 1.2 unless told otherwise.
pub fn tls_error_text(error: &rustls::Error) -> String {
    use rustls::PeerIncompatible as P;
    match error {
        rustls::Error::PeerIncompatible(P::SupportedVersionsExtensionRequired) => {
            format!(
                "{error}: the peer offered only TLS 1.2 and zt requires TLS 1.3; on the peer, allow TLS 1.3 \
                 (Envoy: tls_params: {{tls_maximum_protocol_version: TLSv1_3}} in its upstream TLS context), \
                 or accept TLS 1.2 on zt's side (zt proxy --tls12)"
            )
        }
        rustls::Error::PeerIncompatible(P::Tls12NotOffered | P::Tls12NotOfferedOrEnabled) => {
            format!("{error}: the peer and zt share no TLS version; zt speaks TLS 1.3 (and 1.2 when enabled)")
        }
        other => other.to_string(),
    }
}

/// Verifies a peer's certificate as an X.509-SVID against the bundle of its trust
/// domain, then its SPIFFE ID against `peers`. One type serves both ends: as a
/// rustls client verifier (the peer is a TLS client) and as a server verifier (the
/// server name is not used: the SPIFFE ID is what must match).
#[derive(Debug)]
pub struct SpiffeVerifier {
    bundles: Arc<BundleSet>,
    peers: PeerMatcher,
    algorithms: WebPkiSupportedAlgorithms,
    client_auth_mandatory: bool,
}

impl SpiffeVerifier {
    /// A verifier of peers whose SVID verifies against `bundles` and matches `peers`;
    /// as a client verifier, it requires a client certificate.
    pub fn new(bundles: Arc<BundleSet>, peers: PeerMatcher) -> Self {
        Self {
            bundles,
            peers,
            algorithms: provider().signature_verification_algorithms,
            client_auth_mandatory: true,
        }
    }

    /// Like [`SpiffeVerifier::new`], but a client may also connect without a
    /// certificate (a node agent before attestation); a certificate it does present
    /// must verify. The server must then check per request who the peer is.
    pub fn client_optional(bundles: Arc<BundleSet>, peers: PeerMatcher) -> Self {
        Self {
            client_auth_mandatory: false,
            ..Self::new(bundles, peers)
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        purpose: Purpose,
    ) -> Result<(), rustls::Error> {
        verify_peer(
            &self.bundles,
            &self.peers,
            end_entity,
            intermediates,
            now,
            purpose,
        )
    }

    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> SignatureResult {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> SignatureResult {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

type SignatureResult = Result<HandshakeSignatureValid, rustls::Error>;

impl ClientCertVerifier for SpiffeVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.client_auth_mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SPIFFE peers present their one SVID; hints would only leak the bundle.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Purpose::ClientAuth)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> SignatureResult {
        self.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> SignatureResult {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now, Purpose::ServerAuth)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> SignatureResult {
        self.tls12(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> SignatureResult {
        self.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server configuration presenting `chain`/`key` and requiring client SVIDs.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: Arc<BundleSet>,
    peers: PeerMatcher,
    versions: TlsVersions,
) -> Result<ServerConfig, TlsConfigError> {
    server_config_with(SpiffeVerifier::new(bundles, peers), chain, key, versions)
}

/// Like [`server_config`], but clients may also connect without a certificate; one
/// that is presented must verify. For servers that authenticate some calls otherwise
/// (zt server's node attestation) and check the peer of every other call.
pub fn server_config_client_optional(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: Arc<BundleSet>,
    peers: PeerMatcher,
    versions: TlsVersions,
) -> Result<ServerConfig, TlsConfigError> {
    server_config_with(
        SpiffeVerifier::client_optional(bundles, peers),
        chain,
        key,
        versions,
    )
}

fn server_config_with(
    verifier: SpiffeVerifier,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: TlsVersions,
) -> Result<ServerConfig, TlsConfigError> {
    Ok(ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions.versions())?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?)
}

/// A client configuration presenting `chain`/`key` and requiring a server SVID that matches `peers`.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: Arc<BundleSet>,
    peers: PeerMatcher,
    versions: TlsVersions,
) -> Result<ClientConfig, TlsConfigError> {
    let verifier = Arc::new(SpiffeVerifier::new(bundles, peers));
    Ok(ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions.versions())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(chain, key)?)
}

/// A client configuration with no certificate of its own, requiring a server SVID
/// that matches `peers`: for a node agent before it has an SVID.
pub fn client_config_anonymous(
    bundles: Arc<BundleSet>,
    peers: PeerMatcher,
    versions: TlsVersions,
) -> Result<ClientConfig, TlsConfigError> {
    let verifier = Arc::new(SpiffeVerifier::new(bundles, peers));
    Ok(ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions.versions())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// A server configuration for the web: `chain`/`key` (a certificate for host
/// names, from any CA), no client certificates, `alpn` offered in order.
pub fn web_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: TlsVersions,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions.versions())?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// As [`web_server_config`], and a client may present a certificate of the
/// trust domains in `bundles` (a device certificate): verified when
/// presented, never required. Who the client is must then be checked per
/// request.
pub fn web_server_config_client_optional(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    bundles: Arc<BundleSet>,
    versions: TlsVersions,
    alpn: &[&[u8]],
) -> Result<ServerConfig, TlsConfigError> {
    let mut config = server_config_with(
        SpiffeVerifier::client_optional(bundles, PeerMatcher::Any),
        chain,
        key,
        versions,
    )?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client configuration for the web: servers verified by host name against
/// `roots` (an operator's CA bundle, or the system's), no client certificate.
pub fn web_client_config(
    roots: &[CertificateDer<'static>],
    versions: TlsVersions,
) -> Result<ClientConfig, TlsConfigError> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions.versions())?
        .with_root_certificates(store)
        .with_no_client_auth())
}

/// The SPIFFE ID of the peer of a completed handshake on a connection built from
/// [`server_config`] or [`client_config`], whose verifiers have already checked it.
pub fn peer_spiffe_id(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    zt_identity::x509::summarize(leaf).ok()?.spiffe_id.ok()
}

fn provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

fn verify_peer(
    bundles: &BundleSet,
    peers: &PeerMatcher,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    purpose: Purpose,
) -> Result<(), rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let svid = verify_x509_svid(&chain, bundles, now, purpose).map_err(certificate_error)?;
    if !peers.matches(svid.spiffe_id()) {
        let reason = UnexpectedPeer(svid.spiffe_id().clone());
        return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(reason)),
        )));
    }
    Ok(())
}

/// Maps SVID failures onto the TLS alerts peers understand; the rest keep their reason.
fn certificate_error(e: X509SvidError) -> rustls::Error {
    let error = match e {
        X509SvidError::Expired { .. } => CertificateError::Expired,
        X509SvidError::NotYetValid { .. } => CertificateError::NotValidYet,
        X509SvidError::Revoked => CertificateError::Revoked,
        X509SvidError::UntrustedIssuer(_) | X509SvidError::NoBundle(_) => CertificateError::UnknownIssuer,
        X509SvidError::Malformed { .. } => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_1_2_only_peer_is_told_what_to_change() {
        let error =
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::SupportedVersionsExtensionRequired);
        let text = handshake_error_text(&std::io::Error::new(std::io::ErrorKind::InvalidData, error));
        assert!(
            text.starts_with("peer is incompatible: SupportedVersionsExtensionRequired: "),
            "{text}"
        );
        assert!(text.contains("tls_maximum_protocol_version: TLSv1_3"), "{text}");
        assert!(text.contains("--tls12"), "{text}");
        let other = rustls::Error::DecryptError;
        assert_eq!(tls_error_text(&other), other.to_string());
    }
}
