//! Versioned schema migrations, run on open. Each runs in its own transaction
//! together with the record of it, so a crash leaves either the old or the new
//! version, never half of one.

use sqlx::{AnyConnection, Connection as _};

use crate::{Backend, StoreError};

/// Every migration, in order: (version, SQL). `{serial}` is replaced per backend.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_initial.sql")),
    (2, include_str!("../migrations/0002_authorities.sql")),
    (3, include_str!("../migrations/0003_agents.sql")),
    (4, include_str!("../migrations/0004_revocations.sql")),
    (5, include_str!("../migrations/0005_policies_and_decisions.sql")),
    (6, include_str!("../migrations/0006_witness.sql")),
    (7, include_str!("../migrations/0007_people.sql")),
    (8, include_str!("../migrations/0008_tokens.sql")),
    (9, include_str!("../migrations/0009_device_codes.sql")),
    (10, include_str!("../migrations/0010_backchannel_logout.sql")),
    (11, include_str!("../migrations/0011_session_exchanges.sql")),
    (12, include_str!("../migrations/0012_devices.sql")),
];

/// The newest schema version this build knows.
pub const LATEST: i64 = 12;

/// Brings the schema to [`LATEST`]; refuses a database from a newer zt.
pub async fn run(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        // Several servers may start at once on a new database: one migrates while
        // the others wait here, then find nothing left to do.
        sqlx::query("SELECT pg_advisory_lock(7370001)")
            .execute(&mut *conn)
            .await?;
    }
    let result = migrate(conn, backend).await;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock(7370001)")
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn migrate(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS zt_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    for (version, sql) in MIGRATIONS {
        let mut tx = conn.begin().await?;
        let applied: Option<(i64,)> = sqlx::query_as("SELECT version FROM zt_schema WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if applied.is_none() {
            let sql = strip_comments(&sql.replace("{serial}", backend.serial_type()));
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO zt_schema (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::now_secs())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    }
    let (newest,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM zt_schema")
        .fetch_one(&mut *conn)
        .await?;
    if newest > LATEST {
        return Err(StoreError::SchemaTooNew {
            found: newest,
            known: LATEST,
        });
    }
    Ok(())
}

/// Drops `--` comments (our migrations keep no `--` or `;` inside string literals).
fn strip_comments(sql: &str) -> String {
    sql.lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}
