//! OAuth clients: how each authenticates (a secret, `private_key_jwt`, or none:
//! a public client with PKCE), the redirect URIs it may use — each checked once
//! here and stored verbatim, to be matched exactly — and the grants it may ask for.
//! A client secret is made here, returned once, and stored as an argon2id hash.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, is_unique_violation, random_token, to_i64, to_u64};

/// Longest client ID or redirect URI, in bytes.
const MAX_CLIENT_ID_LEN: usize = 128;
const MAX_REDIRECT_URI_LEN: usize = 2048;
/// Most redirect URIs per client.
const MAX_REDIRECT_URIS: usize = 32;
/// Largest JWK Set, in bytes of JSON.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// How a client proves who it is at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// A confidential client with a secret made by the server (`client_secret_basic`/`_post`).
    Secret,
    /// A confidential client signing assertions with keys from its JWK Set (RFC 7523).
    PrivateKeyJwt,
    /// A public client (a browser app, a CLI): no secret, PKCE required.
    Public,
    /// A mesh workload: its client ID is its SPIFFE ID, and it authenticates
    /// with a JWT-SVID of the server's trust domain as its assertion (RFC 7523),
    /// so it needs no secret.
    Spiffe,
}

impl ClientKind {
    fn as_str(self) -> &'static str {
        match self {
            ClientKind::Secret => "secret",
            ClientKind::PrivateKeyJwt => "private_key_jwt",
            ClientKind::Public => "public",
            ClientKind::Spiffe => "spiffe",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "secret" => ClientKind::Secret,
            "private_key_jwt" => ClientKind::PrivateKeyJwt,
            "public" => ClientKind::Public,
            "spiffe" => ClientKind::Spiffe,
            _ => return None,
        })
    }
}

/// An OAuth grant type a client may use (no implicit, no password grant: they
/// do not exist here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum GrantType {
    /// The authorization code flow, with PKCE.
    #[serde(rename = "authorization_code")]
    AuthorizationCode,
    /// Refresh tokens, rotated on use.
    #[serde(rename = "refresh_token")]
    RefreshToken,
    /// A service acting as itself.
    #[serde(rename = "client_credentials")]
    ClientCredentials,
    /// RFC 8628, for devices and CLIs.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:device_code")]
    DeviceCode,
    /// RFC 8693.
    #[serde(rename = "urn:ietf:params:oauth:grant-type:token-exchange")]
    TokenExchange,
}

impl GrantType {
    /// Every grant type, for help texts.
    pub const ALL: [GrantType; 5] = [
        GrantType::AuthorizationCode,
        GrantType::RefreshToken,
        GrantType::ClientCredentials,
        GrantType::DeviceCode,
        GrantType::TokenExchange,
    ];

    /// The name RFCs and the token endpoint use.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::DeviceCode => "urn:ietf:params:oauth:grant-type:device_code",
            GrantType::TokenExchange => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }

    /// Parses a grant type's name; `device_code` and `token_exchange` are
    /// accepted for the URNs.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "authorization_code" => GrantType::AuthorizationCode,
            "refresh_token" => GrantType::RefreshToken,
            "client_credentials" => GrantType::ClientCredentials,
            "device_code" | "urn:ietf:params:oauth:grant-type:device_code" => GrantType::DeviceCode,
            "token_exchange" | "urn:ietf:params:oauth:grant-type:token-exchange" => GrantType::TokenExchange,
            _ => return None,
        })
    }
}

/// A redirect URI that may be registered: absolute `https`, or `http` to a
/// loopback IP literal (RFC 8252 §7.3); no fragment, no userinfo, no whitespace.
/// Kept verbatim: the authorization endpoint compares it byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct RedirectUri(String);

impl RedirectUri {
    /// Checks `text` (see the type's documentation).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidValue {
            field: "redirect_uri",
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.len() > MAX_REDIRECT_URI_LEN {
            return Err(invalid(&format!("longer than {MAX_REDIRECT_URI_LEN} bytes")));
        }
        if text.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(invalid("contains whitespace, control or non-ASCII characters"));
        }
        if text.contains('#') {
            return Err(invalid("has a fragment"));
        }
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(invalid("not an absolute https:// (or loopback http://) URI"));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(invalid("has userinfo"));
        }
        let host = host_of(authority).ok_or_else(|| invalid("has no valid host"))?;
        if !https && !is_loopback_literal(host) {
            return Err(invalid(
                "http is allowed only to a loopback address (127.0.0.1 or [::1]); use https",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The URI as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for RedirectUri {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Where a client receives logout tokens (OpenID Connect Back-Channel Logout
/// 1.0 §2.2): absolute `https`, or `http` to a loopback name or address
/// (`localhost`, `127.0.0.1`, `[::1]`) for development; no fragment, no
/// userinfo, no whitespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct BackchannelLogoutUri(String);

impl BackchannelLogoutUri {
    /// Checks `text` (see the type's documentation).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let invalid = |reason: &str| StoreError::InvalidValue {
            field: "backchannel_logout_uri",
            value: text.to_owned(),
            reason: reason.to_owned(),
        };
        if text.len() > MAX_REDIRECT_URI_LEN {
            return Err(invalid(&format!("longer than {MAX_REDIRECT_URI_LEN} bytes")));
        }
        if text.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(invalid("contains whitespace, control or non-ASCII characters"));
        }
        if text.contains('#') {
            return Err(invalid("has a fragment"));
        }
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(invalid("not an absolute https:// (or loopback http://) URI"));
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(invalid("has userinfo"));
        }
        let host = host_of(authority).ok_or_else(|| invalid("has no valid host"))?;
        if !https && !is_loopback_literal(host) && !host.eq_ignore_ascii_case("localhost") {
            return Err(invalid(
                "http is allowed only to a loopback name or address (localhost, 127.0.0.1, [::1]); use https",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The URI as registered.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is `https`.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// Host (brackets removed from an IPv6 address), port (the scheme's
    /// default when none is given) and path with query (`/` when empty).
    pub fn parts(&self) -> (&str, u16, &str) {
        let (rest, default_port) = match self.0.strip_prefix("https://") {
            Some(rest) => (rest, 443),
            None => (self.0.strip_prefix("http://").unwrap_or(&self.0), 80),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let path = if path.is_empty() { "/" } else { path };
        let host = host_of(authority).unwrap_or(authority);
        let port = authority
            .get(host.len()..)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|port| port.parse().ok())
            .unwrap_or(default_port);
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        (host, port, path)
    }
}

impl<'de> serde::Deserialize<'de> for BackchannelLogoutUri {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The host of an authority `host[:port]` (brackets kept for IPv6), if both parts are sound.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        (
            host,
            if rest.is_empty() {
                None
            } else {
                Some(rest.strip_prefix(':')?)
            },
        )
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().is_err())
    {
        return None;
    }
    let sound = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
    };
    sound.then_some(host)
}

fn is_loopback_literal(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback()),
        None => host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
    }
}

/// What `zt client add` asks for.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// Unique client ID.
    pub client_id: String,
    /// How it authenticates.
    pub kind: ClientKind,
    /// Its JWK Set (public keys), for [`ClientKind::PrivateKeyJwt`] only.
    #[serde(default)]
    pub jwks: Option<String>,
    /// Where authorization responses may be sent.
    #[serde(default)]
    pub redirect_uris: Vec<RedirectUri>,
    /// The grants it may use (default: `authorization_code` and `refresh_token`;
    /// `client_credentials` for a [`ClientKind::Spiffe`] client).
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
    /// Where it receives logout tokens when a session it holds tokens from ends.
    #[serde(default)]
    pub backchannel_logout_uri: Option<BackchannelLogoutUri>,
    /// Whether it requires `sid` in logout tokens (zt always sends it).
    #[serde(default)]
    pub backchannel_logout_session_required: bool,
}

/// A stored client (never its secret or the secret's hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Client {
    /// Unique client ID.
    pub client_id: String,
    /// How it authenticates.
    pub kind: ClientKind,
    /// Its JWK Set, for [`ClientKind::PrivateKeyJwt`].
    pub jwks: Option<String>,
    /// Registered redirect URIs, verbatim.
    pub redirect_uris: Vec<String>,
    /// Allowed grant types.
    pub grant_types: Vec<GrantType>,
    /// Where it receives logout tokens (OpenID Connect Back-Channel Logout), verbatim.
    #[serde(default)]
    pub backchannel_logout_uri: Option<String>,
    /// Whether it requires `sid` in logout tokens.
    #[serde(default)]
    pub backchannel_logout_session_required: bool,
    /// Unix seconds.
    pub created_at: u64,
}

/// A client just made, with its secret: the only time the secret is seen.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CreatedClient {
    /// The client.
    pub client: Client,
    /// 256 random bits, base64url, for [`ClientKind::Secret`]; stored only as an argon2id hash.
    pub secret: Option<String>,
}

/// A client ID: 1 to [`MAX_CLIENT_ID_LEN`] of a plain alphabet, or for a
/// [`ClientKind::Spiffe`] client a workload's SPIFFE ID (with a path), and
/// only for it: a `/` elsewhere would make IDs that look like workloads.
fn check_client_id(id: &str, kind: ClientKind) -> Result<(), StoreError> {
    if kind == ClientKind::Spiffe {
        return match zt_identity::SpiffeId::parse(id) {
            Ok(spiffe_id) if spiffe_id.is_device() => Err(StoreError::InvalidValue {
                field: "client_id",
                value: id.to_owned(),
                reason: "a device is not a workload: the people who use it sign in, and their tokens name the device"
                    .into(),
            }),
            Ok(spiffe_id) if !spiffe_id.is_root() && id.len() <= MAX_CLIENT_ID_LEN => Ok(()),
            Ok(_) => Err(StoreError::InvalidValue {
                field: "client_id",
                value: id.to_owned(),
                reason: format!(
                    "a spiffe client's ID is a workload's SPIFFE ID, with a path, of at most {MAX_CLIENT_ID_LEN} bytes"
                ),
            }),
            Err(e) => Err(StoreError::InvalidValue {
                field: "client_id",
                value: id.to_owned(),
                reason: format!("a spiffe client's ID must be a SPIFFE ID: {e}"),
            }),
        };
    }
    if id.is_empty()
        || id.len() > MAX_CLIENT_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        return Err(StoreError::InvalidValue {
            field: "client_id",
            value: id.to_owned(),
            reason: format!("must be 1 to {MAX_CLIENT_ID_LEN} letters, digits, '.', '_', '-' or ':'"),
        });
    }
    Ok(())
}

/// A JWK Set of public keys only: an object with a non-empty `keys` array whose
/// members each have a `kty` and no private parameter.
fn check_jwks(jwks: &str) -> Result<(), StoreError> {
    let invalid = |reason: String| StoreError::InvalidValue {
        field: "jwks",
        value: String::new(),
        reason,
    };
    if jwks.len() > MAX_JWKS_BYTES {
        return Err(invalid(format!("larger than {MAX_JWKS_BYTES} bytes")));
    }
    let value: serde_json::Value =
        serde_json::from_str(jwks).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .filter(|keys| !keys.is_empty())
        .ok_or_else(|| invalid("expected a JWK Set: an object with a non-empty \"keys\" array".into()))?;
    for (i, key) in keys.iter().enumerate() {
        if key.get("kty").and_then(serde_json::Value::as_str).is_none() {
            return Err(invalid(format!("keys[{i}] has no \"kty\"")));
        }
        // RSA's and EC's private parameters (RFC 7518 §6.2.2, §6.3.2), OKP's "d", oct's "k".
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            if key.get(private).is_some() {
                return Err(invalid(format!(
                    "keys[{i}] holds the private parameter {private:?}: register the public keys only"
                )));
            }
        }
    }
    Ok(())
}

fn check_client(new: &NewClient) -> Result<Vec<GrantType>, StoreError> {
    check_client_id(&new.client_id, new.kind)?;
    let invalid = |field: &'static str, reason: &str| StoreError::InvalidValue {
        field,
        value: String::new(),
        reason: reason.to_owned(),
    };
    match (new.kind, &new.jwks) {
        (ClientKind::PrivateKeyJwt, Some(jwks)) => check_jwks(jwks)?,
        (ClientKind::PrivateKeyJwt, None) => {
            return Err(invalid("jwks", "a private_key_jwt client needs its JWK Set"));
        }
        (_, Some(_)) => return Err(invalid("jwks", "only a private_key_jwt client has a JWK Set")),
        (_, None) => {}
    }
    if new.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid(
            "redirect_uris",
            &format!("more than {MAX_REDIRECT_URIS}"),
        ));
    }
    let mut grants = if new.grant_types.is_empty() && new.kind == ClientKind::Spiffe {
        vec![GrantType::ClientCredentials]
    } else if new.grant_types.is_empty() {
        vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
    } else {
        new.grant_types.clone()
    };
    grants.sort();
    grants.dedup();
    if grants.contains(&GrantType::AuthorizationCode) && new.redirect_uris.is_empty() {
        return Err(invalid(
            "redirect_uris",
            "the authorization_code grant needs at least one redirect URI",
        ));
    }
    if new.kind == ClientKind::Spiffe
        && (grants.contains(&GrantType::AuthorizationCode) || !new.redirect_uris.is_empty())
    {
        return Err(invalid(
            "grant_types",
            "a spiffe client is a workload, not a browser app: no authorization_code, no redirect URIs",
        ));
    }
    if new.kind == ClientKind::Public
        && (grants.contains(&GrantType::ClientCredentials) || grants.contains(&GrantType::TokenExchange))
    {
        return Err(invalid(
            "grant_types",
            "a public client cannot use client_credentials (nor token exchange): it has nothing to authenticate with",
        ));
    }
    Ok(grants)
}

/// Hashes a secret with argon2id (the crate's defaults, OWASP's minimum: 19 MiB,
/// two passes) and a random salt, as a PHC string. Slow on purpose: run it off
/// the async threads.
pub(crate) async fn hash_secret(secret: String) -> Result<String, StoreError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(secret.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| StoreError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| StoreError::Hash(e.to_string()))?
}

/// The hash checked against when there is none to check: of a random secret no
/// one knows, with the parameters of real ones; made once per process.
fn unknown_client_hash() -> Result<&'static str, StoreError> {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(text) = HASH.get() {
        return Ok(text);
    }
    let made = Argon2::default()
        .hash_password(random_token()?.as_bytes())
        .map_err(|e| StoreError::Hash(e.to_string()))?
        .to_string();
    Ok(HASH.get_or_init(|| made))
}

const CLIENT_COLUMNS: &str = "client_id, kind, jwks, redirect_uris, grant_types, created_at, \
     backchannel_logout_uri, backchannel_logout_session_required";

impl Store {
    /// Registers a client; for [`ClientKind::Secret`], makes its secret and
    /// returns it this once.
    pub async fn create_client(&self, new: &NewClient, now: u64) -> Result<CreatedClient, StoreError> {
        let grant_types = check_client(new)?;
        let secret = match new.kind {
            ClientKind::Secret => Some(random_token()?),
            ClientKind::PrivateKeyJwt | ClientKind::Public | ClientKind::Spiffe => None,
        };
        let secret_hash = match &secret {
            Some(secret) => Some(hash_secret(secret.clone()).await?),
            None => None,
        };
        let client = Client {
            client_id: new.client_id.clone(),
            kind: new.kind,
            jwks: new.jwks.clone(),
            redirect_uris: new.redirect_uris.iter().map(|u| u.as_str().to_owned()).collect(),
            grant_types,
            backchannel_logout_uri: new
                .backchannel_logout_uri
                .as_ref()
                .map(|uri| uri.as_str().to_owned()),
            backchannel_logout_session_required: new.backchannel_logout_session_required,
            created_at: now,
        };
        let json = |value: serde_json::Result<String>| {
            value.map_err(|e| StoreError::Corrupt {
                what: "client",
                key: client.client_id.clone(),
                reason: e.to_string(),
            })
        };
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO oauth_clients (client_id, kind, secret_hash, jwks, redirect_uris, grant_types, created_at, \
             backchannel_logout_uri, backchannel_logout_session_required) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&client.client_id)
        .bind(client.kind.as_str())
        .bind(secret_hash)
        .bind(&client.jwks)
        .bind(json(serde_json::to_string(&client.redirect_uris))?)
        .bind(json(serde_json::to_string(&client.grant_types))?)
        .bind(to_i64(now))
        .bind(&client.backchannel_logout_uri)
        .bind(i64::from(client.backchannel_logout_session_required))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::duplicate("client", &client.client_id));
            }
            other => other?,
        };
        self.record_change(&mut tx, "client", &client.client_id, now)
            .await?;
        tx.commit().await?;
        self.notify_local();
        Ok(CreatedClient { client, secret })
    }

    /// The client with this ID.
    pub async fn client(&self, client_id: &str) -> Result<Client, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1"
        ))
        .bind(client_id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::missing("client", client_id))?;
        client_from_row(&row)
    }

    /// Every client, by ID.
    pub async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY client_id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(client_from_row).collect()
    }

    /// Deletes a client and returns what it was. Refresh-token families issued
    /// to it are revoked in the same transaction.
    pub async fn delete_client(&self, client_id: &str, now: u64) -> Result<Client, StoreError> {
        let client = self.client(client_id).await?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM oauth_clients WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE refresh_families SET revoked_at = $1, reason = 'client deleted' \
             WHERE client_id = $2 AND revoked_at IS NULL",
        )
        .bind(to_i64(now))
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "client", client_id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(client)
    }

    /// Whether `secret` is the secret of the [`ClientKind::Secret`] client
    /// `client_id`. The comparison is argon2's verifier (constant time); an
    /// unknown client or one of another kind is `false`.
    pub async fn verify_client_secret(&self, client_id: &str, secret: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT secret_hash FROM oauth_clients WHERE client_id = $1 AND kind = 'secret'")
                .bind(client_id)
                .fetch_optional(self.pool())
                .await?;
        let hash = row
            .map(|row| row.try_get::<Option<String>, _>("secret_hash"))
            .transpose()?
            .flatten();
        check_secret(hash, secret, "client secret hash", client_id).await
    }
}

/// Whether `secret` matches the argon2id `hash` (argon2's verifier, constant
/// time). Without a hash, it checks against one no secret matches, as slowly,
/// so that timing does not tell which names have a secret.
pub(crate) async fn check_secret(
    hash: Option<String>,
    secret: &str,
    what: &'static str,
    key: &str,
) -> Result<bool, StoreError> {
    let secret = secret.to_owned();
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let Some(hash) = hash else {
            let dummy = unknown_client_hash()?;
            let _ = Argon2::default().verify_password(
                secret.as_bytes(),
                &PasswordHash::new(dummy).map_err(|e| StoreError::Hash(e.to_string()))?,
            );
            return Ok(false);
        };
        let parsed = PasswordHash::new(&hash).map_err(|e| StoreError::Corrupt {
            what,
            key,
            reason: e.to_string(),
        })?;
        Ok(Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| StoreError::Hash(e.to_string()))?
}

fn client_from_row(row: &AnyRow) -> Result<Client, StoreError> {
    let client_id: String = row.try_get("client_id")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "client",
        key: client_id.clone(),
        reason,
    };
    let kind: String = row.try_get("kind")?;
    let kind = ClientKind::parse(&kind).ok_or_else(|| corrupt(format!("unknown kind {kind:?}")))?;
    let redirect_uris: String = row.try_get("redirect_uris")?;
    let grant_types: String = row.try_get("grant_types")?;
    Ok(Client {
        kind,
        jwks: row.try_get("jwks")?,
        redirect_uris: serde_json::from_str(&redirect_uris).map_err(|e| corrupt(e.to_string()))?,
        grant_types: serde_json::from_str(&grant_types).map_err(|e| corrupt(e.to_string()))?,
        created_at: to_u64(row.try_get("created_at")?),
        backchannel_logout_uri: row.try_get("backchannel_logout_uri")?,
        backchannel_logout_session_required: row.try_get::<i64, _>("backchannel_logout_session_required")?
            != 0,
        client_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_checked() {
        for good in [
            "https://app.example.com/callback",
            "https://app.example.com:8443/cb?x=1",
            "http://127.0.0.1:8080/cb",
            "http://127.0.0.5/cb",
            "http://[::1]:9000/cb",
            "https://[2001:db8::1]/cb",
        ] {
            assert!(RedirectUri::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("https://app.example.com/cb#frag", "fragment"),
            ("/callback", "absolute"),
            ("app.example.com/cb", "absolute"),
            ("http://app.example.com/cb", "loopback"),
            ("http://localhost/cb", "loopback"),
            ("https://user:pw@app.example.com/cb", "userinfo"),
            ("https://app.example.com@evil.example/cb", "userinfo"),
            ("https:///cb", "host"),
            ("https://app.example.com:99999/cb", "host"),
            ("https://app.example.com/c b", "whitespace"),
            ("javascript:alert(1)", "absolute"),
        ] {
            let error = RedirectUri::parse(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
            assert!(error.starts_with("redirect_uri "), "{error}");
        }
    }

    #[test]
    fn jwks_must_hold_public_keys_only() {
        assert!(check_jwks(r#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b"}]}"#).is_ok());
        assert!(check_jwks(r#"{"keys":[]}"#).is_err());
        assert!(check_jwks(r#"{"keys":[{"crv":"P-256"}]}"#).is_err());
        let private = check_jwks(r#"{"keys":[{"kty":"EC","d":"secret"}]}"#).unwrap_err();
        assert!(private.to_string().contains("private"), "{private}");
    }

    #[test]
    fn only_a_spiffe_client_has_a_spiffe_id_for_client_id() {
        let new = |id: &str, kind| NewClient {
            client_id: id.into(),
            kind,
            jwks: None,
            redirect_uris: vec![],
            grant_types: vec![GrantType::ClientCredentials],
            backchannel_logout_uri: None,
            backchannel_logout_session_required: false,
        };
        assert!(check_client(&new("spiffe://example.org/ns/x/sa/y", ClientKind::Spiffe)).is_ok());
        for bad in [
            "spiffe://example.org",
            "spiffe://Example.org/x",
            "ns/x/sa/y",
            "https://example.org/x",
            "spiffe://example.org/device/0a1b",
        ] {
            let error = check_client(&new(bad, ClientKind::Spiffe))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("client_id "), "{bad}: {error}");
        }
        let error = check_client(&new("spiffe://example.org/ns/x/sa/y", ClientKind::Secret)).unwrap_err();
        assert!(error.to_string().contains("letters, digits"), "{error}");
        let mut browser = new("spiffe://example.org/ns/x/sa/y", ClientKind::Spiffe);
        browser.grant_types = vec![GrantType::AuthorizationCode];
        browser.redirect_uris = vec![RedirectUri::parse("https://app.example.com/cb").unwrap()];
        assert!(check_client(&browser).is_err());
        for kind in [
            ClientKind::Secret,
            ClientKind::PrivateKeyJwt,
            ClientKind::Public,
            ClientKind::Spiffe,
        ] {
            assert_eq!(ClientKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn grant_types_round_trip() {
        for grant in GrantType::ALL {
            assert_eq!(GrantType::parse(grant.as_str()), Some(grant));
            let json = serde_json::to_string(&grant).unwrap();
            assert_eq!(json, format!("\"{}\"", grant.as_str()));
        }
        assert_eq!(GrantType::parse("password"), None);
        assert_eq!(GrantType::parse("implicit"), None);
    }

    #[test]
    fn backchannel_logout_uris_are_checked() {
        for (good, parts) in [
            (
                "https://rp.example.com/logout",
                ("rp.example.com", 443, "/logout"),
            ),
            ("https://rp.example.com:8443", ("rp.example.com", 8443, "/")),
            ("https://rp.example.com?x=1", ("rp.example.com", 443, "?x=1")),
            ("http://localhost:9000/bc", ("localhost", 9000, "/bc")),
            ("http://127.0.0.1/bc", ("127.0.0.1", 80, "/bc")),
            ("http://[::1]:8080/bc?a=b", ("::1", 8080, "/bc?a=b")),
        ] {
            let uri = BackchannelLogoutUri::parse(good).unwrap();
            assert_eq!(uri.parts(), parts, "{good}");
            assert_eq!(uri.is_https(), good.starts_with("https"));
        }
        for (bad, why) in [
            ("http://rp.example.com/logout", "loopback"),
            ("http://localhost.evil.example/logout", "loopback"),
            ("https://rp.example.com/logout#x", "fragment"),
            ("https://u@rp.example.com/logout", "userinfo"),
            ("ftp://rp.example.com/", "absolute"),
            ("https://rp.example.com:0x1/", "host"),
        ] {
            let error = BackchannelLogoutUri::parse(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
            assert!(error.starts_with("backchannel_logout_uri "), "{error}");
        }
    }
}
