//! An issuer's verification keys: a JWK Set given inline, or fetched from a
//! `jwks_uri` over HTTPS and kept fresh in the background.
//!
//! A remote set is fetched at once, then every [`RemoteSettings::refresh`], and
//! again (at most once per [`RemoteSettings::unknown_kid_interval`]) when a
//! token names a key the set lacks: the issuer may have rotated. A failing
//! endpoint keeps the last good set for [`RemoteSettings::max_stale`]; after
//! that, verification fails closed with [`Refused::KeysUnavailable`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio_rustls::TlsConnector;
use zt_identity::jwk::{JwkError, PublicKey, parse_jwk_set};

use crate::Refused;

/// Largest JWK Set body accepted from a `jwks_uri`, in bytes.
pub const MAX_JWKS_LEN: usize = 1024 * 1024;

/// Why a JWK Set could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// A key of the set could not be read.
    #[error("JWK Set is invalid: {0}")]
    Jwk(#[from] JwkError),
    /// The set holds no signing key.
    #[error("JWK Set holds no signing key")]
    Empty,
}

/// How a remote JWK Set is kept fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    /// Time between fetches that succeed (default 5 min).
    pub refresh: Duration,
    /// How long the last good set is used while fetches fail (default 1 h).
    pub max_stale: Duration,
    /// The limit on one fetch, connection to body (default 10 s).
    pub fetch_timeout: Duration,
    /// The least time between two fetches caused by unknown key IDs (default 5 s),
    /// so that tokens with made-up `kid`s cannot make us hammer the issuer.
    pub unknown_kid_interval: Duration,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(300),
            max_stale: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(10),
            unknown_kid_interval: Duration::from_secs(5),
        }
    }
}

/// One issuer's keys: an inline JWK Set, or a `jwks_uri` fetched over HTTPS and cached.
#[derive(Clone)]
pub struct Keys(Source);

#[derive(Clone)]
enum Source {
    Inline(Arc<KeySet>),
    Remote(Arc<Remote>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Inline(set) => write!(f, "Keys::Inline({} keys)", set.0.len()),
            Source::Remote(remote) => write!(f, "Keys::Remote({})", remote.shared.uri),
        }
    }
}

impl Keys {
    /// Keys from a JWK Set document (`{"keys":[…]}`); keys marked `"use":"enc"` are skipped.
    pub fn inline(jwks_json: &str) -> Result<Self, KeysError> {
        Ok(Self(Source::Inline(Arc::new(KeySet::parse(jwks_json)?))))
    }

    /// Keys fetched from `uri` (`https://` only) with `tls`, now and then in the
    /// background every `settings.refresh`, and on an unknown `kid` at most once
    /// per `settings.unknown_kid_interval`. A failing endpoint keeps the last
    /// good keys for `settings.max_stale`, then verification fails closed
    /// ([`Refused::KeysUnavailable`]). A URI that is not `https://` with a host
    /// never yields keys (the error is logged at each attempt).
    ///
    /// The background task starts here when called inside a Tokio runtime, else
    /// at the first verification; it ends when the last clone of these keys is dropped.
    pub fn remote(uri: impl Into<String>, tls: Arc<rustls::ClientConfig>, settings: RemoteSettings) -> Self {
        let uri = uri.into();
        let (state, _) = watch::channel(Snapshot::default());
        let remote = Arc::new(Remote {
            shared: Arc::new(Shared {
                target: Target::parse(&uri),
                uri,
                tls,
                settings,
                state,
                wake: Notify::new(),
            }),
            task: Mutex::new(None),
            last_wake: Mutex::new(None),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            remote.ensure_started();
        }
        Self(Source::Remote(remote))
    }

    /// The key set in force, holding at least one key `kid` may name.
    pub(crate) async fn for_kid(&self, kid: Option<&str>) -> Result<Arc<KeySet>, Refused> {
        match &self.0 {
            Source::Inline(set) if set.has(kid) => Ok(set.clone()),
            Source::Inline(_) => Err(Refused::UnknownKey),
            Source::Remote(remote) => remote.for_kid(kid).await,
        }
    }
}

/// Keys read from one JWK Set document.
#[derive(Debug)]
pub(crate) struct KeySet(Vec<(Option<String>, PublicKey)>);

impl KeySet {
    fn parse(text: &str) -> Result<Self, KeysError> {
        let keys = parse_jwk_set(text)?;
        if keys.is_empty() {
            return Err(KeysError::Empty);
        }
        Ok(Self(keys))
    }

    /// The keys a token with `kid` may be verified with: those of that key ID,
    /// or, for a token without one, the only key of a set of one (as Istio).
    pub(crate) fn candidates<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a PublicKey> + 'a {
        let single = self.0.len() == 1;
        self.0.iter().filter_map(move |(id, key)| match kid {
            Some(kid) => (id.as_deref() == Some(kid)).then_some(key),
            None => single.then_some(key),
        })
    }

    fn has(&self, kid: Option<&str>) -> bool {
        self.candidates(kid).next().is_some()
    }
}

/// What the background task last published.
#[derive(Clone, Default)]
struct Snapshot {
    /// The last good set and when it was fetched.
    keys: Option<(Arc<KeySet>, Instant)>,
    /// Fetches completed, good or not.
    generation: u64,
}

struct Remote {
    shared: Arc<Shared>,
    task: Mutex<Option<AbortHandle>>,
    /// When verification last asked for a fetch because of an unknown `kid`.
    last_wake: Mutex<Option<Instant>>,
}

struct Shared {
    uri: String,
    target: Result<Target, String>,
    tls: Arc<rustls::ClientConfig>,
    settings: RemoteSettings,
    state: watch::Sender<Snapshot>,
    wake: Notify,
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Ok(mut task) = self.task.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
    }
}

impl Remote {
    fn ensure_started(&self) {
        let Ok(mut task) = self.task.lock() else {
            return;
        };
        if task.is_none() && tokio::runtime::Handle::try_current().is_ok() {
            *task = Some(tokio::spawn(self.shared.clone().run()).abort_handle());
        }
    }

    async fn for_kid(&self, kid: Option<&str>) -> Result<Arc<KeySet>, Refused> {
        self.ensure_started();
        let shared = &self.shared;
        let wait = shared.settings.fetch_timeout + Duration::from_secs(1);
        let mut rx = shared.state.subscribe();
        let generation = rx.borrow().generation;
        if generation == 0 {
            // The first fetch is under way.
            let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.generation > 0)).await;
        }
        let set = self.fresh(&rx.borrow())?;
        if set.has(kid) {
            return Ok(set);
        }
        if !self.may_wake() {
            return Err(Refused::UnknownKey);
        }
        let generation = rx.borrow().generation;
        shared.wake.notify_one();
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| s.generation > generation)).await;
        let set = self.fresh(&rx.borrow())?;
        if set.has(kid) {
            Ok(set)
        } else {
            Err(Refused::UnknownKey)
        }
    }

    /// The last good set, if it is not older than `max_stale`.
    fn fresh(&self, snapshot: &Snapshot) -> Result<Arc<KeySet>, Refused> {
        match &snapshot.keys {
            Some((set, fetched)) if fetched.elapsed() <= self.shared.settings.max_stale => Ok(set.clone()),
            _ => Err(Refused::KeysUnavailable),
        }
    }

    /// Whether an unknown `kid` may cause a fetch now (and records that it does).
    fn may_wake(&self) -> bool {
        let Ok(mut last) = self.last_wake.lock() else {
            return false;
        };
        let interval = self.shared.settings.unknown_kid_interval;
        if last.is_some_and(|at| at.elapsed() < interval) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

impl Shared {
    /// Fetches for as long as the keys live: every `refresh` after a success,
    /// sooner after a failure (1 s doubling up to `refresh`), and when woken.
    async fn run(self: Arc<Self>) {
        let refresh = self.settings.refresh;
        let mut backoff = Duration::from_secs(1).min(refresh);
        loop {
            let delay = match self.fetch().await {
                Ok(set) => {
                    tracing::debug!(uri = %self.uri, keys = set.0.len(), "fetched JWK Set");
                    let set = Arc::new(set);
                    self.state.send_modify(|s| {
                        s.keys = Some((set, Instant::now()));
                        s.generation += 1;
                    });
                    backoff = Duration::from_secs(1).min(refresh);
                    refresh
                }
                Err(error) => {
                    tracing::warn!(uri = %self.uri, %error, "JWK Set fetch failed; keeping the last good keys");
                    self.state.send_modify(|s| s.generation += 1);
                    let delay = backoff;
                    backoff = (backoff * 2).min(refresh);
                    delay
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let target = self.target.as_ref().map_err(Clone::clone)?;
        tokio::time::timeout(self.settings.fetch_timeout, target.fetch(self.tls.clone()))
            .await
            .map_err(|_| format!("no answer within {:?}", self.settings.fetch_timeout))?
    }
}

/// A parsed `https://` URL.
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    authority: String,
    path: String,
}

impl Target {
    fn parse(uri: &str) -> Result<Self, String> {
        let bad = |what: &str| format!("jwks_uri {uri:?} {what}");
        let parsed = http::Uri::try_from(uri).map_err(|_| bad("is not a URI"))?;
        if parsed.scheme_str() != Some("https") {
            return Err(bad("is not https://"));
        }
        let authority = parsed.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("carries user information"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone()).map_err(|_| bad("has an invalid host"))?;
        Ok(Self {
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            path: parsed.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            host,
            server_name,
        })
    }

    async fn fetch(&self, tls: Arc<rustls::ClientConfig>) -> Result<KeySet, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = TlsConnector::from(tls)
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let connection = tokio::spawn(connection);
        let request = hyper::Request::get(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(format!("status {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_LEN)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            let text = std::str::from_utf8(&body).map_err(|_| "body is not UTF-8".to_owned())?;
            KeySet::parse(text).map_err(|e| e.to_string())
        }
        .await;
        connection.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use zt_identity::jwt::sign_jws;

    use super::*;
    use crate::Issuer;
    use crate::tests::{ISS, NOW, claims, jwks, signer};

    /// A tiny HTTPS server of one JWK Set document, which can be made to fail.
    struct JwksServer {
        uri: String,
        body: Arc<Mutex<String>>,
        down: Arc<AtomicBool>,
        client: Arc<rustls::ClientConfig>,
    }

    async fn serve(body: String) -> JwksServer {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(Mutex::new(body));
        let down = Arc::new(AtomicBool::new(false));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (b, d) = (body.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, b, d) = (acceptor.clone(), b.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    let response = if d.load(Ordering::SeqCst) {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_owned()
                    } else {
                        let body = b.lock().unwrap().clone();
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        JwksServer {
            uri: format!("https://localhost:{port}/jwks.json"),
            body,
            down,
            client: Arc::new(client),
        }
    }

    fn fast() -> RemoteSettings {
        RemoteSettings {
            refresh: Duration::from_millis(100),
            max_stale: Duration::from_millis(600),
            fetch_timeout: Duration::from_secs(2),
            unknown_kid_interval: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn remote_keys_survive_an_outage_for_max_stale_then_fail_closed() {
        let s = signer();
        let server = serve(jwks(&[&s])).await;
        let issuer = Issuer::new(
            ISS,
            vec![],
            Keys::remote(server.uri.clone(), server.client.clone(), fast()),
        );
        let token = sign_jws(&s, "JWT", &claims()).unwrap();
        assert!(issuer.verify_at(&token, NOW).await.is_ok());

        server.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            issuer.verify_at(&token, NOW).await.is_ok(),
            "last good keys within max_stale"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(issuer.verify_at(&token, NOW).await, Err(Refused::KeysUnavailable));

        server.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            issuer.verify_at(&token, NOW).await.is_ok(),
            "keys again once the endpoint is back"
        );
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_at_most_once_per_interval() {
        let (a, b, c) = (signer(), signer(), signer());
        let server = serve(jwks(&[&a])).await;
        let slow = RemoteSettings {
            refresh: Duration::from_secs(3600),
            ..fast()
        };
        let issuer = Issuer::new(
            ISS,
            vec![],
            Keys::remote(server.uri.clone(), server.client.clone(), slow),
        );
        assert!(
            issuer
                .verify_at(&sign_jws(&a, "JWT", &claims()).unwrap(), NOW)
                .await
                .is_ok()
        );
        // The issuer rotates: b's kid is unknown, fetched again, accepted.
        *server.body.lock().unwrap() = jwks(&[&a, &b]);
        assert!(
            issuer
                .verify_at(&sign_jws(&b, "JWT", &claims()).unwrap(), NOW)
                .await
                .is_ok()
        );
        // Within the interval, another unknown kid does not fetch.
        *server.body.lock().unwrap() = jwks(&[&a, &b, &c]);
        let by_c = sign_jws(&c, "JWT", &claims()).unwrap();
        assert_eq!(issuer.verify_at(&by_c, NOW).await, Err(Refused::UnknownKey));
    }

    #[tokio::test]
    async fn no_keys_from_a_dead_or_plain_http_endpoint() {
        let tls = serve(String::new()).await.client;
        let settings = RemoteSettings {
            fetch_timeout: Duration::from_millis(500),
            ..fast()
        };
        let s = signer();
        let token = sign_jws(&s, "JWT", &claims()).unwrap();
        for uri in [
            "http://127.0.0.1:1/jwks",
            "https://127.0.0.1:1/jwks",
            "https://user@localhost/jwks",
            "jwks",
        ] {
            let issuer = Issuer::new(ISS, vec![], Keys::remote(uri, tls.clone(), settings.clone()));
            assert_eq!(
                issuer.verify_at(&token, NOW).await,
                Err(Refused::KeysUnavailable),
                "{uri}"
            );
        }
        // A body over the limit is refused.
        let server = serve("x".repeat(MAX_JWKS_LEN + 1)).await;
        let issuer = Issuer::new(
            ISS,
            vec![],
            Keys::remote(server.uri.clone(), server.client.clone(), settings),
        );
        assert_eq!(issuer.verify_at(&token, NOW).await, Err(Refused::KeysUnavailable));
    }

    #[test]
    fn urls() {
        assert!(
            Target::parse("https://idp.example/.well-known/jwks.json")
                .is_ok_and(|t| t.port == 443 && t.path == "/.well-known/jwks.json")
        );
        assert!(
            Target::parse("https://[::1]:8443/k")
                .is_ok_and(|t| t.host == "::1" && t.port == 8443 && t.authority == "[::1]:8443")
        );
        assert!(Target::parse("http://idp.example/k").is_err());
        assert!(Target::parse("https:///k").is_err());
    }
}
