//! `zt login` for people at a terminal: the OAuth 2.0 device authorization
//! grant (RFC 8628) against an OpenID Provider (zt server's), the tokens kept
//! in the user's config directory — one file per issuer and client, 0600 in a
//! 0700 directory, replaced whole (temp file and rename) — and an access
//! token handed out on demand, refreshed (and the rotated refresh token kept)
//! when it has less than [`REFRESH_MARGIN`] left.
//!
//! - [`http`]: the HTTPS client (TLS 1.3, `--ca` or the system's anchors);
//! - [`Login`]: the device flow, the authorization code flow with PKCE on a
//!   loopback redirect (RFC 8252 §7.3), `--print-token`, logout.

#![forbid(unsafe_code)]

pub mod http;
mod loopback;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The client ID `zt login` uses unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "zt-cli";
/// The scope asked for unless told otherwise.
pub const DEFAULT_SCOPE: &str = "openid profile groups offline_access";
/// An access token with less than this left is refreshed first.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// The RFC 8628 grant type.
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Longest wait between polls a server may ask for.
const MAX_INTERVAL: u64 = 60;

/// Why logging in, handing out a token or logging out failed. Each message
/// names the flag, file or URL concerned.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The issuer is not an https URL of the accepted shape.
    #[error("--issuer {0:?}: {1}")]
    Issuer(String, &'static str),
    /// The `--ca` file cannot be used.
    #[error("--ca {}: {reason}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Without `--ca`, the system has no trust anchors.
    #[error("the system has no trust anchors: give the issuer's CA with --ca FILE")]
    NoTrustAnchors,
    /// The TLS configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// The exchange with an endpoint failed.
    #[error("{url}: {reason}")]
    Http {
        /// The endpoint.
        url: String,
        /// Why.
        reason: String,
    },
    /// An endpoint refused, or answered what it should not.
    #[error("{url}: {reason}")]
    Refused {
        /// The endpoint.
        url: String,
        /// The server's `error: error_description`, or what was wrong.
        reason: String,
    },
    /// No one approved the sign-in before the device code expired.
    #[error("the code {user_code} expired before the sign-in was approved: run zt login again")]
    Expired {
        /// The user code shown.
        user_code: String,
    },
    /// The loopback redirect cannot be received, or brought what it should not.
    #[error("{0}")]
    Loopback(String),
    /// The person denied the sign-in.
    #[error("the sign-in with code {user_code} was denied")]
    Denied {
        /// The user code shown.
        user_code: String,
    },
    /// The token file cannot be read, written or removed.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set.
    #[error("no config directory: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// No login for this issuer and client.
    #[error("not logged in to {issuer} (client {client_id}): run {command}")]
    NotLoggedIn {
        /// The issuer.
        issuer: String,
        /// The client.
        client_id: String,
        /// The `zt login` command that would.
        command: String,
    },
    /// The access token expired and cannot be refreshed.
    #[error("the access token for {issuer} (client {client_id}) expired and {why}: run {command}")]
    Stale {
        /// The issuer.
        issuer: String,
        /// The client.
        client_id: String,
        /// Why it cannot be refreshed.
        why: String,
        /// The `zt login` command that gets a new one.
        command: String,
    },
}

/// What is kept of a login, in its file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLogin {
    /// The issuer, as given to `zt login`.
    pub issuer: String,
    /// The client ID.
    pub client_id: String,
    /// The `--ca` given at login (absolute), used again to refresh.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The token endpoint, from discovery.
    pub token_endpoint: String,
    /// The revocation endpoint, from discovery, if any.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// The access token.
    pub access_token: String,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// The refresh token, if one was issued.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// The ID token, if one was issued.
    #[serde(default)]
    pub id_token: Option<String>,
    /// The scope granted.
    #[serde(default)]
    pub scope: Option<String>,
}

/// What the device authorization endpoint answered, for the person to act on.
#[derive(Debug, Clone)]
pub struct DeviceCode {
    /// Where to go.
    pub verification_uri: String,
    /// The same with the code filled in, if the server gives one.
    pub verification_uri_complete: Option<String>,
    /// The code to type.
    pub user_code: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// One issuer and client, as `zt login`'s flags name them.
#[derive(Clone)]
pub struct Login {
    issuer: String,
    client_id: String,
    ca: Option<PathBuf>,
    dir: PathBuf,
    certificate: Option<ClientCertificate>,
}

/// A client certificate presented to the provider over mTLS: an enrolled
/// device's, so that tokens carry the device's live state and are bound to
/// its certificate (RFC 8705 `cnf`).
#[derive(Clone)]
pub struct ClientCertificate {
    /// Picks the certificate and signs with its key (in a TPM, perhaps).
    pub resolver: Arc<dyn rustls::client::ResolvesClientCert>,
    /// The flags that name it again, for the commands `zt login` prints.
    pub flags: String,
    /// The certificate's `x5t#S256`: a kept token bound to another one (the
    /// certificate was renewed since) is refreshed rather than handed out,
    /// as whoever checks the binding would refuse it.
    pub thumbprint: Option<String>,
}

impl Login {
    /// Checks the issuer and finds the login directory
    /// (`$XDG_CONFIG_HOME/zt/login`, else `~/.config/zt/login`).
    pub fn new(issuer: &str, client_id: &str, ca: Option<&Path>) -> Result<Self, LoginError> {
        Self::with_dir(issuer, client_id, ca, login_dir()?)
    }

    /// The same, with the login directory given.
    pub fn with_dir(
        issuer: &str,
        client_id: &str,
        ca: Option<&Path>,
        dir: PathBuf,
    ) -> Result<Self, LoginError> {
        let bad = |why| Err(LoginError::Issuer(issuer.to_owned(), why));
        let Some(rest) = issuer.strip_prefix("https://") else {
            return bad("must start with https://");
        };
        if rest.is_empty() || rest.starts_with('/') {
            return bad("has no host");
        }
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| !c.is_ascii_graphic()) {
            return bad("may not have a query, fragment, userinfo, whitespace or non-ASCII characters");
        }
        let ca = match ca {
            Some(path) => Some(std::path::absolute(path).map_err(|e| LoginError::Ca {
                path: path.to_owned(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            ca,
            dir,
            certificate: None,
        })
    }

    /// The same login, presenting `certificate` to the provider.
    #[must_use]
    pub fn presenting(self, certificate: ClientCertificate) -> Self {
        Self {
            certificate: Some(certificate),
            ..self
        }
    }

    /// An HTTPS client trusting `ca` (or the system's anchors), presenting
    /// the client certificate, if any.
    pub(crate) fn http_client(&self, ca: Option<&Path>) -> Result<http::Client, LoginError> {
        http::Client::new(ca, self.certificate.as_ref().map(|c| c.resolver.clone()))
    }

    /// The file this login is kept in.
    pub fn path(&self) -> PathBuf {
        let readable: String = format!(
            "{}--{}",
            self.issuer.trim_start_matches("https://"),
            self.client_id
        )
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{}\n{}", self.issuer, self.client_id).as_bytes(),
        );
        let tag: String = digest
            .as_ref()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        self.dir.join(format!("{readable}-{tag}.json"))
    }

    /// The `zt login` command that logs in again.
    pub fn command(&self) -> String {
        let mut command = format!("zt login --issuer {}", self.issuer);
        if self.client_id != DEFAULT_CLIENT_ID {
            command.push_str(&format!(" --client-id {}", self.client_id));
        }
        if let Some(ca) = &self.ca {
            command.push_str(&format!(" --ca {}", ca.display()));
        }
        if let Some(certificate) = &self.certificate {
            command.push(' ');
            command.push_str(&certificate.flags);
        }
        command
    }

    /// The device flow: asks for a code, hands it to `show`, polls the token
    /// endpoint at the server's interval (slower when told `slow_down`) until
    /// the person approves, and keeps the tokens.
    pub async fn device_login(
        &self,
        scope: &str,
        show: impl FnOnce(&DeviceCode),
    ) -> Result<StoredLogin, LoginError> {
        let client = self.http_client(self.ca.as_deref())?;
        let discovery = self.discover(&client).await?;
        let device_endpoint = endpoint(&discovery, "device_authorization_endpoint", &self.issuer)?;
        let token_endpoint = endpoint(&discovery, "token_endpoint", &self.issuer)?;
        let revocation_endpoint = endpoint(&discovery, "revocation_endpoint", &self.issuer).ok();
        let answer = client
            .post_form(
                &device_endpoint,
                &[("client_id", &self.client_id), ("scope", scope)],
            )
            .await?;
        if answer.status != 200 {
            return Err(LoginError::Refused {
                url: device_endpoint,
                reason: answer.refusal(),
            });
        }
        let text = |name: &str| {
            answer
                .json
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| LoginError::Refused {
                    url: device_endpoint.clone(),
                    reason: format!("the answer has no {name}"),
                })
        };
        let device_code = text("device_code")?;
        let code = DeviceCode {
            verification_uri: text("verification_uri")?,
            verification_uri_complete: text("verification_uri_complete").ok(),
            user_code: text("user_code")?,
            expires_in: answer
                .json
                .get("expires_in")
                .and_then(Value::as_u64)
                .unwrap_or(600),
        };
        let mut interval = answer
            .json
            .get("interval")
            .and_then(Value::as_u64)
            .unwrap_or(5)
            .clamp(1, MAX_INTERVAL);
        show(&code);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(code.expires_in);
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(LoginError::Expired {
                    user_code: code.user_code,
                });
            }
            let answer = client
                .post_form(
                    &token_endpoint,
                    &[
                        ("grant_type", DEVICE_GRANT),
                        ("device_code", &device_code),
                        ("client_id", &self.client_id),
                    ],
                )
                .await?;
            match (answer.status, answer.error()) {
                (200, _) => {
                    let login = self.stored(&answer.json, &token_endpoint, revocation_endpoint, None)?;
                    self.save(&login)?;
                    return Ok(login);
                }
                (_, Some("authorization_pending")) => {}
                (_, Some("slow_down")) => interval = (interval + 5).min(MAX_INTERVAL),
                (_, Some("access_denied")) => {
                    return Err(LoginError::Denied {
                        user_code: code.user_code,
                    });
                }
                (_, Some("expired_token")) => {
                    return Err(LoginError::Expired {
                        user_code: code.user_code,
                    });
                }
                _ => {
                    return Err(LoginError::Refused {
                        url: token_endpoint,
                        reason: answer.refusal(),
                    });
                }
            }
        }
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn ca(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// An access token with at least [`REFRESH_MARGIN`] left and bound, if
    /// bound at all, to the certificate presented now: the one kept, or a
    /// refreshed one (the rotated refresh token kept in its place).
    pub async fn access_token(&self) -> Result<String, LoginError> {
        let login = self.load()?;
        let now = zt_identity::clock::unix_seconds();
        let presented = self.certificate.as_ref().and_then(|c| c.thumbprint.as_deref());
        let bound_elsewhere = presented
            .zip(bound_certificate(&login.access_token))
            .is_some_and(|(presented, bound)| presented != bound);
        if !bound_elsewhere && login.expires_at >= now + REFRESH_MARGIN.as_secs() {
            return Ok(login.access_token);
        }
        let stale = |why: String| LoginError::Stale {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            why,
            command: self.command(),
        };
        let Some(refresh_token) = login.refresh_token.clone() else {
            return Err(stale("there is no refresh token".into()));
        };
        // The CA of the login, unless --ca names another.
        let ca = self.ca.clone().or_else(|| login.ca.clone());
        let client = self.http_client(ca.as_deref())?;
        let answer = client
            .post_form(
                &login.token_endpoint,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", &refresh_token),
                    ("client_id", &self.client_id),
                ],
            )
            .await?;
        if answer.status != 200 {
            return Err(stale(format!("the refresh was refused ({})", answer.refusal())));
        }
        let refreshed = Self { ca, ..self.clone() }.stored(
            &answer.json,
            &login.token_endpoint,
            login.revocation_endpoint.clone(),
            Some(&login),
        )?;
        self.save(&refreshed)?;
        Ok(refreshed.access_token)
    }

    /// Revokes the refresh token (if the server has a revocation endpoint)
    /// and removes the file. A revocation that fails is returned after the
    /// file is gone.
    pub async fn logout(&self) -> Result<(), LoginError> {
        let login = self.load()?;
        let path = self.path();
        let revoked = match (&login.refresh_token, &login.revocation_endpoint) {
            (Some(token), Some(endpoint)) => {
                let ca = self.ca.clone().or_else(|| login.ca.clone());
                match self.http_client(ca.as_deref()) {
                    Ok(client) => client
                        .post_form(
                            endpoint,
                            &[
                                ("token", token),
                                ("token_type_hint", "refresh_token"),
                                ("client_id", &self.client_id),
                            ],
                        )
                        .await
                        .and_then(|answer| match answer.status {
                            200 => Ok(()),
                            _ => Err(LoginError::Refused {
                                url: endpoint.clone(),
                                reason: answer.refusal(),
                            }),
                        }),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(()),
        };
        std::fs::remove_file(&path).map_err(|e| LoginError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        revoked
    }

    /// The login kept for this issuer and client.
    pub fn load(&self) -> Result<StoredLogin, LoginError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoginError::NotLoggedIn {
                    issuer: self.issuer.clone(),
                    client_id: self.client_id.clone(),
                    command: self.command(),
                });
            }
            Err(e) => {
                return Err(LoginError::File {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| LoginError::File {
            path,
            reason: format!("not a zt login file: {e}"),
        })
    }

    pub(crate) fn save(&self, login: &StoredLogin) -> Result<(), LoginError> {
        let path = self.path();
        let file_error = |reason: String| LoginError::File {
            path: path.clone(),
            reason,
        };
        zt_fs::private_dir(&self.dir).map_err(|e| LoginError::File {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let json = serde_json::to_vec_pretty(login).map_err(|e| file_error(e.to_string()))?;
        zt_fs::write_atomically(&[(path.clone(), json, 0o600)]).map_err(|e| file_error(e.to_string()))
    }

    pub(crate) async fn discover(&self, client: &http::Client) -> Result<Value, LoginError> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let answer = client.get(&url).await?;
        if answer.status != 200 {
            return Err(LoginError::Refused {
                url,
                reason: format!("HTTP {}", answer.status),
            });
        }
        if answer.json.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(LoginError::Refused {
                url,
                reason: format!(
                    "its issuer is {}, not {}",
                    answer.json.get("issuer").unwrap_or(&Value::Null),
                    self.issuer
                ),
            });
        }
        Ok(answer.json)
    }

    /// A token response as kept; a refresh keeps what it does not replace.
    pub(crate) fn stored(
        &self,
        answer: &Value,
        token_endpoint: &str,
        revocation_endpoint: Option<String>,
        before: Option<&StoredLogin>,
    ) -> Result<StoredLogin, LoginError> {
        let field = |name: &str| answer.get(name).and_then(Value::as_str).map(str::to_owned);
        let access_token = field("access_token").ok_or_else(|| LoginError::Refused {
            url: token_endpoint.to_owned(),
            reason: "the answer has no access_token".into(),
        })?;
        let expires_in = answer.get("expires_in").and_then(Value::as_u64).unwrap_or(0);
        Ok(StoredLogin {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            ca: self.ca.clone(),
            token_endpoint: token_endpoint.to_owned(),
            revocation_endpoint,
            access_token,
            expires_at: zt_identity::clock::unix_seconds() + expires_in,
            refresh_token: field("refresh_token").or_else(|| before.and_then(|b| b.refresh_token.clone())),
            id_token: field("id_token").or_else(|| before.and_then(|b| b.id_token.clone())),
            scope: field("scope").or_else(|| before.and_then(|b| b.scope.clone())),
        })
    }
}

/// An endpoint of the discovery document, which must be an https URL.
pub(crate) fn endpoint(discovery: &Value, name: &str, issuer: &str) -> Result<String, LoginError> {
    discovery
        .get(name)
        .and_then(Value::as_str)
        .filter(|url| url.starts_with("https://"))
        .map(str::to_owned)
        .ok_or_else(|| LoginError::Refused {
            url: format!("{issuer}/.well-known/openid-configuration"),
            reason: format!("no https {name}"),
        })
}

/// The `x5t#S256` an access token is bound to (RFC 8705 `cnf`), read from
/// its payload unverified: it is the token this login keeps, not one to
/// trust.
fn bound_certificate(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.split('.').nth(1)?)
        .ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    claims.get("cnf")?.get("x5t#S256")?.as_str().map(str::to_owned)
}

/// `$XDG_CONFIG_HOME/zt/login`, else `$HOME/.config/zt/login`.
pub fn login_dir() -> Result<PathBuf, LoginError> {
    let absolute = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|path| path.is_absolute())
    };
    if let Some(config) = absolute("XDG_CONFIG_HOME") {
        return Ok(config.join("zt").join("login"));
    }
    absolute("HOME")
        .map(|home| home.join(".config").join("zt").join("login"))
        .ok_or(LoginError::NoConfigDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_checked_and_each_login_has_its_own_file() {
        let dir = PathBuf::from("/tmp/zt-login-test");
        for bad in [
            "http://localhost:8443",
            "https://",
            "https://a@b",
            "https://h/x?y",
        ] {
            let error = Login::with_dir(bad, "zt-cli", None, dir.clone()).err().unwrap();
            assert!(error.to_string().starts_with("--issuer "), "{error}");
        }
        let a = Login::with_dir("https://localhost:8443", "zt-cli", None, dir.clone()).unwrap();
        let b = Login::with_dir("https://localhost:8443/", "zt-cli", None, dir.clone()).unwrap();
        let c = Login::with_dir("https://localhost:8443", "zt-demo", None, dir.clone()).unwrap();
        assert_eq!(a.path(), b.path(), "a trailing slash is the same issuer");
        assert_ne!(a.path(), c.path());
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("localhost_8443--zt-cli-"), "{name}");
        assert_eq!(a.command(), "zt login --issuer https://localhost:8443");
        assert_eq!(
            c.command(),
            "zt login --issuer https://localhost:8443 --client-id zt-demo"
        );
    }

    #[test]
    fn a_missing_login_says_which_command_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let login = Login::with_dir("https://idp.example", "zt-cli", None, dir.path().into()).unwrap();
        let error = login.load().unwrap_err().to_string();
        assert_eq!(
            error,
            "not logged in to https://idp.example (client zt-cli): run zt login --issuer https://idp.example"
        );
    }
}
