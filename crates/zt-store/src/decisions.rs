//! Decision records shipped by proxies (through their agents): one hash chain
//! per source, stored only where each record continues its chain, so the
//! server's copy is as tamper-evident as the proxy's file and a proxy's own log
//! can be checked against it.

use sqlx::Row as _;
use zt_audit::{Chain, Head, Record};

use crate::{Store, StoreError, to_i64, to_u64};

/// Most records returned by one [`Store::decisions`] call.
pub const MAX_DECISIONS_PAGE: u32 = 10_000;

impl Store {
    /// Appends records (JSON lines of a decision log) to `source`'s chain.
    /// Records already stored are skipped (a retried batch); the rest must
    /// continue the chain, or nothing of the batch is stored. Returns the last
    /// stored sequence number.
    pub async fn append_decisions(&self, source: &str, records: &[String]) -> Result<u64, StoreError> {
        let invalid = |reason: String| StoreError::BrokenChain {
            source_id: source.to_owned(),
            reason,
        };
        let mut tx = self.begin_write().await?;
        let last = sqlx::query("SELECT seq, hash FROM decisions WHERE source = $1 ORDER BY seq DESC LIMIT 1")
            .bind(source)
            .fetch_optional(&mut *tx)
            .await?;
        let mut chain = Chain::from(match last {
            Some(row) => Head {
                records: to_u64(row.try_get("seq")?),
                hash: row.try_get("hash")?,
            },
            None => Chain::default().head().clone(),
        });
        for line in records {
            let record: Record =
                serde_json::from_str(line).map_err(|e| invalid(format!("not a record: {e}")))?;
            if record.seq <= chain.head().records {
                continue;
            }
            chain
                .extend(&record)
                .map_err(|e| invalid(format!("record {}: {e}", record.seq)))?;
            sqlx::query(
                "INSERT INTO decisions (source, seq, hash, time_ms, record) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(source)
            .bind(to_i64(record.seq))
            .bind(&record.hash)
            .bind(to_i64(record.time_ms))
            .bind(line.trim_end())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(chain.head().records)
    }

    /// Up to `limit` records after (`source`, `seq`) in (source, seq) order, as
    /// (source, JSON line).
    pub async fn decisions(
        &self,
        after: (&str, u64),
        limit: u32,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT source, record FROM decisions WHERE source > $1 OR (source = $1 AND seq > $2) \
             ORDER BY source, seq LIMIT $3",
        )
        .bind(after.0)
        .bind(to_i64(after.1))
        .bind(i64::from(limit.min(MAX_DECISIONS_PAGE)))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("source")?, row.try_get("record")?)))
            .collect()
    }
}
