//! Revocations: of one SVID by serial, or of every SVID of a SPIFFE ID issued
//! before a moment. Distributed to agents through the sync stream.

use sqlx::Row as _;
use zt_identity::SpiffeId;

use crate::{Store, StoreError, to_i64, to_u64};

/// What is revoked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revoked {
    /// One SVID, by serial (lowercase hex, no separators).
    Serial(String),
    /// Every SVID of this ID whose notBefore is before `issued_before` (unix seconds).
    SpiffeId {
        /// The ID.
        spiffe_id: String,
        /// The cutoff.
        issued_before: u64,
    },
}

/// A stored revocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    /// What it revokes.
    pub revoked: Revoked,
    /// When it was made, unix seconds.
    pub revoked_at: u64,
    /// Kept until then; afterwards nothing it matches can still be valid.
    pub expires_at: u64,
    /// Why, as the operator said.
    pub reason: String,
}

impl Store {
    /// Revokes one SVID by serial (hex, any case, `:` separators allowed).
    pub async fn revoke_serial(
        &self,
        serial: &str,
        expires_at: u64,
        reason: &str,
        now: u64,
    ) -> Result<Revocation, StoreError> {
        let serial = normalize_serial(serial)?;
        let revocation = Revocation {
            revoked: Revoked::Serial(serial.clone()),
            revoked_at: now,
            expires_at,
            reason: reason.to_owned(),
        };
        self.insert_revocation(&format!("serial:{serial}"), Some(&serial), None, &revocation, now)
            .await?;
        Ok(revocation)
    }

    /// Revokes every SVID of `spiffe_id` issued before `now`.
    pub async fn revoke_spiffe_id(
        &self,
        spiffe_id: &SpiffeId,
        expires_at: u64,
        reason: &str,
        now: u64,
    ) -> Result<Revocation, StoreError> {
        let id = spiffe_id.to_string();
        let revocation = Revocation {
            revoked: Revoked::SpiffeId {
                spiffe_id: id.clone(),
                issued_before: now,
            },
            revoked_at: now,
            expires_at,
            reason: reason.to_owned(),
        };
        self.insert_revocation(&format!("id:{id}"), None, Some(&id), &revocation, now)
            .await?;
        Ok(revocation)
    }

    async fn insert_revocation(
        &self,
        key: &str,
        serial: Option<&str>,
        spiffe_id: Option<&str>,
        revocation: &Revocation,
        now: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Revoking again moves the cutoff forward; it never un-revokes.
        sqlx::query("DELETE FROM revocations WHERE id = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO revocations (id, serial, spiffe_id, issued_before, expires_at, revoked_at, reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key)
        .bind(serial)
        .bind(spiffe_id)
        .bind(spiffe_id.map(|_| to_i64(now)))
        .bind(to_i64(revocation.expires_at))
        .bind(to_i64(now))
        .bind(&revocation.reason)
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "revocation", key, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// The cutoff of the revocation of `spiffe_id` in force at `now`, if any:
    /// SVIDs of the ID with an earlier notBefore are revoked.
    pub async fn id_revoked_before(&self, spiffe_id: &SpiffeId, now: u64) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT issued_before FROM revocations WHERE id = $1 AND expires_at > $2")
            .bind(format!("id:{spiffe_id}"))
            .bind(to_i64(now))
            .fetch_optional(self.pool())
            .await?;
        match row {
            // A row without its cutoff revokes every SVID of the ID: fail closed.
            Some(row) => Ok(Some(
                row.try_get::<Option<i64>, _>("issued_before")?
                    .map_or(u64::MAX, to_u64),
            )),
            None => Ok(None),
        }
    }

    /// Every revocation still in force at `now`.
    pub async fn revocations(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, spiffe_id, issued_before, expires_at, revoked_at, reason FROM revocations \
             WHERE expires_at > $1 ORDER BY revoked_at, id",
        )
        .bind(to_i64(now))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let serial: Option<String> = row.try_get("serial")?;
                let spiffe_id: Option<String> = row.try_get("spiffe_id")?;
                let issued_before: Option<i64> = row.try_get("issued_before")?;
                let revoked = match (serial, spiffe_id) {
                    (Some(serial), _) => Revoked::Serial(serial),
                    (None, Some(spiffe_id)) => Revoked::SpiffeId {
                        spiffe_id,
                        // A row without its cutoff revokes every SVID of the ID: fail closed.
                        issued_before: issued_before.map_or(u64::MAX, to_u64),
                    },
                    (None, None) => {
                        return Err(StoreError::Corrupt {
                            what: "revocation",
                            key: String::new(),
                            reason: "neither serial nor SPIFFE ID".into(),
                        });
                    }
                };
                Ok(Revocation {
                    revoked,
                    revoked_at: to_u64(row.try_get("revoked_at")?),
                    expires_at: to_u64(row.try_get("expires_at")?),
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }
}

/// Lowercase hex without separators or leading zero bytes' ambiguity: what
/// `x509::hex` prints, minus the colons.
pub fn normalize_serial(serial: &str) -> Result<String, StoreError> {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(StoreError::InvalidSerial(serial.to_owned()));
    }
    Ok(hex)
}
