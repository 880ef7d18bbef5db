//! The trust domain's signing authorities, shared by every server on the datastore.
//!
//! Every step (the first authority, preparing the next, activating it, a forced
//! rotation) is decided in one transaction under one lock, against what is stored
//! then, and names the active authority it rotates away from: servers racing to
//! take the same step all end with the same single outcome.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::{Backend, Store, StoreError, to_i64, to_u64};

/// The advisory lock (PostgreSQL) under which authority steps are decided; the
/// migrations' lock is 7370001.
const AUTHORITY_LOCK: i64 = 7_370_002;

/// A step of the authorities' life, taken only if still due when decided.
#[derive(Debug, Clone, Copy)]
pub enum AuthorityStep<'a> {
    /// None signs (a new trust domain): activate the prepared one, else this one.
    Bootstrap(&'a StoredAuthority),
    /// Half of `active`'s life has passed: prepare `fresh`, unless one is
    /// prepared or `active` no longer signs.
    Prepare {
        /// The ID of the authority that signs, as the caller saw it.
        active: &'a str,
        /// The authority to prepare.
        fresh: &'a StoredAuthority,
    },
    /// Five sixths of `active`'s life have passed: activate the prepared one,
    /// unless `active` no longer signs.
    Activate {
        /// The ID of the authority that signs, as the caller saw it.
        active: &'a str,
    },
    /// An operator's rotation: activate the prepared one, else `fresh`, unless
    /// `active` no longer signs (someone rotated first).
    Rotate {
        /// The ID of the authority that signs, as the caller saw it.
        active: &'a str,
        /// The authority to activate if none is prepared.
        fresh: &'a StoredAuthority,
    },
}

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

    /// Takes one step of the authorities' life if it is still due, and returns
    /// whether this call took it. Every server on the datastore decides under one
    /// lock (a PostgreSQL advisory lock, SQLite's single writer), reading what the
    /// others committed: servers starting or rotating together create one
    /// authority, prepare one and activate one, never one each.
    pub async fn take_authority_step(&self, step: AuthorityStep<'_>, now: u64) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        match self.backend() {
            Backend::Postgres => sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUTHORITY_LOCK),
            // A write, even of nothing, takes SQLite's write lock for the transaction.
            Backend::Sqlite => sqlx::query("UPDATE authorities SET id = id WHERE 1 = 0"),
        }
        .execute(&mut *tx)
        .await?;
        let active: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM authorities WHERE activation IS NOT NULL AND not_after > $1 \
             ORDER BY activation DESC LIMIT 1",
        )
        .bind(to_i64(now))
        .fetch_optional(&mut *tx)
        .await?;
        let prepared: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM authorities WHERE activated_at IS NULL AND not_after > $1 \
             ORDER BY not_before, id LIMIT 1",
        )
        .bind(to_i64(now))
        .fetch_optional(&mut *tx)
        .await?;
        let active = active.map(|(id,)| id);
        let prepared = prepared.map(|(id,)| id);
        let still_active = |expected: &str| active.as_deref() == Some(expected);
        let taken = match step {
            AuthorityStep::Bootstrap(fresh) if active.is_none() => {
                let id = match prepared {
                    Some(id) => id,
                    None => self.insert_authority(&mut tx, fresh, now).await?,
                };
                self.activate(&mut tx, &id, now).await?;
                true
            }
            AuthorityStep::Prepare { active, fresh } if still_active(active) && prepared.is_none() => {
                self.insert_authority(&mut tx, fresh, now).await?;
                true
            }
            AuthorityStep::Activate { active } if still_active(active) => match prepared {
                Some(id) => {
                    self.activate(&mut tx, &id, now).await?;
                    true
                }
                None => false,
            },
            AuthorityStep::Rotate { active, fresh } if still_active(active) => {
                let id = match prepared {
                    Some(id) => id,
                    None => self.insert_authority(&mut tx, fresh, now).await?,
                };
                self.activate(&mut tx, &id, now).await?;
                true
            }
            _ => false,
        };
        tx.commit().await?;
        if taken {
            self.notify_local();
        }
        Ok(taken)
    }

    /// Stores `authority` as prepared (in the bundle, not signing); returns its ID.
    async fn insert_authority(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        authority: &StoredAuthority,
        now: u64,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO authorities (id, ca_cert_pem, ca_key_pem, jwt_key_pem, not_before, not_after, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&authority.id)
        .bind(&authority.ca_cert_pem)
        .bind(&authority.ca_key_pem)
        .bind(&authority.jwt_key_pem)
        .bind(to_i64(authority.not_before))
        .bind(to_i64(authority.not_after))
        .bind(to_i64(now))
        .execute(&mut **tx)
        .await?;
        self.record_change(tx, "bundle", &authority.id, now).await?;
        Ok(authority.id.clone())
    }

    /// Makes the prepared authority `id` the one that signs, with the next activation number.
    async fn activate(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE authorities SET activated_at = $1, \
             activation = (SELECT COALESCE(MAX(activation), 0) + 1 FROM authorities) \
             WHERE id = $2 AND activated_at IS NULL",
        )
        .bind(to_i64(now))
        .bind(id)
        .execute(&mut **tx)
        .await?;
        self.record_change(tx, "authority", id, now).await
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
