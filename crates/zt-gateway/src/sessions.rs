//! What the gateway holds about people: sign-ins in progress, open sessions
//! (their tokens refreshed in the background), the provider sessions and
//! people the provider said are logged out (back-channel logout), and the
//! tokens exchanged for each upstream. All bounded; all in memory: a gateway
//! that restarts sends people back through the provider, whose own session
//! signs them in again without a prompt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use zt_authn::Verified;

use crate::cookie::SessionId;
use crate::oidc::SignInStart;

/// Most sign-ins in progress at once.
const MAX_PENDING: usize = 10_000;
/// How long a sign-in may take, from the redirect to the callback.
pub const PENDING_TTL: u64 = 600;
/// Most open sessions.
const MAX_SESSIONS: usize = 100_000;
/// Most remembered logouts.
const MAX_LOGOUTS: usize = 100_000;
/// How long a logout is remembered: longer than any access token lives.
const LOGOUT_MEMORY: u64 = 24 * 3600;
/// Most exchanged tokens cached.
const MAX_EXCHANGED: usize = 100_000;
/// Most verified bearer tokens remembered.
const MAX_VERIFIED: usize = 10_000;
/// A token is refreshed (or no longer reused) this long before it expires.
pub const EARLY: u64 = 30;

/// A sign-in in progress, keyed by its `state`.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The PKCE verifier and the nonce.
    pub start: SignInStart,
    /// Where the person goes afterwards: a local path.
    pub return_to: String,
    /// The SHA-256 of the sign-in cookie's value, which only the browser that
    /// started the sign-in has (login CSRF).
    pub browser: [u8; 32],
    /// When it started.
    pub created: u64,
}

/// One person's session at the gateway.
pub struct Session {
    /// The cookie's session ID.
    pub id: SessionId,
    /// The person.
    pub sub: String,
    /// The provider's session (`sid`), if it said.
    pub sid: Option<String>,
    /// The absolute end, whatever happens.
    pub expires: u64,
    tokens: Mutex<Tokens>,
    /// Held while the tokens are refreshed: one refresh at a time, so that
    /// requests arriving together do not spend the refresh token twice
    /// (which the provider takes for theft).
    pub refreshing: tokio::sync::Mutex<()>,
}

/// A session's current tokens.
#[derive(Clone)]
pub struct Tokens {
    /// The access token.
    pub access: String,
    /// Its verified claims.
    pub verified: Arc<Verified>,
    /// When it expires.
    pub access_expires: u64,
    /// The refresh token, if the provider gave one.
    pub refresh: Option<String>,
}

impl Session {
    /// The current tokens.
    pub fn tokens(&self) -> Option<Tokens> {
        self.tokens.lock().ok().map(|t| t.clone())
    }

    /// Replaces the tokens (after a refresh).
    pub fn set_tokens(&self, tokens: Tokens) {
        if let Ok(mut current) = self.tokens.lock() {
            *current = tokens;
        }
    }
}

/// Everything, shared by every connection.
#[derive(Default)]
pub struct Sessions {
    pending: Mutex<HashMap<String, Pending>>,
    open: RwLock<HashMap<SessionId, Arc<Session>>>,
    logouts: Mutex<Logouts>,
    exchanged: Mutex<HashMap<(String, String), (String, u64)>>,
    verified: Mutex<HashMap<String, (Arc<Verified>, u64)>>,
}

/// Provider sessions and people logged out, with when.
#[derive(Default)]
struct Logouts {
    sids: HashMap<String, u64>,
    subs: HashMap<String, u64>,
}

impl Sessions {
    /// Remembers a sign-in; `false` when too many are in progress.
    pub fn start_sign_in(&self, pending: Pending, now: u64) -> bool {
        let Ok(mut all) = self.pending.lock() else {
            return false;
        };
        if all.len() >= MAX_PENDING {
            all.retain(|_, p| p.created + PENDING_TTL > now);
            if all.len() >= MAX_PENDING {
                return false;
            }
        }
        all.insert(pending.start.state.clone(), pending);
        true
    }

    /// Takes the sign-in `state` names, once, if it has not expired.
    pub fn finish_sign_in(&self, state: &str, now: u64) -> Option<Pending> {
        let pending = self.pending.lock().ok()?.remove(state)?;
        (pending.created + PENDING_TTL > now).then_some(pending)
    }

    /// Opens a session; `None` when the gateway holds too many, or the
    /// provider already logged this session out.
    pub fn open(
        &self,
        id: SessionId,
        sid: Option<String>,
        expires: u64,
        tokens: Tokens,
        now: u64,
    ) -> Option<Arc<Session>> {
        let sub = tokens.verified.subject().to_owned();
        let iat = issued_at(&tokens.verified);
        if self.logged_out(sid.as_deref(), &sub, iat) {
            return None;
        }
        let session = Arc::new(Session {
            id,
            sub,
            sid,
            expires,
            tokens: Mutex::new(tokens),
            refreshing: tokio::sync::Mutex::new(()),
        });
        let mut open = self.open.write().ok()?;
        if open.len() >= MAX_SESSIONS {
            open.retain(|_, s| s.expires > now);
            if open.len() >= MAX_SESSIONS {
                return None;
            }
        }
        open.insert(id, session.clone());
        Some(session)
    }

    /// The open session `id`, if it has not expired.
    pub fn get(&self, id: &SessionId, now: u64) -> Option<Arc<Session>> {
        let session = self.open.read().ok()?.get(id).cloned()?;
        (session.expires > now).then_some(session)
    }

    /// Ends session `id`.
    pub fn end(&self, id: &SessionId) -> Option<Arc<Session>> {
        self.open.write().ok()?.remove(id)
    }

    /// The provider logged out its session `sid` (a token naming one is about
    /// that session alone, whatever `sub` it names too), or else everything of
    /// `sub`: the gateway's sessions from it end now, and tokens from it are
    /// refused from now on. Returns how many sessions ended.
    pub fn logout(&self, sid: Option<&str>, sub: Option<&str>, now: u64) -> usize {
        let sub = if sid.is_some() { None } else { sub };
        if let Ok(mut logouts) = self.logouts.lock() {
            let logouts = &mut *logouts;
            for (map, key) in [(&mut logouts.sids, sid), (&mut logouts.subs, sub)] {
                let Some(key) = key else { continue };
                if map.len() >= MAX_LOGOUTS {
                    map.retain(|_, at| *at + LOGOUT_MEMORY > now);
                }
                if map.len() < MAX_LOGOUTS {
                    map.insert(key.to_owned(), now);
                }
            }
        }
        let Ok(mut open) = self.open.write() else {
            return 0;
        };
        let before = open.len();
        open.retain(|_, s| {
            let same_sid = sid.is_some() && s.sid.as_deref() == sid;
            let same_sub = sub == Some(s.sub.as_str());
            !(same_sid || same_sub)
        });
        before - open.len()
    }

    /// Whether tokens of provider session `sid`, or of `sub` issued at `iat`,
    /// were logged out.
    pub fn logged_out(&self, sid: Option<&str>, sub: &str, iat: u64) -> bool {
        let Ok(logouts) = self.logouts.lock() else {
            return true;
        };
        sid.is_some_and(|sid| logouts.sids.contains_key(sid))
            || logouts.subs.get(sub).is_some_and(|at| iat <= *at)
    }

    /// Whether a verified token was logged out.
    pub fn token_logged_out(&self, verified: &Verified) -> bool {
        let sid = verified.claims().get("sid").and_then(serde_json::Value::as_str);
        self.logged_out(sid, verified.subject(), issued_at(verified))
    }

    /// A cached exchanged token for `token` and `audience`, still good.
    pub fn exchanged(&self, token: &str, audience: &str, now: u64) -> Option<String> {
        let cache = self.exchanged.lock().ok()?;
        let (exchanged, expires) = cache.get(&(token.to_owned(), audience.to_owned()))?;
        (*expires > now + EARLY).then(|| exchanged.clone())
    }

    /// Caches an exchanged token.
    pub fn keep_exchanged(&self, token: &str, audience: &str, exchanged: String, expires: u64, now: u64) {
        if let Ok(mut cache) = self.exchanged.lock() {
            if cache.len() >= MAX_EXCHANGED {
                cache.retain(|_, (_, e)| *e > now);
                if cache.len() >= MAX_EXCHANGED {
                    cache.clear();
                }
            }
            cache.insert((token.to_owned(), audience.to_owned()), (exchanged, expires));
        }
    }

    /// A bearer token verified before, while it has not expired: its
    /// signature need not be checked again (the logout check still runs).
    pub fn verified(&self, token: &str, now: u64) -> Option<Arc<Verified>> {
        let cache = self.verified.lock().ok()?;
        let (verified, expires) = cache.get(token)?;
        (*expires > now).then(|| verified.clone())
    }

    /// Remembers a verified bearer token until its `exp`.
    pub fn keep_verified(&self, token: &str, verified: Arc<Verified>, now: u64) {
        let Some(expires) = verified.claims().get("exp").and_then(serde_json::Value::as_u64) else {
            return;
        };
        if let Ok(mut cache) = self.verified.lock() {
            if cache.len() >= MAX_VERIFIED {
                cache.retain(|_, (_, e)| *e > now);
                if cache.len() >= MAX_VERIFIED {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (verified, expires));
        }
    }

    /// Sessions whose access token needs refreshing by `now`.
    pub fn due_for_refresh(&self, now: u64) -> Vec<Arc<Session>> {
        let Ok(open) = self.open.read() else {
            return Vec::new();
        };
        open.values()
            .filter(|s| {
                s.expires > now
                    && s.tokens()
                        .is_some_and(|t| t.refresh.is_some() && t.access_expires <= now + EARLY * 2)
            })
            .cloned()
            .collect()
    }

    /// Drops what has expired.
    pub fn prune(&self, now: u64) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.retain(|_, p| p.created + PENDING_TTL > now);
        }
        if let Ok(mut open) = self.open.write() {
            open.retain(|_, s| s.expires > now);
        }
        if let Ok(mut logouts) = self.logouts.lock() {
            logouts.sids.retain(|_, at| *at + LOGOUT_MEMORY > now);
            logouts.subs.retain(|_, at| *at + LOGOUT_MEMORY > now);
        }
        if let Ok(mut cache) = self.exchanged.lock() {
            cache.retain(|_, (_, e)| *e > now);
        }
        if let Ok(mut cache) = self.verified.lock() {
            cache.retain(|_, (_, e)| *e > now);
        }
    }

    /// How many sessions are open.
    pub fn open_count(&self) -> usize {
        self.open.read().map_or(0, |o| o.len())
    }
}

/// A token's `iat` (0 when it has none: then any logout of its person covers it).
fn issued_at(verified: &Verified) -> u64 {
    verified
        .claims()
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// How often the refresher looks for tokens to refresh and prunes.
pub const REFRESH_TICK: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logout_naming_a_session_ends_that_session_alone() {
        let sessions = Sessions::default();
        sessions.logout(Some("s1"), Some("alice"), 100);
        assert!(
            sessions.logged_out(Some("s1"), "alice", 50),
            "the session's tokens"
        );
        assert!(
            !sessions.logged_out(Some("s2"), "alice", 50),
            "her other sessions are not over"
        );
        assert!(!sessions.logged_out(None, "alice", 50));
        // Without a sid: every token of hers issued until then.
        sessions.logout(None, Some("bob"), 100);
        assert!(sessions.logged_out(Some("s3"), "bob", 100));
        assert!(sessions.logged_out(None, "bob", 20));
        assert!(!sessions.logged_out(None, "bob", 101), "a sign-in after it");
        sessions.prune(100 + LOGOUT_MEMORY);
        assert!(
            !sessions.logged_out(Some("s1"), "alice", 50),
            "forgotten once no token can live"
        );
    }
}
