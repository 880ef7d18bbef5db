//! Attested node agents.

use sqlx::Row as _;
use sqlx::any::AnyRow;
use zt_identity::SpiffeId;

use crate::model::Selector;
use crate::{Store, StoreError, to_i64, to_u64};

/// An attested agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Hex serial of its current SVID; calls with any other are refused.
    pub serial: String,
    /// notAfter of that SVID, unix seconds.
    pub not_after: u64,
    /// What attestation proved about the node.
    pub selectors: Vec<Selector>,
    /// First attestation, unix seconds.
    pub attested_at: u64,
    /// Last SVID issued, unix seconds.
    pub renewed_at: u64,
    /// Banned agents may not attest again until unbanned.
    pub banned: bool,
}

impl Store {
    /// Records a (re-)attested agent and its SVID. Refuses a banned one.
    pub async fn attest_agent(
        &self,
        spiffe_id: &SpiffeId,
        serial: &str,
        not_after: u64,
        selectors: &[Selector],
        now: u64,
    ) -> Result<(), StoreError> {
        let id = spiffe_id.to_string();
        if self.agent(&id).await?.is_some_and(|a| a.banned) {
            return Err(StoreError::Banned(id));
        }
        let selectors = serde_json::to_string(selectors).map_err(|e| StoreError::Corrupt {
            what: "agent",
            key: id.clone(),
            reason: e.to_string(),
        })?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM agents WHERE spiffe_id = $1")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO agents (spiffe_id, serial, not_after, selectors, attested_at, renewed_at, banned) \
             VALUES ($1, $2, $3, $4, $5, $5, 0)",
        )
        .bind(&id)
        .bind(serial)
        .bind(to_i64(not_after))
        .bind(selectors)
        .bind(to_i64(now))
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "agent", &id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// Records a renewed agent SVID, if the agent still holds `old_serial`.
    pub async fn renew_agent(
        &self,
        spiffe_id: &str,
        old_serial: &str,
        serial: &str,
        not_after: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE agents SET serial = $1, not_after = $2, renewed_at = $3 \
             WHERE spiffe_id = $4 AND serial = $5 AND banned = 0",
        )
        .bind(serial)
        .bind(to_i64(not_after))
        .bind(to_i64(now))
        .bind(spiffe_id)
        .bind(old_serial)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UnknownAgent(spiffe_id.to_owned()));
        }
        Ok(())
    }

    /// The agent with this ID.
    pub async fn agent(&self, spiffe_id: &str) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(
            "SELECT spiffe_id, serial, not_after, selectors, attested_at, renewed_at, banned FROM agents WHERE spiffe_id = $1",
        )
        .bind(spiffe_id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// The agent, if `serial` (with `not_before`) is its current SVID, it is not
    /// banned, and that SVID is not revoked: one round trip, for every agent call.
    pub async fn current_agent(
        &self,
        spiffe_id: &str,
        serial: &str,
        not_before: u64,
        now: u64,
    ) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(
            "SELECT spiffe_id, serial, not_after, selectors, attested_at, renewed_at, banned FROM agents \
             WHERE spiffe_id = $1 AND serial = $2 AND banned = 0 AND NOT EXISTS ( \
                 SELECT 1 FROM revocations WHERE expires_at > $3 \
                 AND (serial = $2 OR (spiffe_id = $1 AND (issued_before IS NULL OR issued_before > $4))))",
        )
        .bind(spiffe_id)
        .bind(serial)
        .bind(to_i64(now))
        .bind(to_i64(not_before))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(agent_from_row).transpose()
    }

    /// How many agents there are (banned ones included).
    pub async fn count_agents(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM agents")
            .fetch_one(self.pool())
            .await?;
        Ok(to_u64(n))
    }

    /// Every agent, by ID.
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(
            "SELECT spiffe_id, serial, not_after, selectors, attested_at, renewed_at, banned FROM agents ORDER BY spiffe_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Evicts an agent: it can no longer call the agent API and must attest again.
    /// With `ban`, it is also refused if it tries.
    pub async fn evict_agent(&self, spiffe_id: &str, ban: bool, now: u64) -> Result<Agent, StoreError> {
        let agent = self
            .agent(spiffe_id)
            .await?
            .ok_or_else(|| StoreError::UnknownAgent(spiffe_id.to_owned()))?;
        let mut tx = self.begin_write().await?;
        if ban {
            // Keep the row so that attestation can refuse it; clear the serial so no SVID passes.
            sqlx::query("UPDATE agents SET banned = 1, serial = '' WHERE spiffe_id = $1")
                .bind(spiffe_id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("DELETE FROM agents WHERE spiffe_id = $1")
                .bind(spiffe_id)
                .execute(&mut *tx)
                .await?;
        }
        self.record_change(&mut tx, "agent", spiffe_id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(agent)
    }
}

fn agent_from_row(row: &AnyRow) -> Result<Agent, StoreError> {
    let spiffe_id: String = row.try_get("spiffe_id")?;
    let selectors: String = row.try_get("selectors")?;
    let selectors = serde_json::from_str(&selectors).map_err(|e| StoreError::Corrupt {
        what: "agent",
        key: spiffe_id.clone(),
        reason: e.to_string(),
    })?;
    let banned: i64 = row.try_get("banned")?;
    Ok(Agent {
        spiffe_id,
        serial: row.try_get("serial")?,
        not_after: to_u64(row.try_get("not_after")?),
        selectors,
        attested_at: to_u64(row.try_get("attested_at")?),
        renewed_at: to_u64(row.try_get("renewed_at")?),
        banned: banned != 0,
    })
}
