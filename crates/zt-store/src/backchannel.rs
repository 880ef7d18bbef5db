//! OpenID Connect Back-Channel Logout: which clients must hear that a session
//! ended. A client "holds tokens" from a session when a code, a device code or
//! a refresh family of the session was issued to it. Each notice is claimed
//! once in the datastore, so that of several servers following the change
//! feed only one sends it.

use sqlx::Row as _;

use crate::{Store, StoreError, to_i64};

/// Why a client is told that a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutCause {
    /// The session was revoked (by an admin, the user's disabling, sign-out).
    SessionRevoked,
    /// The client's refresh family was revoked because a spent refresh token
    /// or a used code came back: its tokens may be in a thief's hands.
    FamilyRevoked,
}

impl LogoutCause {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutCause::SessionRevoked => "session_revoked",
            LogoutCause::FamilyRevoked => "family_revoked",
        }
    }
}

/// A logout token to send, claimed by this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutNotice {
    /// The session (`sid`).
    pub session_id: String,
    /// The session's user (`sub`).
    pub sub: String,
    /// The client (`aud`).
    pub client_id: String,
    /// Its `backchannel_logout_uri`, as registered.
    pub uri: String,
    /// Why.
    pub cause: LogoutCause,
}

/// Family revocations that mean the client's tokens may be stolen.
const THEFT_REASONS: &str = "('refresh token reused', 'authorization code replayed')";

impl Store {
    /// Records that `client` exchanged a token of session `session_id` (RFC
    /// 8693): it holds the session's tokens from now on, and hears of its end.
    pub async fn record_exchange(&self, session_id: &str, client: &str, now: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_exchanges (session_id, client_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (session_id, client_id) DO NOTHING",
        )
        .bind(session_id)
        .bind(client)
        .bind(i64::try_from(now).unwrap_or(i64::MAX))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Claims the logout notices a change to session `session_id` calls for
    /// and that no server claimed before: one per client with a logout URI
    /// that holds tokens from it once the session is revoked; while it is
    /// open, one per refresh family revoked for theft (reuse, a code
    /// replayed). Returns what this server must send.
    pub async fn claim_logout_notices(
        &self,
        session_id: &str,
        now: u64,
    ) -> Result<Vec<LogoutNotice>, StoreError> {
        // Read first: most session changes (a token issued) call for nothing,
        // and then take no write lock.
        let session = sqlx::query("SELECT sub, revoked_at FROM sessions WHERE id = $1")
            .bind(session_id)
            .fetch_optional(self.pool())
            .await?;
        let Some(session) = session else {
            return Ok(Vec::new());
        };
        let sub: String = session.try_get("sub")?;
        let revoked = session.try_get::<Option<i64>, _>("revoked_at")?.is_some();
        // (notice key, client, URI)
        let candidates: Vec<(String, String, String)> = if revoked {
            sqlx::query(
                "SELECT c.client_id, c.backchannel_logout_uri FROM oauth_clients c \
                 WHERE c.backchannel_logout_uri IS NOT NULL AND c.client_id IN ( \
                 SELECT client_id FROM refresh_families WHERE session_id = $1 \
                 UNION SELECT client_id FROM authorization_codes WHERE session_id = $1 \
                 UNION SELECT client_id FROM device_codes WHERE session_id = $1 \
                 UNION SELECT client_id FROM session_exchanges WHERE session_id = $1) \
                 ORDER BY c.client_id",
            )
            .bind(session_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                let client: String = row.try_get("client_id")?;
                Ok((
                    format!("session {session_id} {client}"),
                    client,
                    row.try_get("backchannel_logout_uri")?,
                ))
            })
            .collect::<Result<_, StoreError>>()?
        } else {
            sqlx::query(&format!(
                "SELECT f.id, c.client_id, c.backchannel_logout_uri FROM refresh_families f \
                 JOIN oauth_clients c ON c.client_id = f.client_id \
                 WHERE f.session_id = $1 AND f.reason IN {THEFT_REASONS} \
                 AND c.backchannel_logout_uri IS NOT NULL ORDER BY f.id"
            ))
            .bind(session_id)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| {
                Ok((
                    format!("family {}", row.try_get::<String, _>("id")?),
                    row.try_get("client_id")?,
                    row.try_get("backchannel_logout_uri")?,
                ))
            })
            .collect::<Result<_, StoreError>>()?
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut claimed = Vec::new();
        for (notice, client_id, uri) in candidates {
            let inserted = sqlx::query(
                "INSERT INTO backchannel_logouts (notice, session_id, client_id, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (notice) DO NOTHING",
            )
            .bind(&notice)
            .bind(session_id)
            .bind(&client_id)
            .bind(to_i64(now))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 1 {
                claimed.push(LogoutNotice {
                    session_id: session_id.to_owned(),
                    sub: sub.clone(),
                    client_id,
                    uri,
                    cause: if revoked {
                        LogoutCause::SessionRevoked
                    } else {
                        LogoutCause::FamilyRevoked
                    },
                });
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }
}
