//! Device trust's inventory: enrollment tokens, enrolled devices (laptops and
//! hosts holding a device key, not the device authorization grant of
//! [`crate::DeviceCode`]), their last accepted posture and tier, and their
//! events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::{Store, StoreError, TokenProblem, random_id, random_token, sha256_hex, to_i64, to_u64};

/// Where a device stands with the administrators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled with a token that needs an administrator's approval: no
    /// certificate until `zt device approve`.
    Pending,
    /// May hold a certificate and report.
    Active,
    /// Revoked: its certificate and reports are refused.
    Revoked,
}

impl DeviceStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeviceStatus::Pending),
            "active" => Some(DeviceStatus::Active),
            "revoked" => Some(DeviceStatus::Revoked),
            _ => None,
        }
    }
}

impl std::fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device enrollment token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTokenGrant {
    /// The person the device is issued to.
    pub owner: String,
    /// Whether the device waits for an administrator's approval.
    pub approval: bool,
    /// Whether the device may report overridden facts (tests only).
    pub test_mode: bool,
}

/// A device enrolling: what it proved and said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// `tpm` or `software`.
    pub key_type: String,
    /// Its public key, SubjectPublicKeyInfo DER, standard base64.
    pub public_key: String,
    /// Hardware facts for the inventory.
    pub hardware: BTreeMap<String, String>,
    /// The tier it starts in (the compliance policy's floor).
    pub tier: String,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Its ID: `spiffe://TD/device/ID`.
    pub id: String,
    /// The person it is issued to.
    pub owner: String,
    /// Pending, active or revoked.
    pub status: DeviceStatus,
    /// `tpm` or `software`.
    pub key_type: String,
    /// SubjectPublicKeyInfo DER, standard base64.
    pub public_key: String,
    /// Host name, model, architecture, CPU.
    pub hardware: BTreeMap<String, String>,
    /// Whether it may report overridden facts.
    pub test_mode: bool,
    /// Unix seconds.
    pub enrolled_at: u64,
    /// The last accepted report, Unix seconds.
    pub last_seen: Option<u64>,
    /// That report's sequence number.
    pub report_seq: u64,
    /// That report's facts (JSON).
    pub facts: Value,
    /// Its tier now.
    pub tier: String,
    /// Why it is not in a better one.
    pub tier_reasons: Vec<String>,
    /// When the tier last changed, Unix milliseconds.
    pub tier_changed_at: u64,
    /// Hex serial of the last certificate issued.
    pub cert_serial: Option<String>,
    /// Its notAfter, Unix seconds.
    pub cert_not_after: Option<u64>,
}

/// The posture of a device to be saved: its last accepted report.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedPosture {
    /// The device.
    pub id: String,
    /// The report's sequence number.
    pub seq: u64,
    /// When it arrived, Unix seconds.
    pub seen: u64,
    /// Its facts (JSON).
    pub facts: Value,
}

/// A recorded device event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    /// Position in the event log.
    pub seq: u64,
    /// The device.
    pub device_id: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// `enrolled`, `approved`, `revoked`, `tier`, `refused`, `certificate`.
    pub kind: String,
    /// What happened (JSON).
    pub detail: Value,
}

const DEVICE_COLUMNS: &str = "id, owner, status, key_type, public_key, hardware, test_mode, enrolled_at, last_seen, \
     report_seq, facts, tier, tier_reasons, tier_changed_at, cert_serial, cert_not_after";

impl Store {
    /// Makes a one-time device enrollment token valid for `ttl_secs`; only its
    /// SHA-256 is stored.
    pub async fn create_device_token(
        &self,
        grant: &DeviceTokenGrant,
        ttl_secs: u64,
        now: u64,
    ) -> Result<String, StoreError> {
        if grant.owner.is_empty() || grant.owner.len() > 256 {
            return Err(StoreError::InvalidValue {
                field: "owner",
                value: String::new(),
                reason: "must be 1 to 256 bytes".into(),
            });
        }
        let token = random_token()?;
        sqlx::query(
            "INSERT INTO device_tokens (token_sha256, owner, approval, test_mode, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(sha256_hex(&token))
        .bind(&grant.owner)
        .bind(i64::from(grant.approval))
        .bind(i64::from(grant.test_mode))
        .bind(to_i64(now))
        .bind(to_i64(now.saturating_add(ttl_secs)))
        .execute(self.pool())
        .await?;
        Ok(token)
    }

    /// Enrolls a device with a token: the token is used up in the same
    /// transaction that stores the device, so of two enrollments with one
    /// token exactly one succeeds, before expiry, even across servers.
    pub async fn enroll_device(
        &self,
        token: &str,
        device: NewDevice,
        now_ms: u64,
    ) -> Result<Device, StoreError> {
        let now = now_ms / 1000;
        let hash = sha256_hex(token);
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            "UPDATE device_tokens SET used_at = $1 WHERE token_sha256 = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(to_i64(now))
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT owner, approval, test_mode, expires_at FROM device_tokens WHERE token_sha256 = $1",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::DeviceToken(TokenProblem::Unknown));
        };
        if used.rows_affected() == 0 {
            let expired = to_u64(row.try_get("expires_at")?) <= now;
            return Err(StoreError::DeviceToken(if expired {
                TokenProblem::Expired
            } else {
                TokenProblem::Used
            }));
        }
        let owner: String = row.try_get("owner")?;
        let approval: i64 = row.try_get("approval")?;
        let test_mode: i64 = row.try_get("test_mode")?;
        let id = random_id()?;
        let status = if approval != 0 {
            DeviceStatus::Pending
        } else {
            DeviceStatus::Active
        };
        let hardware = json_text("device", &id, &device.hardware)?;
        sqlx::query(
            "INSERT INTO devices (id, owner, status, key_type, public_key, hardware, test_mode, enrolled_at, \
             report_seq, facts, tier, tier_reasons, tier_changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, '{}', $9, '[]', $10)",
        )
        .bind(&id)
        .bind(&owner)
        .bind(status.as_str())
        .bind(&device.key_type)
        .bind(&device.public_key)
        .bind(hardware)
        .bind(test_mode)
        .bind(to_i64(now))
        .bind(&device.tier)
        .bind(to_i64(now_ms))
        .execute(&mut *tx)
        .await?;
        insert_event(
            &mut tx,
            &id,
            now_ms,
            "enrolled",
            &serde_json::json!({ "owner": owner, "key_type": device.key_type, "status": status }),
        )
        .await?;
        self.record_change(&mut tx, "device", &id, now).await?;
        tx.commit().await?;
        self.notify_local();
        self.device(&id).await?.ok_or_else(|| StoreError::Missing {
            what: "device",
            key: id,
        })
    }

    /// The device with this ID.
    pub async fn device(&self, id: &str) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(&format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// Every device, by enrollment time.
    pub async fn list_devices(&self) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices ORDER BY enrolled_at, id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(device_from_row).collect()
    }

    /// Sets a device's status (approve: pending → active; revoke: any →
    /// revoked), recording the event. Approving a revoked device is refused.
    pub async fn set_device_status(
        &self,
        id: &str,
        status: DeviceStatus,
        now_ms: u64,
    ) -> Result<Device, StoreError> {
        let device = self.device(id).await?.ok_or_else(|| StoreError::Missing {
            what: "device",
            key: id.to_owned(),
        })?;
        if device.status == DeviceStatus::Revoked && status != DeviceStatus::Revoked {
            return Err(StoreError::InvalidValue {
                field: "device",
                value: id.to_owned(),
                reason: "is revoked: enroll it again".into(),
            });
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE devices SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let kind = match status {
            DeviceStatus::Active => "approved",
            DeviceStatus::Revoked => "revoked",
            DeviceStatus::Pending => "pending",
        };
        insert_event(
            &mut tx,
            id,
            now_ms,
            kind,
            &serde_json::json!({ "previous": device.status }),
        )
        .await?;
        self.record_change(&mut tx, "device", id, now_ms / 1000).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(Device { status, ..device })
    }

    /// Deletes a device and its events.
    pub async fn delete_device(&self, id: &str, now: u64) -> Result<Device, StoreError> {
        let device = self.device(id).await?.ok_or_else(|| StoreError::Missing {
            what: "device",
            key: id.to_owned(),
        })?;
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM device_events WHERE device_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM devices WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.record_change(&mut tx, "device", id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(device)
    }

    /// Records the certificate last issued to a device.
    pub async fn device_certificate_issued(
        &self,
        id: &str,
        serial: &str,
        not_after: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE devices SET cert_serial = $1, cert_not_after = $2 WHERE id = $3")
            .bind(serial)
            .bind(to_i64(not_after))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(
            &mut tx,
            id,
            now_ms,
            "certificate",
            &serde_json::json!({ "serial": serial, "not_after": not_after }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Saves the last accepted report of several devices in one transaction
    /// (reports arrive thousands a second: they are written in batches). A
    /// report never moves a device's sequence number back.
    pub async fn save_device_postures(&self, postures: &[SavedPosture]) -> Result<(), StoreError> {
        if postures.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for posture in postures {
            let facts = json_text("device", &posture.id, &posture.facts)?;
            sqlx::query("UPDATE devices SET report_seq = $1, last_seen = $2, facts = $3 WHERE id = $4 AND report_seq < $1")
                .bind(to_i64(posture.seq))
                .bind(to_i64(posture.seen))
                .bind(facts)
                .bind(&posture.id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a device's new tier and the event (the CAEP event's payload in
    /// `detail`), and announces it on the change feed.
    pub async fn set_device_tier(
        &self,
        id: &str,
        tier: &str,
        reasons: &[String],
        detail: &Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let reasons_text = json_text("device", id, &reasons)?;
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE devices SET tier = $1, tier_reasons = $2, tier_changed_at = $3 WHERE id = $4")
            .bind(tier)
            .bind(reasons_text)
            .bind(to_i64(now_ms))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        insert_event(&mut tx, id, now_ms, "tier", detail).await?;
        self.record_change(&mut tx, "device", id, now_ms / 1000).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(())
    }

    /// Records an event of a device (a refused report, say).
    pub async fn record_device_event(
        &self,
        id: &str,
        kind: &str,
        detail: &Value,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert_event(&mut tx, id, now_ms, kind, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A device's newest events, newest first, at most `limit`.
    pub async fn device_events(&self, id: &str, limit: u32) -> Result<Vec<DeviceEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, device_id, at_ms, kind, detail FROM device_events WHERE device_id = $1 \
             ORDER BY seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let detail: String = row.try_get("detail")?;
                Ok(DeviceEvent {
                    seq: to_u64(row.try_get("seq")?),
                    device_id: row.try_get("device_id")?,
                    at_ms: to_u64(row.try_get("at_ms")?),
                    kind: row.try_get("kind")?,
                    detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                })
            })
            .collect()
    }
}

async fn insert_event(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    now_ms: u64,
    kind: &str,
    detail: &Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO device_events (device_id, at_ms, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(to_i64(now_ms))
        .bind(kind)
        .bind(detail.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn json_text(what: &'static str, key: &str, value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt {
        what,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn device_from_row(row: &AnyRow) -> Result<Device, StoreError> {
    let id: String = row.try_get("id")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "device",
        key: id.clone(),
        reason,
    };
    let status: String = row.try_get("status")?;
    let status = DeviceStatus::parse(&status).ok_or_else(|| corrupt(format!("status {status:?}")))?;
    let hardware: String = row.try_get("hardware")?;
    let facts: String = row.try_get("facts")?;
    let reasons: String = row.try_get("tier_reasons")?;
    let test_mode: i64 = row.try_get("test_mode")?;
    let last_seen: Option<i64> = row.try_get("last_seen")?;
    let cert_not_after: Option<i64> = row.try_get("cert_not_after")?;
    Ok(Device {
        owner: row.try_get("owner")?,
        status,
        key_type: row.try_get("key_type")?,
        public_key: row.try_get("public_key")?,
        hardware: serde_json::from_str(&hardware).map_err(|e| corrupt(e.to_string()))?,
        test_mode: test_mode != 0,
        enrolled_at: to_u64(row.try_get("enrolled_at")?),
        last_seen: last_seen.map(to_u64),
        report_seq: to_u64(row.try_get("report_seq")?),
        facts: serde_json::from_str(&facts).map_err(|e| corrupt(e.to_string()))?,
        tier: row.try_get("tier")?,
        tier_reasons: serde_json::from_str(&reasons).map_err(|e| corrupt(e.to_string()))?,
        tier_changed_at: to_u64(row.try_get("tier_changed_at")?),
        cert_serial: row.try_get("cert_serial")?,
        cert_not_after: cert_not_after.map(to_u64),
        id,
    })
}
