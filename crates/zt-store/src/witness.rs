//! What zt server keeps as the witness of shipped decision logs: its one
//! cosigner key, and per source the log key pinned on first use and the
//! largest checkpoint it cosigned.

use sqlx::Row as _;
use zt_audit::merkle::{Frontier, leaf_from_hex};

use crate::{Store, StoreError, now_secs, to_i64, to_u64};

/// A source's pinned log key and how far its log was witnessed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedSource {
    /// The note verifier key pinned for the source.
    pub verifier_key: String,
    /// The size of the largest checkpoint cosigned (0: none yet).
    pub witnessed_size: u64,
}

impl Store {
    /// The witness's signer key: the one stored, or `fresh` if none is yet. The
    /// first server to store one decides it for every replica.
    pub async fn witness_key(&self, fresh: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO witness_keys (id, signer_key, created_at) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(fresh)
        .bind(now_secs())
        .execute(self.pool())
        .await?;
        let (key,): (String,) = sqlx::query_as("SELECT signer_key FROM witness_keys WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        Ok(key)
    }

    /// Pins `verifier_key` for `source` if no key is pinned for it, and returns
    /// what is pinned then: the caller compares it with the key presented.
    pub async fn pin_source_key(&self, source: &str, verifier_key: &str) -> Result<PinnedSource, StoreError> {
        sqlx::query(
            "INSERT INTO witnessed_logs (source, verifier_key, pinned_at, witnessed_size) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (source) DO NOTHING",
        )
        .bind(source)
        .bind(verifier_key)
        .bind(now_secs())
        .execute(self.pool())
        .await?;
        let row = sqlx::query("SELECT verifier_key, witnessed_size FROM witnessed_logs WHERE source = $1")
            .bind(source)
            .fetch_one(self.pool())
            .await?;
        Ok(PinnedSource {
            verifier_key: row.try_get("verifier_key")?,
            witnessed_size: to_u64(row.try_get("witnessed_size")?),
        })
    }

    /// Records that a checkpoint of `size` records by `verifier_key` is about to
    /// be cosigned for `source` — only if no larger one was (the witnessed size
    /// never goes back, whichever replica cosigns) and the key is still the one
    /// pinned. Returns whether it was recorded.
    pub async fn record_witnessed(
        &self,
        source: &str,
        verifier_key: &str,
        size: u64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE witnessed_logs SET witnessed_size = $3, witnessed_at = $4 \
             WHERE source = $1 AND verifier_key = $2 AND witnessed_size <= $3",
        )
        .bind(source)
        .bind(verifier_key)
        .bind(to_i64(size))
        .bind(now_secs())
        .execute(self.pool())
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Forgets the key pinned for `source` (and how far its log was
    /// witnessed), so that the next key it presents is pinned: an operator's
    /// act when a workload's log key changed. Returns the key forgotten.
    pub async fn forget_source_key(&self, source: &str) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let pinned: Option<(String,)> =
            sqlx::query_as("SELECT verifier_key FROM witnessed_logs WHERE source = $1")
                .bind(source)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query("DELETE FROM witnessed_logs WHERE source = $1")
            .bind(source)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(pinned.map(|(key,)| key))
    }

    /// The Merkle tree (RFC 9162, as the writer keeps it) over the first `size`
    /// records stored for `source`; `None` if fewer are stored.
    pub async fn decision_tree(&self, source: &str, size: u64) -> Result<Option<Frontier>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, hash FROM decisions WHERE source = $1 AND seq <= $2 ORDER BY seq")
                .bind(source)
                .bind(to_i64(size))
                .fetch_all(self.pool())
                .await?;
        let mut tree = Frontier::default();
        for row in &rows {
            let (seq, hash): (i64, String) = (row.try_get("seq")?, row.try_get("hash")?);
            // Stored records are chained from 1 without gaps; anything else is corruption.
            let leaf = leaf_from_hex(&hash)
                .filter(|_| to_u64(seq) == tree.size() + 1)
                .ok_or_else(|| StoreError::Corrupt {
                    what: "decision",
                    key: format!("{source} {seq}"),
                    reason: "not the next record of its chain, or its hash is not 64 hex digits".into(),
                })?;
            tree.push(&leaf);
        }
        Ok((tree.size() == size).then_some(tree))
    }
}
