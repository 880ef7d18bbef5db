//! What a person signs in with and what signing in makes: WebAuthn credentials,
//! sessions (with an absolute expiry) and the refresh-token families issued in
//! a session. Revoking a session revokes its families in the same transaction.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::people::sub_of;
use crate::{Store, StoreError, User, random_id, random_token, sha256_hex, to_i64, to_u64};

/// A registered WebAuthn credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    /// The credential ID, base64url.
    pub id: String,
    /// The user it belongs to, by name.
    pub user: String,
    /// The authenticator model's AAGUID (all zeros when it does not say).
    pub aaguid: String,
    /// The last signature counter seen.
    pub sign_count: u64,
    /// The authenticator may back the credential up (a synced passkey).
    pub backup_eligible: bool,
    /// The credential is backed up.
    pub backed_up: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, if ever used.
    pub last_used_at: Option<u64>,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<u64>,
}

/// A credential to store, as a registration ceremony produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// The credential ID, base64url.
    pub id: String,
    /// The user's `sub`.
    pub sub: String,
    /// The stored credential (public key and state), JSON.
    pub public_key: String,
    /// The AAGUID.
    pub aaguid: String,
    /// The signature counter at registration.
    pub sign_count: u64,
    /// Backup eligibility.
    pub backup_eligible: bool,
    /// Backup state.
    pub backed_up: bool,
}

/// A credential as a sign-in ceremony needs it: what is shown, whose it is,
/// and the stored state to verify an assertion with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// What `zt user credentials` shows.
    pub credential: Credential,
    /// The user's `sub`.
    pub sub: String,
    /// The stored credential (public key and state), JSON.
    pub public_key: String,
}

/// What a successful assertion changes in a stored credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialUse {
    /// The signature counter the authenticator reported.
    pub sign_count: u64,
    /// Its backup state now.
    pub backed_up: bool,
    /// The stored credential, updated, JSON.
    pub public_key: String,
}

/// A sign-in session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Session {
    /// Random 128-bit ID, hex.
    pub id: String,
    /// The user, by name.
    pub user: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Absolute end, Unix seconds: nothing issued in the session outlives it.
    pub expires_at: u64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<u64>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// When the person authenticated, Unix seconds.
    #[serde(default)]
    pub auth_time: u64,
    /// How (RFC 8176 values: `hwk`, `user`, `pwd`…).
    #[serde(default)]
    pub amr: Vec<String>,
    /// The assurance level reached.
    #[serde(default)]
    pub acr: String,
    /// The address the person signed in from.
    #[serde(default)]
    pub source_ip: String,
}

impl Session {
    /// Open at `now`: neither revoked nor past its absolute end.
    pub fn is_open(&self, now: u64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// What a sign-in establishes, to open a session with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignIn {
    /// The user's `sub`.
    pub sub: String,
    /// The session's absolute end, Unix seconds.
    pub expires_at: u64,
    /// How the person authenticated (RFC 8176 `amr` values).
    pub amr: Vec<String>,
    /// The assurance level reached.
    pub acr: String,
    /// The address the person signed in from.
    pub source_ip: String,
}

/// A session just opened, with the secret that names it to the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedSession {
    /// The session.
    pub session: Session,
    /// 256 random bits, base64url, for the session cookie; only its SHA-256 is stored.
    pub secret: String,
}

/// A refresh-token family: every refresh token rotated from one grant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefreshFamily {
    /// Random 128-bit ID, hex.
    pub id: String,
    /// The session it was issued in.
    pub session_id: String,
    /// The OAuth client it was issued to.
    pub client_id: String,
    /// The scope granted, space-separated.
    #[serde(default)]
    pub scope: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<u64>,
    /// Why it was revoked.
    pub reason: Option<String>,
}

const CREDENTIAL_COLUMNS: &str = "c.id, u.name, c.aaguid, c.sign_count, c.backup_eligible, c.backed_up, \
     c.created_at, c.last_used_at, c.revoked_at";

const SESSION_COLUMNS: &str = "s.id, u.name, s.created_at, s.expires_at, s.revoked_at, s.revoke_reason, \
     s.auth_time, s.amr, s.acr, s.source_ip";

impl Store {
    /// Stores a credential a registration ceremony produced.
    pub async fn add_credential(
        &self,
        credential: &NewCredential,
        now: u64,
    ) -> Result<Credential, StoreError> {
        let mut tx = self.begin_write().await?;
        let stored = self.insert_credential(&mut tx, credential, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(stored)
    }

    /// Stores the first credential of an invited user and uses the invite, in
    /// one transaction: of two registrations racing on one invite, only one
    /// is stored.
    pub async fn enroll_credential(
        &self,
        invite: &str,
        credential: &NewCredential,
        now: u64,
    ) -> Result<Credential, StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = crate::people::consume_invite_in(&mut tx, invite, now).await?;
        if sub != credential.sub {
            return Err(StoreError::Invite(crate::TokenProblem::Unknown));
        }
        self.record_change(&mut tx, "invite", &sub, now).await?;
        let stored = self.insert_credential(&mut tx, credential, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(stored)
    }

    async fn insert_credential(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        credential: &NewCredential,
        now: u64,
    ) -> Result<Credential, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO credentials (id, sub, public_key, aaguid, sign_count, backup_eligible, backed_up, \
             created_at, last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)",
        )
        .bind(&credential.id)
        .bind(&credential.sub)
        .bind(&credential.public_key)
        .bind(&credential.aaguid)
        .bind(to_i64(credential.sign_count))
        .bind(i64::from(credential.backup_eligible))
        .bind(i64::from(credential.backed_up))
        .bind(to_i64(now))
        .execute(&mut **tx)
        .await;
        match inserted {
            Err(e) if crate::is_unique_violation(&e) => {
                return Err(StoreError::duplicate("credential", &credential.id));
            }
            other => other?,
        };
        self.record_change(tx, "credential", &credential.id, now).await?;
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c JOIN users u ON u.sub = c.sub WHERE c.id = $1"
        ))
        .bind(&credential.id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::missing("user", &credential.sub))?;
        credential_from_row(&row)
    }

    /// A credential by ID, revoked or not, with its owner's `sub` and its stored state.
    pub async fn credential_by_id(&self, id: &str) -> Result<Option<StoredCredential>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS}, c.sub, c.public_key FROM credentials c JOIN users u ON u.sub = c.sub \
             WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredCredential {
            credential: credential_from_row(&row)?,
            sub: row.try_get("sub")?,
            public_key: row.try_get("public_key")?,
        }))
    }

    /// Records a successful assertion: the counter, backup state and stored
    /// state it updated, and when. A revoked credential is left alone.
    pub async fn record_credential_use(
        &self,
        id: &str,
        used: &CredentialUse,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE credentials SET sign_count = $1, backed_up = $2, public_key = $3, last_used_at = $4 \
             WHERE id = $5 AND revoked_at IS NULL",
        )
        .bind(to_i64(used.sign_count))
        .bind(i64::from(used.backed_up))
        .bind(&used.public_key)
        .bind(to_i64(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::missing("credential", id));
        }
        self.record_change(&mut tx, "credential", id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// A user's credentials, revoked ones included, oldest first.
    pub async fn credentials(&self, user: &str) -> Result<Vec<Credential>, StoreError> {
        let user = self.user(user).await?;
        let rows = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c JOIN users u ON u.sub = c.sub \
             WHERE c.sub = $1 ORDER BY c.created_at, c.id"
        ))
        .bind(&user.sub)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(credential_from_row).collect()
    }

    /// Revokes a credential: it can no longer sign in. Revoking again keeps the first time.
    pub async fn revoke_credential(&self, id: &str, now: u64) -> Result<Credential, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE credentials SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(to_i64(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c JOIN users u ON u.sub = c.sub WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::missing("credential", id))?;
        let credential = credential_from_row(&row)?;
        self.record_change(&mut tx, "credential", id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(credential)
    }

    /// Opens a session for a person who just signed in; a disabled user gets none.
    pub async fn create_session(&self, sign_in: &SignIn, now: u64) -> Result<OpenedSession, StoreError> {
        let id = random_id()?;
        let secret = random_token()?;
        let amr = serde_json::to_string(&sign_in.amr).map_err(|e| StoreError::Hash(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let user = sqlx::query("SELECT name, disabled_at FROM users WHERE sub = $1")
            .bind(&sign_in.sub)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::missing("user", &sign_in.sub))?;
        let name: String = user.try_get("name")?;
        if user.try_get::<Option<i64>, _>("disabled_at")?.is_some() {
            return Err(StoreError::Disabled(name));
        }
        sqlx::query(
            "INSERT INTO sessions (id, sub, created_at, expires_at, revoked_at, revoke_reason, secret_sha256, \
             auth_time, amr, acr, source_ip) VALUES ($1, $2, $3, $4, NULL, NULL, $5, $3, $6, $7, $8)",
        )
        .bind(&id)
        .bind(&sign_in.sub)
        .bind(to_i64(now))
        .bind(to_i64(sign_in.expires_at))
        .bind(sha256_hex(&secret))
        .bind(&amr)
        .bind(&sign_in.acr)
        .bind(&sign_in.source_ip)
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "session", &id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(OpenedSession {
            session: Session {
                id,
                user: name,
                created_at: now,
                expires_at: sign_in.expires_at,
                revoked_at: None,
                revoke_reason: None,
                auth_time: now,
                amr: sign_in.amr.clone(),
                acr: sign_in.acr.clone(),
                source_ip: sign_in.source_ip.clone(),
            },
            secret,
        })
    }

    /// The open session a browser's cookie secret names, if any, and its user
    /// (who must still be enabled).
    pub async fn session_by_secret(
        &self,
        secret: &str,
        now: u64,
    ) -> Result<Option<(Session, User)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s JOIN users u ON u.sub = s.sub \
             WHERE s.secret_sha256 = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 AND u.disabled_at IS NULL"
        ))
        .bind(sha256_hex(secret))
        .bind(to_i64(now))
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let session = session_from_row(&row)?;
        let user = self.user(&session.user).await?;
        Ok(Some((session, user)))
    }

    /// A session by ID and its user, open or not.
    pub async fn session(&self, id: &str) -> Result<(Session, User), StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s JOIN users u ON u.sub = s.sub WHERE s.id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::missing("session", id))?;
        let session = session_from_row(&row)?;
        let user = self.user(&session.user).await?;
        Ok((session, user))
    }

    /// Sessions, of one user (by name) or of everyone, newest first.
    pub async fn sessions(&self, user: Option<&str>) -> Result<Vec<Session>, StoreError> {
        if let Some(user) = user {
            // An unknown user is an error, not an empty list.
            self.user(user).await?;
        }
        let rows = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s JOIN users u ON u.sub = s.sub \
             WHERE ($1 = '' OR u.name = $1) ORDER BY s.created_at DESC, s.id"
        ))
        .bind(user.unwrap_or_default())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Revokes one session and its refresh-token families.
    pub async fn revoke_session(&self, id: &str, reason: &str, now: u64) -> Result<Session, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(to_i64(now))
        .bind(reason)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        revoke_families(&mut tx, "session_id = $3", id, reason, now).await?;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions s JOIN users u ON u.sub = s.sub WHERE s.id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::missing("session", id))?;
        let session = session_from_row(&row)?;
        self.record_change(&mut tx, "session", id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(session)
    }

    /// Revokes every session of a user (by name) and their families; returns
    /// how many sessions were still open.
    pub async fn revoke_user_sessions(&self, user: &str, reason: &str, now: u64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let sub = sub_of(&mut tx, user).await?;
        let revoked = self.revoke_sessions_of(&mut tx, &sub, reason, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(revoked)
    }

    /// Inside `tx`: revokes the open sessions of `sub` and every family of its
    /// sessions, with a change record per session.
    pub(crate) async fn revoke_sessions_of(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        sub: &str,
        reason: &str,
        now: u64,
    ) -> Result<u64, StoreError> {
        let open = sqlx::query("SELECT id FROM sessions WHERE sub = $1 AND revoked_at IS NULL ORDER BY id")
            .bind(sub)
            .fetch_all(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 WHERE sub = $3 AND revoked_at IS NULL",
        )
        .bind(to_i64(now))
        .bind(reason)
        .bind(sub)
        .execute(&mut **tx)
        .await?;
        revoke_families(
            tx,
            "session_id IN (SELECT id FROM sessions WHERE sub = $3)",
            sub,
            reason,
            now,
        )
        .await?;
        for row in &open {
            let id: String = row.try_get("id")?;
            self.record_change(tx, "session", &id, now).await?;
        }
        Ok(open.len() as u64)
    }

    /// The refresh-token families of a session, oldest first.
    pub async fn refresh_families(&self, session_id: &str) -> Result<Vec<RefreshFamily>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, session_id, client_id, scope, created_at, revoked_at, reason FROM refresh_families \
             WHERE session_id = $1 ORDER BY created_at, id",
        )
        .bind(session_id)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RefreshFamily {
                    id: row.try_get("id")?,
                    session_id: row.try_get("session_id")?,
                    client_id: row.try_get("client_id")?,
                    scope: row.try_get("scope")?,
                    created_at: to_u64(row.try_get("created_at")?),
                    revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(to_u64),
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }
}

/// Revokes the families still open that `filter` selects; in `filter`, `$3` is `key`.
pub(crate) async fn revoke_families(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    filter: &str,
    key: &str,
    reason: &str,
    now: u64,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "UPDATE refresh_families SET revoked_at = $1, reason = $2 WHERE revoked_at IS NULL AND {filter}"
    ))
    .bind(to_i64(now))
    .bind(reason)
    .bind(key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn credential_from_row(row: &AnyRow) -> Result<Credential, StoreError> {
    Ok(Credential {
        id: row.try_get("id")?,
        user: row.try_get("name")?,
        aaguid: row.try_get("aaguid")?,
        sign_count: to_u64(row.try_get("sign_count")?),
        backup_eligible: row.try_get::<i64, _>("backup_eligible")? != 0,
        backed_up: row.try_get::<i64, _>("backed_up")? != 0,
        created_at: to_u64(row.try_get("created_at")?),
        last_used_at: row.try_get::<Option<i64>, _>("last_used_at")?.map(to_u64),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(to_u64),
    })
}

fn session_from_row(row: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: row.try_get("id")?,
        user: row.try_get("name")?,
        created_at: to_u64(row.try_get("created_at")?),
        expires_at: to_u64(row.try_get("expires_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(to_u64),
        revoke_reason: row.try_get("revoke_reason")?,
        auth_time: to_u64(row.try_get("auth_time")?),
        amr: serde_json::from_str(&row.try_get::<String, _>("amr")?).map_err(|e| StoreError::Corrupt {
            what: "session",
            key: row.try_get("id").unwrap_or_default(),
            reason: format!("amr: {e}"),
        })?,
        acr: row.try_get("acr")?,
        source_ip: row.try_get("source_ip")?,
    })
}
