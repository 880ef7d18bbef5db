//! Session cookies: `__Host-zt-session`, `Secure`, `HttpOnly`,
//! `SameSite=Lax`, `Path=/`. The value is sealed with AES-256-GCM under the
//! gateway's key: the session's random ID and its absolute expiry,
//! authenticated together with the cookie's name. A cookie sealed by another
//! instance or an earlier key does not open; one that opens names a session
//! the gateway must still hold ([`crate::sessions`]), so a stolen cookie dies
//! with its session.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The session cookie's name: `__Host-` makes browsers require `Secure`,
/// `Path=/` and no `Domain`, so no sibling host can set or read it.
pub const SESSION: &str = "__Host-zt-session";
/// The cookie that binds a sign-in in progress to the browser that started it.
pub const SIGN_IN: &str = "__Host-zt-sign-in";
/// The largest `Cookie` header read, in bytes (all cookies together).
pub const MAX_COOKIE_HEADER: usize = 8 * 1024;

const VERSION: &str = "v1.";
const KEY_LEN: usize = 32;
/// A session's ID: 256 random bits.
pub type SessionId = [u8; 32];

/// Why the key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or making the key file.
    #[error("session.key_file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// The key cookies are sealed with.
pub struct CookieKey {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKey(…)")
    }
}

impl CookieKey {
    /// Reads the key file (base64url, 32 bytes), making it (0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let fail = |reason: String| KeyError::File {
            path: path.display().to_string(),
            reason,
        };
        let random = SystemRandom::new();
        let bytes = match std::fs::read_to_string(path) {
            Ok(text) => URL_SAFE_NO_PAD
                .decode(text.trim())
                .ok()
                .filter(|b| b.len() == KEY_LEN)
                .ok_or_else(|| fail(format!("expected {KEY_LEN} bytes, base64url")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = vec![0; KEY_LEN];
                random
                    .fill(&mut bytes)
                    .map_err(|_| fail("no randomness".into()))?;
                zt_fs_write(path, URL_SAFE_NO_PAD.encode(&bytes).into_bytes()).map_err(fail)?;
                bytes
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        Self::from_bytes(&bytes).ok_or_else(|| fail("not an AES-256 key".into()))
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// A new random session ID.
    pub fn new_session_id(&self) -> Option<SessionId> {
        let mut id = [0; 32];
        self.random.fill(&mut id).ok()?;
        Some(id)
    }

    /// The cookie value for `id`, valid until `expires` (Unix seconds).
    pub fn seal(&self, name: &str, id: &SessionId, expires: u64) -> Option<String> {
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut data = Vec::with_capacity(40 + 16);
        data.extend_from_slice(id);
        data.extend_from_slice(&expires.to_be_bytes());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut data,
            )
            .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&data);
        Some(format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(sealed)))
    }

    /// The session ID in `value`, if it opens under this key for `name` and
    /// has not expired at `now`.
    pub fn open(&self, name: &str, value: &str, now: u64) -> Option<SessionId> {
        let encoded = value.strip_prefix(VERSION)?;
        if encoded.len() > 256 {
            return None;
        }
        let sealed = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        let (nonce, data) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut data)
            .ok()?;
        let (id, expires) = plain.split_at_checked(32)?;
        let expires = u64::from_be_bytes(expires.try_into().ok()?);
        if expires <= now {
            return None;
        }
        id.try_into().ok()
    }
}

fn zt_fs_write(path: &Path, bytes: Vec<u8>) -> Result<(), String> {
    zt_fs::write_atomically(&[(path.to_owned(), bytes, zt_fs::PRIVATE_MODE)]).map_err(|e| e.to_string())
}

/// The value of cookie `name` in a request's `Cookie` headers: `None` when
/// absent, and also when it is there twice (which one would the browser
/// mean?) or the header is over [`MAX_COOKIE_HEADER`].
pub fn find<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    let mut total = 0;
    for value in headers.get_all(http::header::COOKIE) {
        total += value.len();
        if total > MAX_COOKIE_HEADER {
            return None;
        }
        let value = value.to_str().ok()?;
        for pair in value.split(';') {
            let Some((key, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if key == name {
                if found.is_some() {
                    return None;
                }
                found = Some(v.trim_matches('"'));
            }
        }
    }
    found
}

/// A `Set-Cookie` value for a `__Host-` cookie living `max_age` seconds.
pub fn set(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// A `Set-Cookie` value that removes cookie `name`.
pub fn clear(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn a_cookie_opens_only_under_its_key_name_and_life() {
        let key = CookieKey::from_bytes(&[7; 32]).unwrap();
        let other = CookieKey::from_bytes(&[8; 32]).unwrap();
        let id = key.new_session_id().unwrap();
        let value = key.seal(SESSION, &id, 1000).unwrap();
        assert_eq!(key.open(SESSION, &value, 999), Some(id));
        assert_eq!(key.open(SESSION, &value, 1000), None, "expired");
        assert_eq!(other.open(SESSION, &value, 1), None, "another instance's key");
        assert_eq!(key.open(SIGN_IN, &value, 1), None, "another cookie's value");
        let mut bytes = value.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            key.open(SESSION, std::str::from_utf8(&bytes).unwrap(), 1),
            None,
            "tampered"
        );
        assert_eq!(key.open(SESSION, &value.replace("v1.", "v2."), 1), None);
        assert_eq!(key.open(SESSION, "v1.", 1), None);
        assert_eq!(key.open(SESSION, &format!("v1.{}", "A".repeat(10_000)), 1), None);
        assert_ne!(
            key.seal(SESSION, &id, 1000).unwrap(),
            value,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn the_key_file_is_made_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie.key");
        let first = CookieKey::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let id = first.new_session_id().unwrap();
        let value = first.seal(SESSION, &id, 10).unwrap();
        let again = CookieKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(SESSION, &value, 1), Some(id));
        std::fs::write(&path, "short").unwrap();
        let error = CookieKey::load_or_create(&path).unwrap_err().to_string();
        assert!(
            error.contains("cookie.key") && error.contains("32 bytes"),
            "{error}"
        );
    }

    #[test]
    fn cookies_are_found_once_or_not_at_all() {
        let mut headers = http::HeaderMap::new();
        headers.append("cookie", "a=1; __Host-zt-session=v1.x; b=2".parse().unwrap());
        assert_eq!(find(&headers, SESSION), Some("v1.x"));
        headers.append("cookie", "__Host-zt-session=v1.y".parse().unwrap());
        assert_eq!(find(&headers, SESSION), None, "two values: neither");
        let mut big = http::HeaderMap::new();
        big.append(
            "cookie",
            format!("__Host-zt-session=v1.x; p={}", "x".repeat(9000))
                .parse()
                .unwrap(),
        );
        assert_eq!(find(&big, SESSION), None);
    }
}
