//! The little HTTPS client `zt login` needs: a `GET` or a form `POST`, a JSON
//! answer. TLS 1.3 only, trusting `--ca` or the system's anchors; redirects
//! are answers, never followed; answers are read to [`MAX_ANSWER_BYTES`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::header;
use rustls_pki_types::ServerName;
use serde_json::Value;

use crate::LoginError;

/// Largest answer read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: its status and its body as JSON (`Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body, parsed.
    pub json: Value,
}

impl Answer {
    /// The OAuth error code of a refusal (`error`), if any.
    pub fn error(&self) -> Option<&str> {
        self.json.get("error").and_then(Value::as_str)
    }

    /// `error: error_description` of a refusal, or the status.
    pub fn refusal(&self) -> String {
        match (
            self.error(),
            self.json.get("error_description").and_then(Value::as_str),
        ) {
            (Some(error), Some(description)) => format!("{error}: {description}"),
            (Some(error), None) => error.to_owned(),
            _ => format!("HTTP {}", self.status),
        }
    }
}

/// An HTTPS client with its trust anchors.
#[derive(Clone)]
pub struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl Client {
    /// Trusts the certificates of the PEM file `ca`, or else the system's
    /// anchors; presents `certificate`'s, if any.
    pub fn new(
        ca: Option<&Path>,
        certificate: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    ) -> Result<Self, LoginError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let bad = |reason: String| LoginError::Ca {
                    path: path.to_owned(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                let certificates = zt_identity::x509::certificates_from_pem(&pem).map_err(bad)?;
                if certificates.is_empty() {
                    return Err(bad("no certificate in the file".into()));
                }
                for certificate in certificates {
                    roots.add(certificate).map_err(|e| bad(e.to_string()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for certificate in found.certs {
                    // One unusable system certificate does not spoil the others.
                    let _ = roots.add(certificate);
                }
                if roots.is_empty() {
                    return Err(LoginError::NoTrustAnchors);
                }
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| LoginError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let tls = match certificate {
            Some(resolver) => builder.with_client_cert_resolver(resolver),
            None => builder.with_no_client_auth(),
        };
        Ok(Self { tls: Arc::new(tls) })
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Answer, LoginError> {
        self.exchange(url, None).await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body.
    pub async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<Answer, LoginError> {
        self.exchange(url, Some(encode_form(form))).await
    }

    async fn exchange(&self, url: &str, form: Option<String>) -> Result<Answer, LoginError> {
        let failed = |reason: String| LoginError::Http {
            url: url.to_owned(),
            reason,
        };
        tokio::time::timeout(TIMEOUT, self.exchange_once(url, form))
            .await
            .map_err(|_| failed(format!("no answer within {}s", TIMEOUT.as_secs())))?
            .map_err(failed)
    }

    async fn exchange_once(&self, url: &str, form: Option<String>) -> Result<Answer, String> {
        let target = Target::parse(url)?;
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let name = ServerName::try_from(target.host.clone()).map_err(|e| format!("server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        let connection = tokio::spawn(connection);
        let builder = hyper::Request::builder()
            .uri(&target.path)
            .header(header::HOST, &target.authority)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, concat!("zt/", env!("CARGO_PKG_VERSION")));
        let request = match form {
            Some(body) => builder
                .method(hyper::Method::POST)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(body))),
            None => builder.method(hyper::Method::GET).body(Full::new(Bytes::new())),
        }
        .map_err(|e| format!("request: {e}"))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = answer.status().as_u16();
        let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer (at most {MAX_ANSWER_BYTES} bytes): {e}"))?
            .to_bytes();
        connection.abort();
        if (300..400).contains(&status) {
            return Err(format!("HTTP {status}: a redirect, not followed"));
        }
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok(Answer { status, json })
    }
}

/// Where an `https` URL points.
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| "not an https:// URL".to_owned())?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = path.split('#').next().unwrap_or_default();
        let path = if path.is_empty() {
            "/".to_owned()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("has no host, or has userinfo".into());
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or("an unclosed '['")?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port {
            Some(port) => port.parse().map_err(|_| format!("port {port:?}"))?,
            None => 443,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path,
        })
    }
}

/// `application/x-www-form-urlencoded`.
pub fn encode_form(pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        let mut out = String::with_capacity(text.len());
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(byte))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_into_what_a_request_needs() {
        let t = Target::parse("https://localhost:8443/token").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str(), t.path.as_str()),
            ("localhost", 8443, "localhost:8443", "/token")
        );
        let t = Target::parse("https://idp.example").unwrap();
        assert_eq!((t.port, t.path.as_str()), (443, "/"));
        let t = Target::parse("https://[::1]:9/a?b=c#frag").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 9, "/a?b=c"));
        for bad in ["http://localhost/", "https://", "https://u@h/", "https://h:x/"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forms_are_encoded() {
        assert_eq!(
            encode_form(&[("scope", "openid profile"), ("x", "a+b/c=é")]),
            "scope=openid+profile&x=a%2Bb%2Fc%3D%C3%A9"
        );
    }
}
