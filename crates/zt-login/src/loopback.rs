//! The authorization code flow with PKCE (S256) on a loopback redirect
//! (RFC 8252 §7.3): the person's browser brings the code back to
//! `http://127.0.0.1:PORT/callback`, where this process listens for it.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::http::encode_form;
use crate::{Login, LoginError, StoredLogin, endpoint};

/// How long the browser has to come back.
pub const LOOPBACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest request read from the browser.
const MAX_REQUEST_BYTES: usize = 8192;

impl Login {
    /// Listens on `127.0.0.1:port`, hands the authorization URL to `show`,
    /// waits for the browser's redirect (its `state` and `iss` checked), and
    /// redeems the code with its PKCE verifier.
    pub async fn loopback_login(
        &self,
        scope: &str,
        port: u16,
        show: impl FnOnce(&str),
    ) -> Result<StoredLogin, LoginError> {
        let client = self.http_client(self.ca())?;
        let discovery = self.discover(&client).await?;
        let authorization_endpoint = endpoint(&discovery, "authorization_endpoint", self.issuer())?;
        let token_endpoint = endpoint(&discovery, "token_endpoint", self.issuer())?;
        let revocation_endpoint = endpoint(&discovery, "revocation_endpoint", self.issuer()).ok();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| LoginError::Loopback(format!("--redirect-port {port}: {e}")))?;
        let verifier = random()?;
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let state = random()?;
        let query = encode_form(&[
            ("response_type", "code"),
            ("client_id", self.client_id()),
            ("redirect_uri", &redirect_uri),
            ("scope", scope),
            ("state", &state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let separator = if authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        show(&format!("{authorization_endpoint}{separator}{query}"));
        let code = tokio::time::timeout(LOOPBACK_TIMEOUT, self.receive_code(&listener, &state))
            .await
            .map_err(|_| {
                LoginError::Loopback(format!(
                    "no sign-in came back to {redirect_uri} within {}s",
                    LOOPBACK_TIMEOUT.as_secs()
                ))
            })??;
        let answer = client
            .post_form(
                &token_endpoint,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect_uri),
                    ("client_id", self.client_id()),
                    ("code_verifier", &verifier),
                ],
            )
            .await?;
        if answer.status != 200 {
            return Err(LoginError::Refused {
                url: token_endpoint,
                reason: answer.refusal(),
            });
        }
        let login = self.stored(&answer.json, &token_endpoint, revocation_endpoint, None)?;
        self.save(&login)?;
        Ok(login)
    }

    /// Answers requests on the listener until one to `/callback` brings a
    /// code with our `state` (or an error).
    async fn receive_code(
        &self,
        listener: &tokio::net::TcpListener,
        state: &str,
    ) -> Result<String, LoginError> {
        loop {
            let (mut stream, _) = listener
                .accept()
                .await
                .map_err(|e| LoginError::Loopback(format!("accepting the browser's connection: {e}")))?;
            let Some(target) = read_target(&mut stream).await else {
                continue;
            };
            let Some(query) = target.strip_prefix("/callback?") else {
                let _ = respond(&mut stream, "404 Not Found", "Not here.").await;
                continue;
            };
            let params = parse_query(query);
            let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            if get("state") != Some(state) {
                // Not the answer to our request (or forged): wait for the real one.
                let _ = respond(
                    &mut stream,
                    "400 Bad Request",
                    "This sign-in was not started here.",
                )
                .await;
                continue;
            }
            if let Some(iss) = get("iss")
                && iss != self.issuer()
            {
                let _ = respond(
                    &mut stream,
                    "400 Bad Request",
                    "The answer came from another issuer.",
                )
                .await;
                return Err(LoginError::Loopback(format!(
                    "the redirect names issuer {iss:?}, not {}",
                    self.issuer()
                )));
            }
            if let Some(error) = get("error") {
                let description = get("error_description").unwrap_or_default();
                let _ = respond(
                    &mut stream,
                    "200 OK",
                    "The sign-in was refused. You may close this tab.",
                )
                .await;
                return Err(LoginError::Refused {
                    url: self.issuer().to_owned(),
                    reason: format!("{error}: {description}"),
                });
            }
            let Some(code) = get("code") else {
                let _ = respond(&mut stream, "400 Bad Request", "No code.").await;
                continue;
            };
            let _ = respond(
                &mut stream,
                "200 OK",
                "Signed in. You may close this tab and go back to the terminal.",
            )
            .await;
            return Ok(code.to_owned());
        }
    }
}

/// The request target of a `GET`, read no further than [`MAX_REQUEST_BYTES`].
async fn read_target(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 || request.len() + n > MAX_REQUEST_BYTES {
            return None;
        }
        request.extend_from_slice(buf.get(..n)?);
    }
    request_target(&request)
}

/// The target of a `GET` request's head (`GET /callback?… HTTP/1.1`), if it is one.
fn request_target(request: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(request).ok()?;
    let mut words = text.lines().next()?.split(' ');
    (words.next()? == "GET").then_some(())?;
    words.next().map(str::to_owned)
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("<!doctype html><title>zt login</title><p>{message}</p>\n");
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

/// `name=value&…`, percent- and `+`-decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(value) => {
                        out.push(value);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// 256 random bits, base64url: a PKCE verifier or a `state`.
fn random() -> Result<String, LoginError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| LoginError::Loopback("the random generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a local process sends, parsing it never panics, and a form
        /// we encode decodes to itself.
        #[test]
        fn any_request_parses_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(target) = request_target(&bytes) {
                let _ = parse_query(target.split_once('?').map_or("", |(_, q)| q));
            }
        }

        #[test]
        fn encoded_forms_decode_to_themselves(name in "[a-z_]{1,10}", value in ".{0,40}") {
            let query = encode_form(&[(&name, &value)]);
            prop_assert_eq!(parse_query(&query), vec![(name.clone(), value.clone())]);
        }
    }

    #[test]
    fn only_a_get_has_a_target() {
        assert_eq!(
            request_target(b"GET /callback?code=1 HTTP/1.1\r\nHost: x\r\n\r\n").as_deref(),
            Some("/callback?code=1")
        );
        assert_eq!(request_target(b"POST /callback HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_target(b"\xff\xfe"), None);
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(
            parse_query("code=a%2Bb&state=x+y&iss=https%3A%2F%2Fh%3A1&bad=%zz"),
            vec![
                ("code".into(), "a+b".into()),
                ("state".into(), "x y".into()),
                ("iss".into(), "https://h:1".into()),
                ("bad".into(), "%zz".into()),
            ]
        );
    }
}
