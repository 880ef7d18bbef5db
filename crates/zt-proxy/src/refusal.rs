//! Every way the proxy turns a connection or a request away, in one place: the
//! HTTP status the client gets (a refused connection gets none: it is closed),
//! the `reason` label of `zt_proxy_refused_total`, and the reason logged. Each
//! refusal is counted and logged once, by the stage that records outcomes
//! ([`crate::request::record`] for requests, [`crate::connection`] for
//! connections).

use http::StatusCode;

/// Why a TLS handshake failed, as the metric tells it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent no certificate.
    NoClientCertificate,
    /// The certificate is not an SVID of a trusted domain (or has expired).
    InvalidCertificate,
    /// The bytes were not TLS.
    NotTls,
    /// The client aborted with an alert.
    PeerAlert,
    /// No common version, cipher suite or group (a TLS 1.2-only client).
    Incompatible,
    /// The client closed the connection mid-handshake.
    Eof,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Classifies a failed `accept`.
    pub fn of(error: &std::io::Error) -> Self {
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::NoCertificatesPresented) => Self::NoClientCertificate,
            Some(rustls::Error::InvalidCertificate(_)) => Self::InvalidCertificate,
            Some(
                rustls::Error::InvalidMessage(_)
                | rustls::Error::InappropriateMessage { .. }
                | rustls::Error::InappropriateHandshakeMessage { .. },
            ) => Self::NotTls,
            Some(rustls::Error::AlertReceived(_)) => Self::PeerAlert,
            Some(rustls::Error::PeerIncompatible(_)) => Self::Incompatible,
            _ if error.kind() == std::io::ErrorKind::UnexpectedEof => Self::Eof,
            _ => Self::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::NoClientCertificate => "no_client_certificate",
            Self::InvalidCertificate => "invalid_certificate",
            Self::NotTls => "not_tls",
            Self::PeerAlert => "peer_alert",
            Self::Incompatible => "incompatible",
            Self::Eof => "eof",
            Self::Other => "other",
        }
    }
}

/// A connection or request the proxy turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` connections are open.
    ConnectionLimit,
    /// `--max-connections-per-source` connections from this address are open.
    SourceConnectionLimit,
    /// The proxy holds no SVID yet, so it cannot complete a handshake.
    NoSvidYet,
    /// The TLS handshake failed.
    Handshake(HandshakeFailure, String),
    /// The client sent nothing, or did not finish its handshake, in time.
    Timeout,
    /// The peer's SVID is revoked.
    Revoked,
    /// The peer presented an enrolled device's certificate: a person's
    /// machine, which reaches services through zt gateway, never directly.
    DeviceCertificate,
    /// The peer's SPIFFE ID is not on the allow-list.
    NotAllowed,
    /// The request is malformed or ambiguous (two `Host`s, a path that does
    /// not normalize, an underscored header under `reject`…).
    Malformed(String),
    /// The method is never proxied (`CONNECT`).
    MethodNotAllowed(String),
    /// The request's JWT is invalid for every RequestAuthentication rule whose
    /// location it was found in, or it carries two tokens: the reason label.
    Unauthenticated(&'static str),
    /// A policy denied it (in enforce mode).
    DeniedByPolicy {
        /// The policy that decided, if one did.
        policy: Option<String>,
        /// Why.
        reason: String,
    },
    /// The decision could not be written to the decision log: fail closed.
    DecisionLogFailed,
    /// The body is over `--max-request-body`.
    BodyTooLarge,
    /// The app could not be reached, or failed mid-answer.
    AppUnreachable(String),
    /// The app switched protocols for a request that asked for no upgrade:
    /// nothing authorized what would follow.
    UnaskedUpgrade,
}

impl Refusal {
    /// The label of `zt_proxy_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ConnectionLimit => "connection_limit",
            Self::SourceConnectionLimit => "source_connection_limit",
            Self::NoSvidYet => "no_svid_yet",
            Self::Handshake(failure, _) => failure.label(),
            Self::Timeout => "timeout",
            Self::Revoked => "revoked",
            Self::DeviceCertificate => "device_certificate",
            Self::NotAllowed => "not_allowed",
            Self::Malformed(_) => "malformed_request",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::DeniedByPolicy { .. } => "denied_by_policy",
            Self::DecisionLogFailed => "decision_log_failed",
            Self::BodyTooLarge => "body_too_large",
            Self::AppUnreachable(_) => "app_unreachable",
            Self::UnaskedUpgrade => "app_unasked_upgrade",
        }
    }

    /// Every label, for the documentation and its test.
    pub const LABELS: &'static [&'static str] = &[
        "connection_limit",
        "source_connection_limit",
        "no_svid_yet",
        "no_client_certificate",
        "invalid_certificate",
        "not_tls",
        "peer_alert",
        "incompatible",
        "eof",
        "other",
        "timeout",
        "revoked",
        "device_certificate",
        "not_allowed",
        "malformed_request",
        "method_not_allowed",
        "unauthenticated",
        "denied_by_policy",
        "decision_log_failed",
        "body_too_large",
        "app_unreachable",
        "app_unasked_upgrade",
    ];

    /// The status an HTTP client gets, and the body that says it (never the
    /// reason, which may name policies: that is for the log).
    pub fn answer(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Malformed(_) => (StatusCode::BAD_REQUEST, "zt proxy: malformed request\n"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "zt proxy: method not allowed\n"),
            // Envoy's words for any JWT failure; the reason is for the log.
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "Jwt verification fails\n"),
            Self::NotAllowed => (
                StatusCode::FORBIDDEN,
                "zt proxy: the caller's SPIFFE ID is not allowed\n",
            ),
            // Istio's answer, which clients of a mesh already recognize.
            Self::DeniedByPolicy { .. }
            | Self::DecisionLogFailed
            | Self::Revoked
            | Self::DeviceCertificate => (StatusCode::FORBIDDEN, "RBAC: access denied\n"),
            Self::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "zt proxy: request body too large\n",
            ),
            Self::AppUnreachable(_) | Self::UnaskedUpgrade => {
                (StatusCode::BAD_GATEWAY, "zt proxy: the app did not answer\n")
            }
            Self::ConnectionLimit | Self::SourceConnectionLimit | Self::NoSvidYet | Self::Timeout => {
                (StatusCode::SERVICE_UNAVAILABLE, "zt proxy: unavailable\n")
            }
            Self::Handshake(..) => (StatusCode::BAD_REQUEST, "zt proxy: bad handshake\n"),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectionLimit => f.write_str("the connection limit is reached"),
            Self::SourceConnectionLimit => f.write_str("the source's connection limit is reached"),
            Self::NoSvidYet => f.write_str("no SVID yet"),
            Self::Handshake(_, detail) => write!(f, "TLS handshake: {detail}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Revoked => f.write_str("presented a revoked SVID"),
            Self::DeviceCertificate => f.write_str(
                "presented a device's certificate, not a workload's: devices reach services through zt gateway",
            ),
            Self::NotAllowed => f.write_str("not on the allow-list"),
            Self::Malformed(why) | Self::MethodNotAllowed(why) => f.write_str(why),
            Self::Unauthenticated(reason) => write!(f, "invalid token: {reason}"),
            Self::DeniedByPolicy { policy, reason } => match policy {
                Some(policy) => write!(f, "denied by {policy}: {reason}"),
                None => write!(f, "denied: {reason}"),
            },
            Self::DecisionLogFailed => f.write_str("the decision log cannot be written"),
            Self::BodyTooLarge => f.write_str("body over the limit"),
            Self::AppUnreachable(why) => write!(f, "app unreachable: {why}"),
            Self::UnaskedUpgrade => f.write_str("the app answered 101 to a request that asked no upgrade"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_listed_once() {
        let all = [
            Refusal::ConnectionLimit,
            Refusal::SourceConnectionLimit,
            Refusal::NoSvidYet,
            Refusal::Handshake(HandshakeFailure::NoClientCertificate, String::new()),
            Refusal::Handshake(HandshakeFailure::InvalidCertificate, String::new()),
            Refusal::Handshake(HandshakeFailure::NotTls, String::new()),
            Refusal::Handshake(HandshakeFailure::PeerAlert, String::new()),
            Refusal::Handshake(HandshakeFailure::Incompatible, String::new()),
            Refusal::Handshake(HandshakeFailure::Eof, String::new()),
            Refusal::Handshake(HandshakeFailure::Other, String::new()),
            Refusal::Timeout,
            Refusal::Revoked,
            Refusal::DeviceCertificate,
            Refusal::NotAllowed,
            Refusal::Malformed(String::new()),
            Refusal::MethodNotAllowed(String::new()),
            Refusal::Unauthenticated("expired"),
            Refusal::DeniedByPolicy {
                policy: None,
                reason: String::new(),
            },
            Refusal::DecisionLogFailed,
            Refusal::BodyTooLarge,
            Refusal::AppUnreachable(String::new()),
            Refusal::UnaskedUpgrade,
        ];
        let labels: Vec<&str> = all.iter().map(Refusal::label).collect();
        assert_eq!(labels, Refusal::LABELS);
    }

    #[test]
    fn every_label_is_documented() {
        let architecture = include_str!("../../../ARCHITECTURE.md");
        for label in Refusal::LABELS {
            assert!(
                architecture.contains(&format!("`{label}`")),
                "ARCHITECTURE.md does not list the refusal label {label}"
            );
        }
    }

    #[test]
    fn answers_never_carry_the_logged_reason() {
        let denied = Refusal::DeniedByPolicy {
            policy: Some("ns/deny-internal".into()),
            reason: "matched rule 0".into(),
        };
        let (status, body) = denied.answer();
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!body.contains("deny-internal"));
        assert!(denied.to_string().contains("ns/deny-internal"));
        assert_eq!(Refusal::BodyTooLarge.answer().0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            Refusal::MethodNotAllowed("CONNECT".into()).answer().0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
