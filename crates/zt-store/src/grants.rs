//! What the OpenID Provider hands out and must remember: authorization codes
//! (single use, short-lived; a code presented twice revokes what it issued),
//! refresh tokens (rotated on every use; a spent token presented again revokes
//! its whole family, after a short grace for a concurrent retry) and the IDs
//! of access tokens revoked before their expiry. Codes and refresh tokens are
//! 256 random bits, stored only as SHA-256.

use sqlx::Row as _;

use crate::sessions::revoke_families;
use crate::{
    RefreshFamily, Session, Store, StoreError, TokenProblem, User, random_id, random_token, sha256_hex,
    to_i64, to_u64,
};

/// How many times a spent refresh token may be redeemed again inside the grace.
pub const MAX_GRACE_RETRIES: u64 = 2;

/// An authorization code to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCode {
    /// The client it was issued to.
    pub client_id: String,
    /// The session it was issued in.
    pub session_id: String,
    /// The redirect URI the authorization request named, verbatim.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The scope granted, space-separated.
    pub scope: String,
    /// The request's `nonce`, for the ID token.
    pub nonce: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
}

/// A code just redeemed: what it was issued for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemedCode {
    /// The client it was issued to.
    pub client_id: String,
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The scope granted.
    pub scope: String,
    /// The `nonce`.
    pub nonce: Option<String>,
    /// The session, open when the code was redeemed.
    pub session: Session,
}

/// Why a code or refresh token was not redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Unknown, used or expired (a used code has now revoked what it issued).
    #[error("{what} is {problem}")]
    Token {
        /// `authorization code` or `refresh token`.
        what: &'static str,
        /// Which.
        problem: TokenProblem,
    },
    /// A refresh token presented by a client other than its own.
    #[error("refresh token was issued to another client")]
    WrongClient,
    /// A refresh that asks for more than the family was granted.
    #[error("a refresh cannot widen the scope granted")]
    WiderScope,
    /// A spent refresh token came back after the grace: the family is revoked.
    #[error("refresh token was already used: every token of its family is revoked")]
    Reused {
        /// The family revoked.
        family_id: String,
        /// Its session.
        session_id: String,
    },
    /// The family, session or user is revoked, disabled or past its end.
    #[error("{0}")]
    Ended(String),
}

/// One refresh-token rotation asked for.
#[derive(Debug, Clone, Copy)]
pub struct Rotation<'a> {
    /// The refresh token presented.
    pub token: &'a str,
    /// The client presenting it.
    pub client_id: &'a str,
    /// The scope asked for, if any (no wider than the family's).
    pub scope: Option<&'a str>,
}

/// A refresh token just issued, and its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedRefresh {
    /// The token: 256 random bits, base64url (only its hash is stored).
    pub token: String,
    /// Its family.
    pub family: RefreshFamily,
    /// The family's session.
    pub session: Session,
    /// The session's user.
    pub user: User,
    /// Whether this redemption was a retry inside the grace.
    pub retried: bool,
}

impl Store {
    /// Stores a code; returns it (only its hash is kept).
    pub async fn create_code(&self, code: &NewCode, now: u64) -> Result<String, StoreError> {
        let token = random_token()?;
        sqlx::query(
            "INSERT INTO authorization_codes (code_sha256, client_id, session_id, redirect_uri, code_challenge, \
             scope, nonce, created_at, expires_at, used_at, family_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)",
        )
        .bind(sha256_hex(&token))
        .bind(&code.client_id)
        .bind(&code.session_id)
        .bind(&code.redirect_uri)
        .bind(&code.code_challenge)
        .bind(&code.scope)
        .bind(&code.nonce)
        .bind(to_i64(now))
        .bind(to_i64(code.expires_at))
        .execute(self.pool())
        .await?;
        Ok(token)
    }

    /// Redeems a code once. A code presented again revokes the refresh family
    /// its first redemption started (RFC 9700 §4.2.4); an expired one, or one
    /// whose session has ended, redeems nothing.
    pub async fn redeem_code(
        &self,
        code: &str,
        now: u64,
    ) -> Result<Result<RedeemedCode, GrantError>, StoreError> {
        let hash = sha256_hex(code);
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT client_id, session_id, redirect_uri, code_challenge, scope, nonce, expires_at, used_at, \
             family_id FROM authorization_codes WHERE code_sha256 = $1",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let code_error = |problem| {
            Ok(Err(GrantError::Token {
                what: "authorization code",
                problem,
            }))
        };
        let Some(row) = row else {
            return code_error(TokenProblem::Unknown);
        };
        if row.try_get::<Option<i64>, _>("used_at")?.is_some() {
            if let Some(family) = row.try_get::<Option<String>, _>("family_id")? {
                revoke_families(&mut tx, "id = $3", &family, "authorization code replayed", now).await?;
                self.record_change(&mut tx, "session", &row.try_get::<String, _>("session_id")?, now)
                    .await?;
                tx.commit().await?;
                self.notify_local();
            }
            return code_error(TokenProblem::Used);
        }
        if to_u64(row.try_get("expires_at")?) <= now {
            return code_error(TokenProblem::Expired);
        }
        sqlx::query("UPDATE authorization_codes SET used_at = $1 WHERE code_sha256 = $2")
            .bind(to_i64(now))
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let session_id: String = row.try_get("session_id")?;
        let (session, user) = self.session(&session_id).await?;
        if !session.is_open(now) || user.disabled {
            return Ok(Err(GrantError::Ended(format!("session {session_id} has ended"))));
        }
        Ok(Ok(RedeemedCode {
            client_id: row.try_get("client_id")?,
            redirect_uri: row.try_get("redirect_uri")?,
            code_challenge: row.try_get("code_challenge")?,
            scope: row.try_get("scope")?,
            nonce: row.try_get("nonce")?,
            session,
        }))
    }

    /// Starts a refresh-token family in an open session with its first token;
    /// `code`, when given, is the code whose redemption this is (a replay of
    /// it revokes the family).
    pub async fn start_refresh_family(
        &self,
        session_id: &str,
        client_id: &str,
        scope: &str,
        code: Option<&str>,
        now: u64,
    ) -> Result<Result<IssuedRefresh, GrantError>, StoreError> {
        let id = random_id()?;
        let token = random_token()?;
        let mut tx = self.begin_write().await?;
        let open = sqlx::query(
            "SELECT s.id FROM sessions s JOIN users u ON u.sub = s.sub \
             WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL",
        )
        .bind(session_id)
        .bind(to_i64(now))
        .fetch_optional(&mut *tx)
        .await?;
        if open.is_none() {
            return Ok(Err(GrantError::Ended(format!("session {session_id} has ended"))));
        }
        sqlx::query(
            "INSERT INTO refresh_families (id, session_id, client_id, scope, created_at, revoked_at, reason) \
             VALUES ($1, $2, $3, $4, $5, NULL, NULL)",
        )
        .bind(&id)
        .bind(session_id)
        .bind(client_id)
        .bind(scope)
        .bind(to_i64(now))
        .execute(&mut *tx)
        .await?;
        insert_refresh_token(&mut tx, &token, &id, now).await?;
        if let Some(code) = code {
            sqlx::query("UPDATE authorization_codes SET family_id = $1 WHERE code_sha256 = $2")
                .bind(&id)
                .bind(sha256_hex(code))
                .execute(&mut *tx)
                .await?;
        }
        self.record_change(&mut tx, "session", session_id, now).await?;
        tx.commit().await?;
        self.notify_local();
        let (session, user) = self.session(session_id).await?;
        Ok(Ok(IssuedRefresh {
            token,
            family: RefreshFamily {
                id,
                session_id: session_id.to_owned(),
                client_id: client_id.to_owned(),
                scope: scope.to_owned(),
                created_at: now,
                revoked_at: None,
                reason: None,
            },
            session,
            user,
            retried: false,
        }))
    }

    /// Rotates a refresh token: the one presented is spent and a new one of
    /// the same family issued. A spent token presented again within `grace`
    /// seconds of its first use (at most [`MAX_GRACE_RETRIES`] times) is a
    /// concurrent retry and gets a token too; after that it is theft, and the
    /// whole family is revoked (RFC 9700 §4.14.2). A `scope` wider than the
    /// family's is refused before anything is spent.
    pub async fn rotate_refresh_token(
        &self,
        token: &str,
        client_id: &str,
        scope: Option<&str>,
        grace: u64,
        now: u64,
    ) -> Result<Result<IssuedRefresh, GrantError>, StoreError> {
        let rotation = Rotation {
            token,
            client_id,
            scope,
        };
        let mut outcomes = self.rotate_refresh_tokens(&[rotation], grace, now).await?;
        Ok(outcomes.pop().unwrap_or(Err(GrantError::Token {
            what: "refresh token",
            problem: TokenProblem::Unknown,
        })))
    }

    /// [`Store::rotate_refresh_token`] for several requests in one
    /// transaction, in order (a token presented twice in one batch is seen
    /// spent the second time): one commit, one sync to disk, for all of them.
    pub async fn rotate_refresh_tokens(
        &self,
        rotations: &[Rotation<'_>],
        grace: u64,
        now: u64,
    ) -> Result<Vec<Result<IssuedRefresh, GrantError>>, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut rotated = Vec::with_capacity(rotations.len());
        let mut revoked = false;
        for rotation in rotations {
            let outcome = self.rotate_in(&mut tx, rotation, grace, now).await?;
            revoked |= matches!(outcome, Err(GrantError::Reused { .. }));
            rotated.push(outcome);
        }
        tx.commit().await?;
        if revoked {
            self.notify_local();
        }
        let mut outcomes = Vec::with_capacity(rotated.len());
        for outcome in rotated {
            outcomes.push(match outcome {
                Ok((token, family, retried)) => {
                    let (session, user) = self.session(&family.session_id).await?;
                    Ok(IssuedRefresh {
                        token,
                        family,
                        session,
                        user,
                        retried,
                    })
                }
                Err(e) => Err(e),
            });
        }
        Ok(outcomes)
    }

    /// One rotation inside `tx`: the new token, its family, whether it was a
    /// retry inside the grace.
    async fn rotate_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        rotation: &Rotation<'_>,
        grace: u64,
        now: u64,
    ) -> Result<Result<(String, RefreshFamily, bool), GrantError>, StoreError> {
        let hash = sha256_hex(rotation.token);
        let row = sqlx::query(
            "SELECT t.family_id, t.used_at, t.retries, f.session_id, f.client_id, f.scope, f.created_at, \
             f.revoked_at, f.reason, s.revoked_at AS session_revoked_at, s.expires_at AS session_expires_at, \
             u.disabled_at FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
             JOIN sessions s ON s.id = f.session_id JOIN users u ON u.sub = s.sub WHERE t.token_sha256 = $1",
        )
        .bind(&hash)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(GrantError::Token {
                what: "refresh token",
                problem: TokenProblem::Unknown,
            }));
        };
        let family = RefreshFamily {
            id: row.try_get("family_id")?,
            session_id: row.try_get("session_id")?,
            client_id: row.try_get("client_id")?,
            scope: row.try_get("scope")?,
            created_at: to_u64(row.try_get("created_at")?),
            revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(to_u64),
            reason: row.try_get("reason")?,
        };
        if family.client_id != rotation.client_id {
            return Ok(Err(GrantError::WrongClient));
        }
        if family.revoked_at.is_some() {
            let reason = family.reason.unwrap_or_default();
            return Ok(Err(GrantError::Ended(format!(
                "refresh token family is revoked: {reason}"
            ))));
        }
        if let Some(asked) = rotation.scope
            && asked
                .split(' ')
                .any(|s| !family.scope.split(' ').any(|granted| granted == s))
        {
            return Ok(Err(GrantError::WiderScope));
        }
        let session_open = row.try_get::<Option<i64>, _>("session_revoked_at")?.is_none()
            && to_u64(row.try_get("session_expires_at")?) > now
            && row.try_get::<Option<i64>, _>("disabled_at")?.is_none();
        if !session_open {
            return Ok(Err(GrantError::Ended(format!(
                "session {} has ended",
                family.session_id
            ))));
        }
        let mut retried = false;
        if let Some(used_at) = row.try_get::<Option<i64>, _>("used_at")?.map(to_u64) {
            let retries = to_u64(row.try_get("retries")?);
            // A grace of zero allows no retry at all, even within the second
            // the token was spent in (times are whole seconds).
            if grace == 0 || now.saturating_sub(used_at) > grace || retries >= MAX_GRACE_RETRIES {
                revoke_families(tx, "id = $3", &family.id, "refresh token reused", now).await?;
                self.record_change(tx, "session", &family.session_id, now).await?;
                return Ok(Err(GrantError::Reused {
                    family_id: family.id,
                    session_id: family.session_id,
                }));
            }
            sqlx::query("UPDATE refresh_tokens SET retries = retries + 1 WHERE token_sha256 = $1")
                .bind(&hash)
                .execute(&mut **tx)
                .await?;
            retried = true;
        } else {
            sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE token_sha256 = $2")
                .bind(to_i64(now))
                .bind(&hash)
                .execute(&mut **tx)
                .await?;
        }
        let next = random_token()?;
        insert_refresh_token(tx, &next, &family.id, now).await?;
        Ok(Ok((next, family, retried)))
    }

    /// Revokes the family of a refresh token (RFC 7009); returns it, or
    /// `None` for a token never issued here.
    pub async fn revoke_refresh_token(
        &self,
        token: &str,
        client_id: &str,
        now: u64,
    ) -> Result<Option<RefreshFamily>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT f.id, f.session_id FROM refresh_tokens t JOIN refresh_families f ON f.id = t.family_id \
             WHERE t.token_sha256 = $1 AND f.client_id = $2",
        )
        .bind(sha256_hex(token))
        .bind(client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let family: String = row.try_get("id")?;
        let session: String = row.try_get("session_id")?;
        revoke_families(&mut tx, "id = $3", &family, "revoked by the client", now).await?;
        self.record_change(&mut tx, "session", &session, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(self
            .refresh_families(&session)
            .await?
            .into_iter()
            .find(|f| f.id == family))
    }

    /// The refresh family a token belongs to, with its session and user, if
    /// the token was issued here to `client_id` (for introspection).
    pub async fn refresh_token_state(
        &self,
        token: &str,
        client_id: &str,
    ) -> Result<Option<(RefreshFamily, bool, Session, User)>, StoreError> {
        let row = sqlx::query(
            "SELECT t.family_id, t.used_at, f.session_id FROM refresh_tokens t \
             JOIN refresh_families f ON f.id = t.family_id WHERE t.token_sha256 = $1 AND f.client_id = $2",
        )
        .bind(sha256_hex(token))
        .bind(client_id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let family_id: String = row.try_get("family_id")?;
        let spent = row.try_get::<Option<i64>, _>("used_at")?.is_some();
        let session_id: String = row.try_get("session_id")?;
        let Some(family) = self
            .refresh_families(&session_id)
            .await?
            .into_iter()
            .find(|f| f.id == family_id)
        else {
            return Ok(None);
        };
        let (session, user) = self.session(&session_id).await?;
        Ok(Some((family, spent, session, user)))
    }

    /// Remembers an access token revoked before `expires_at`.
    pub async fn revoke_access_token(&self, jti: &str, expires_at: u64, now: u64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM revoked_access_tokens WHERE expires_at <= $1")
            .bind(to_i64(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(to_i64(expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether an access token was revoked.
    pub async fn is_access_token_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT jti FROM revoked_access_tokens WHERE jti = $1")
                .bind(jti)
                .fetch_optional(self.pool())
                .await?
                .is_some(),
        )
    }

    /// Deletes codes and refresh tokens past any use: codes (device codes too) expired more than
    /// `keep` seconds ago, tokens of families revoked or of sessions ended
    /// more than `keep` ago. Returns how many rows went.
    pub async fn prune_grants(&self, keep: u64, now: u64) -> Result<u64, StoreError> {
        let before = to_i64(now.saturating_sub(keep));
        let mut tx = self.begin_write().await?;
        let codes = sqlx::query("DELETE FROM authorization_codes WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let devices = sqlx::query("DELETE FROM device_codes WHERE expires_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let tokens = sqlx::query(
            "DELETE FROM refresh_tokens WHERE family_id IN (SELECT f.id FROM refresh_families f \
             JOIN sessions s ON s.id = f.session_id WHERE f.revoked_at < $1 OR s.revoked_at < $1 \
             OR s.expires_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(codes + devices + tokens)
    }
}

async fn insert_refresh_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    token: &str,
    family_id: &str,
    now: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_sha256, family_id, created_at, used_at, retries) \
         VALUES ($1, $2, $3, NULL, 0)",
    )
    .bind(sha256_hex(token))
    .bind(family_id)
    .bind(to_i64(now))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
