//! Authorization policy versions: each `zt policy apply` stores the whole set
//! of policy files as a new, immutable version; agents get the newest through
//! the sync stream and hand it to their proxies.

use sqlx::Row as _;

use crate::{Store, StoreError, to_i64, to_u64};

/// One policy file, by its path relative to the applied directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// E.g. `billing.yaml`, `team/payments.yaml`.
    pub name: String,
    /// Its YAML.
    pub text: String,
}

/// A stored version of the policy set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyVersion {
    /// 1, 2, …
    pub version: u64,
    /// SHA-256 (hex) of the files, sorted by name: equal sets, equal digests.
    pub digest: String,
    /// When it was applied, unix seconds.
    pub created_at: u64,
    /// The files, sorted by name.
    pub files: Vec<PolicyFile>,
}

/// The digest of a set of files (sorted by name first).
pub fn policy_digest(files: &[PolicyFile]) -> String {
    let mut sorted: Vec<&PolicyFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in sorted {
        for part in [file.name.as_bytes(), file.text.as_bytes()] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Store {
    /// Stores `files` as the next version, unless they are the newest version's
    /// already (then that version is returned, and `false`). The caller checks
    /// the policies first: the store keeps what it is given.
    pub async fn store_policies(
        &self,
        mut files: Vec<PolicyFile>,
        now: u64,
    ) -> Result<(PolicyVersion, bool), StoreError> {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let digest = policy_digest(&files);
        let mut tx = self.begin_write().await?;
        let latest = sqlx::query("SELECT version, digest FROM policy_versions ORDER BY version DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        let (latest_version, latest_digest) = match &latest {
            Some(row) => (
                to_u64(row.try_get("version")?),
                row.try_get::<String, _>("digest")?,
            ),
            None => (0, String::new()),
        };
        if latest_digest == digest {
            drop(tx);
            let current = self.policy_version(latest_version).await?;
            return current
                .map(|v| (v, false))
                .ok_or_else(|| StoreError::NotFound(format!("policy version {latest_version}")));
        }
        let version = PolicyVersion {
            version: latest_version + 1,
            digest,
            created_at: now,
            files,
        };
        let json = serde_json::to_string(&version.files).map_err(|e| StoreError::Corrupt {
            what: "policy files",
            key: version.version.to_string(),
            reason: e.to_string(),
        })?;
        // Two applies at once: the second insert of the same version fails on
        // the primary key and nothing of it is kept.
        sqlx::query(
            "INSERT INTO policy_versions (version, digest, files, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(to_i64(version.version))
        .bind(&version.digest)
        .bind(json)
        .bind(to_i64(now))
        .execute(&mut *tx)
        .await?;
        self.record_change(&mut tx, "policy", &version.version.to_string(), now)
            .await?;
        tx.commit().await?;
        self.notify_local();
        Ok((version, true))
    }

    /// The newest version, if any was ever applied.
    pub async fn latest_policies(&self) -> Result<Option<PolicyVersion>, StoreError> {
        let row = sqlx::query("SELECT version FROM policy_versions ORDER BY version DESC LIMIT 1")
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(row) => self.policy_version(to_u64(row.try_get("version")?)).await,
            None => Ok(None),
        }
    }

    /// One version.
    pub async fn policy_version(&self, version: u64) -> Result<Option<PolicyVersion>, StoreError> {
        let row =
            sqlx::query("SELECT version, digest, files, created_at FROM policy_versions WHERE version = $1")
                .bind(to_i64(version))
                .fetch_optional(self.pool())
                .await?;
        let Some(row) = row else { return Ok(None) };
        let files: String = row.try_get("files")?;
        let files = serde_json::from_str(&files).map_err(|e| StoreError::Corrupt {
            what: "policy version",
            key: version.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Some(PolicyVersion {
            version: to_u64(row.try_get("version")?),
            digest: row.try_get("digest")?,
            created_at: to_u64(row.try_get("created_at")?),
            files,
        }))
    }
}
