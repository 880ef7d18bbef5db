//! The trust domain's signing authorities, shared by every server on the datastore.
//!
//! Rotation needs no lock: preparing inserts only if nothing is prepared yet, and
//! activating updates only a row that is still prepared, so servers racing to do
//! the same step all end with the same single outcome.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, to_i64, to_u64};

/// A signing authority as stored: PEM documents and its schedule.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredAuthority {
    /// Random ID.
    pub id: String,
    /// The CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The CA private key, PKCS#8 PEM.
    pub ca_key_pem: String,
    /// The JWT-SVID signing key, PKCS#8 PEM.
    pub jwt_key_pem: String,
    /// The CA certificate's notBefore, unix seconds.
    pub not_before: u64,
    /// The CA certificate's notAfter, unix seconds.
    pub not_after: u64,
    /// When it became the one that signs; `None` while prepared.
    pub activated_at: Option<u64>,
    /// The order of activations: the highest is the one that signs.
    pub activation: Option<u64>,
}

impl std::fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(
            f,
            "StoredAuthority({}, {}..{}, activated {:?})",
            self.id, self.not_before, self.not_after, self.activated_at
        )
    }
}

impl Store {
    /// Every authority not yet expired at `now`, oldest first.
    pub async fn authorities(&self, now: u64) -> Result<Vec<StoredAuthority>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, ca_cert_pem, ca_key_pem, jwt_key_pem, not_before, not_after, activated_at, activation \
             FROM authorities WHERE not_after > $1 ORDER BY not_before, id",
        )
        .bind(to_i64(now))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(authority_from_row).collect()
    }

    /// Stores `authority` as the prepared one, unless one is prepared already.
    /// Returns whether it was stored.
    pub async fn prepare_authority(&self, authority: &StoredAuthority, now: u64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO authorities (id, ca_cert_pem, ca_key_pem, jwt_key_pem, not_before, not_after, created_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7 \
             WHERE NOT EXISTS (SELECT 1 FROM authorities WHERE activated_at IS NULL AND not_after > $7)",
        )
        .bind(&authority.id)
        .bind(&authority.ca_cert_pem)
        .bind(&authority.ca_key_pem)
        .bind(&authority.jwt_key_pem)
        .bind(to_i64(authority.not_before))
        .bind(to_i64(authority.not_after))
        .bind(to_i64(now))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if inserted {
            self.record_change(&mut tx, "bundle", &authority.id, now).await?;
        }
        tx.commit().await?;
        if inserted {
            self.notify_local();
        }
        Ok(inserted)
    }

    /// Makes the prepared authority `id` the one that signs. Returns whether this
    /// call did it (false if another server already had).
    pub async fn activate_authority(&self, id: &str, now: u64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let activated = sqlx::query(
            "UPDATE authorities SET activated_at = $1, \
             activation = (SELECT COALESCE(MAX(activation), 0) + 1 FROM authorities) \
             WHERE id = $2 AND activated_at IS NULL",
        )
        .bind(to_i64(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if activated {
            self.record_change(&mut tx, "authority", id, now).await?;
        }
        tx.commit().await?;
        if activated {
            self.notify_local();
        }
        Ok(activated)
    }

    /// Forgets authorities that expired before `now`; they are in no bundle any more.
    pub async fn purge_expired_authorities(&self, now: u64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM authorities WHERE not_after <= $1")
            .bind(to_i64(now))
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

fn authority_from_row(row: &AnyRow) -> Result<StoredAuthority, StoreError> {
    let activated_at: Option<i64> = row.try_get("activated_at")?;
    let activation: Option<i64> = row.try_get("activation")?;
    Ok(StoredAuthority {
        id: row.try_get("id")?,
        ca_cert_pem: row.try_get("ca_cert_pem")?,
        ca_key_pem: row.try_get("ca_key_pem")?,
        jwt_key_pem: row.try_get("jwt_key_pem")?,
        not_before: to_u64(row.try_get("not_before")?),
        not_after: to_u64(row.try_get("not_after")?),
        activated_at: activated_at.map(to_u64),
        activation: activation.map(to_u64),
    })
}
