//! The control plane's datastore: registration entries, join tokens and a change
//! feed, on SQLite (embedded default, WAL, synchronous commits) or PostgreSQL
//! (several servers on one database, changes announced with LISTEN/NOTIFY).
//!
//! One SQL dialect serves both through sqlx's `Any` driver; only the schema's
//! auto-increment type and the notification mechanism differ.

#![forbid(unsafe_code)]

pub mod model;

mod agents;
mod authorities;
mod backchannel;
mod clients;
mod decisions;
mod device;
mod devices;
mod grants;
mod migrate;
mod people;
mod policies;
mod revocations;
mod sessions;
mod witness;

use std::path::Path;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AnyPool, Row as _};
use tokio::sync::watch;
use zt_identity::SpiffeId;
use zt_task::{Reporter, Tasks};

pub use agents::Agent;
pub use authorities::{AuthorityStep, StoredAuthority};
pub use backchannel::{LogoutCause, LogoutNotice};
pub use clients::{
    BackchannelLogoutUri, Client, ClientKind, CreatedClient, GrantType, NewClient, RedirectUri,
};
pub use decisions::MAX_DECISIONS_PAGE;
pub use device::{DeviceCode, DevicePoll, DeviceRequest, USER_CODE_ALPHABET};
pub use devices::{Device, DeviceEvent, DeviceStatus, DeviceTokenGrant, NewDevice, SavedPosture};
pub use grants::{GrantError, IssuedRefresh, MAX_GRACE_RETRIES, NewCode, RedeemedCode, Rotation};
pub use migrate::LATEST as SCHEMA_VERSION;
pub use model::{Entry, EntrySpec, ModelError, Selector};
pub use people::{Group, Invite, NewUser, User};
pub use policies::{PolicyFile, PolicyVersion, policy_digest};
pub use revocations::{Revocation, Revoked, normalize_serial};
pub use sessions::{
    Credential, CredentialUse, NewCredential, OpenedSession, RefreshFamily, Session, SignIn, StoredCredential,
};
pub use witness::PinnedSource;

/// The PostgreSQL channel changes are announced on.
const CHANNEL: &str = "zt_changes";

/// Why a datastore operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database driver failed (connection, I/O, SQL).
    #[error("datastore: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite file or one of its journals is another user's, or unreadable.
    #[error("datastore {0}")]
    File(#[from] zt_fs::FsError),
    /// A datastore location that is neither a path nor a `postgres://` URL.
    #[error("datastore {0:?}: expected a SQLite file path or a postgres:// URL")]
    Location(String),
    /// The database was written by a newer zt.
    #[error("datastore schema version {found} is newer than this zt knows ({known})")]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Newest version known here.
        known: i64,
    },
    /// An invalid entry.
    #[error("{0}")]
    Invalid(#[from] ModelError),
    /// An entry with the same SPIFFE ID, parent and selectors exists.
    #[error("an entry for {spiffe_id} under {parent_id} with these selectors already exists")]
    AlreadyExists {
        /// The entry's ID.
        spiffe_id: SpiffeId,
        /// Its parent.
        parent_id: SpiffeId,
    },
    /// No entry with this ID.
    #[error("entry {0:?} not found")]
    NotFound(String),
    /// An update based on an old revision: someone else changed the entry first.
    #[error("entry {id:?} is at revision {current}, not {expected}: re-read it and retry")]
    StaleRevision {
        /// The entry.
        id: String,
        /// The revision the caller based its change on.
        expected: u64,
        /// The revision stored.
        current: u64,
    },
    /// A join token that is unknown, used or expired.
    #[error("join token is {0}")]
    JoinToken(TokenProblem),
    /// A device enrollment token that is unknown, used or expired.
    #[error("device enrollment token is {0}")]
    DeviceToken(TokenProblem),
    /// No agent with this ID (or not with this SVID).
    #[error("agent {0} is not attested (evicted, or its SVID was replaced)")]
    UnknownAgent(String),
    /// A serial that is not hex of at most 20 bytes.
    #[error("serial {0:?}: expected hex of at most 20 bytes (':' separators allowed)")]
    InvalidSerial(String),
    /// A banned agent tried to attest.
    #[error("agent {0} is banned")]
    Banned(String),
    /// Shipped decision records that do not continue their source's chain (or
    /// are not records): nothing of the batch is stored.
    #[error("decisions from {source_id}: {reason}")]
    BrokenChain {
        /// The workload whose log it is.
        source_id: String,
        /// What is wrong, and at which record.
        reason: String,
    },
    /// A user, group, client, credential or session field with a value it cannot have.
    #[error("{field}{}: {reason}", quoted(.value))]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// The value given (empty where it is too large to repeat, or secret).
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// No such user, group, client, credential or session.
    #[error("{what} {key:?} not found")]
    Missing {
        /// What kind of record.
        what: &'static str,
        /// Its name or ID.
        key: String,
    },
    /// A user, group or client with this name exists.
    #[error("{what} {key:?} already exists")]
    Duplicate {
        /// What kind of record.
        what: &'static str,
        /// Its name or ID.
        key: String,
    },
    /// The user is disabled: no invite, session or sign-in.
    #[error("user {0:?} is disabled")]
    Disabled(String),
    /// An enrollment invite that is unknown, used or expired.
    #[error("invite is {0}")]
    Invite(TokenProblem),
    /// Hashing or verifying a secret failed.
    #[error("hashing a secret: {0}")]
    Hash(String),
    /// Stored data that no longer parses (hand-edited or corrupted).
    #[error("stored {what} {key:?} is corrupt: {reason}")]
    Corrupt {
        /// What kind of record.
        what: &'static str,
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// ` "value"`, or nothing for a value not repeated in messages.
fn quoted(value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!(" {value:?}")
    }
}

impl StoreError {
    pub(crate) fn missing(what: &'static str, key: &str) -> Self {
        StoreError::Missing {
            what,
            key: key.to_owned(),
        }
    }

    pub(crate) fn duplicate(what: &'static str, key: &str) -> Self {
        StoreError::Duplicate {
            what,
            key: key.to_owned(),
        }
    }
}

/// Why a join token or an invite was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Never issued here.
    Unknown,
    /// Already used once.
    Used,
    /// Past its expiry.
    Expired,
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenProblem::Unknown => "unknown",
            TokenProblem::Used => "already used",
            TokenProblem::Expired => "expired",
        })
    }
}

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    fn serial_type(self) -> &'static str {
        match self {
            Backend::Sqlite => "INTEGER",
            Backend::Postgres => "BIGSERIAL",
        }
    }
}

/// One entry of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Position in the feed; strictly increasing.
    pub seq: u64,
    /// What changed: `entry`, `revocation`, `user`, `group`, `client`, `session`, …
    pub kind: String,
    /// Which record: an entry ID, …
    pub subject: String,
    /// When, unix seconds.
    pub at: u64,
}

/// What a join token, once consumed, grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGrant {
    /// The agent ID fixed when the token was made, if any.
    pub spiffe_id: Option<SpiffeId>,
}

/// A handle on the datastore; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    changed: watch::Sender<()>,
    /// The change-feed listener (PostgreSQL only), ended with the last handle.
    feed: Option<Arc<FeedTask>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({:?})", self.backend)
    }
}

/// Creates the SQLite file 0600 before SQLite does (it would use the umask), so
/// that the journals SQLite makes later, which copy the database's mode, are
/// 0600 too; tightens a file or journal left looser by an older zt.
fn private_sqlite_files(path: &Path) -> Result<(), zt_fs::FsError> {
    zt_fs::open_private(
        path,
        std::fs::OpenOptions::new().read(true).write(true).create(true),
    )?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut journal = path.as_os_str().to_owned();
        journal.push(suffix);
        let journal = Path::new(&journal);
        if journal.exists() {
            zt_fs::open_private(journal, std::fs::OpenOptions::new().read(true))?;
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the datastore at `location` — a SQLite file path
    /// (or `sqlite://path`) or a `postgres://` URL — and migrates its schema.
    pub async fn open(location: &str) -> Result<Self, StoreError> {
        Self::open_supervised(location, &Tasks::new()).await
    }

    /// Like [`Store::open`], with the change-feed listener's outages (PostgreSQL)
    /// reported in `tasks` as [`FEED_TASK`].
    pub async fn open_supervised(location: &str, tasks: &Tasks) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            (Backend::Postgres, location.to_owned())
        } else {
            let path = location.strip_prefix("sqlite://").unwrap_or(location);
            if path.is_empty() || path.contains('?') {
                return Err(StoreError::Location(location.to_owned()));
            }
            private_sqlite_files(Path::new(path))?;
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"))
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL for concurrent readers; FULL syncs every commit, so a
                        // committed change survives power loss; wait, don't fail, on locks.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let mut conn = pool.acquire().await?;
        migrate::run(&mut conn, backend).await?;
        drop(conn);
        let (changed, _) = watch::channel(());
        let mut store = Self {
            pool,
            backend,
            changed,
            feed: None,
        };
        if backend == Backend::Postgres {
            store.listen_for_changes(url, tasks.reporter(FEED_TASK)).await?;
        }
        Ok(store)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that writes. On SQLite it takes the write lock first: a
    /// transaction that reads and then writes is refused at once ("database
    /// is locked", no waiting) when another connection wrote meanwhile, or
    /// still holds the lock while its rollback is on its way; one that writes
    /// first waits its turn (`busy_timeout`).
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend() == Backend::Sqlite {
            sqlx::query("UPDATE changes SET seq = seq WHERE 1 = 0")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Wakes this process's watchers after a commit.
    pub(crate) fn notify_local(&self) {
        self.changed.send_replace(());
    }

    /// Wakes whenever the change feed may have grown: after a local commit, and on
    /// PostgreSQL after any server's commit (or a reconnect that may have missed one).
    /// Read [`Store::changes_since`] to see what changed.
    pub fn watch_changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Changes after `seq`, oldest first, at most `limit`.
    pub async fn changes_since(&self, seq: u64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, kind, subject, at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(to_i64(seq))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(Change {
                    seq: to_u64(row.try_get("seq")?),
                    kind: row.try_get("kind")?,
                    subject: row.try_get("subject")?,
                    at: to_u64(row.try_get("at")?),
                })
            })
            .collect()
    }

    /// The newest position of the change feed (0 if empty).
    pub async fn latest_change(&self) -> Result<u64, StoreError> {
        let (seq,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM changes")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(seq))
    }

    /// Stores a new entry.
    pub async fn create_entry(&self, spec: EntrySpec, now: u64) -> Result<Entry, StoreError> {
        let mut tx = self.begin_write().await?;
        let entry = self.insert_entry(&mut tx, spec, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(entry)
    }

    /// Stores many new entries in one transaction (an import): all or none.
    pub async fn import_entries(&self, specs: Vec<EntrySpec>, now: u64) -> Result<usize, StoreError> {
        let mut tx = self.begin_write().await?;
        let count = specs.len();
        for spec in specs {
            self.insert_entry(&mut tx, spec, now).await?;
        }
        tx.commit().await?;
        self.notify_local();
        Ok(count)
    }

    /// Inserts a new entry, with its change record, inside `tx`.
    async fn insert_entry(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        spec: EntrySpec,
        now: u64,
    ) -> Result<Entry, StoreError> {
        let entry = Entry {
            id: random_id()?,
            spec: spec.normalize()?,
            revision: 1,
            created_at: now,
            updated_at: now,
        };
        let inserted = sqlx::query(
            "INSERT INTO entries (id, spiffe_id, parent_id, selectors, spec, revision, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(&entry.id)
        .bind(entry.spec.spiffe_id.to_string())
        .bind(entry.spec.parent_id.to_string())
        .bind(entry.spec.selector_key())
        .bind(spec_json(&entry.spec)?)
        .bind(to_i64(entry.revision))
        .bind(to_i64(now))
        .execute(&mut **tx)
        .await;
        if let Err(e) = inserted {
            return Err(if is_unique_violation(&e) {
                StoreError::AlreadyExists {
                    spiffe_id: entry.spec.spiffe_id,
                    parent_id: entry.spec.parent_id,
                }
            } else {
                e.into()
            });
        }
        self.record_change(tx, "entry", &entry.id, now).await?;
        Ok(entry)
    }

    /// The entry with this ID.
    pub async fn entry(&self, id: &str) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query("SELECT id, spec, revision, created_at, updated_at FROM entries WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Entries, optionally only those with this SPIFFE ID or this parent, in creation order.
    pub async fn list_entries(
        &self,
        spiffe_id: Option<&SpiffeId>,
        parent_id: Option<&SpiffeId>,
    ) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, spec, revision, created_at, updated_at FROM entries \
             WHERE ($1 = '' OR spiffe_id = $1) AND ($2 = '' OR parent_id = $2) \
             ORDER BY created_at, id",
        )
        .bind(spiffe_id.map(ToString::to_string).unwrap_or_default())
        .bind(parent_id.map(ToString::to_string).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// How many entries there are.
    pub async fn count_entries(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM entries")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(n))
    }

    /// Replaces the entry's spec, if it is still at `revision`: two writers that read
    /// the same revision cannot both win, so no update is lost.
    pub async fn update_entry(
        &self,
        id: &str,
        revision: u64,
        spec: EntrySpec,
        now: u64,
    ) -> Result<Entry, StoreError> {
        let spec = spec.normalize()?;
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE entries SET spiffe_id = $1, parent_id = $2, selectors = $3, spec = $4, \
             revision = revision + 1, updated_at = $5 WHERE id = $6 AND revision = $7",
        )
        .bind(spec.spiffe_id.to_string())
        .bind(spec.parent_id.to_string())
        .bind(spec.selector_key())
        .bind(spec_json(&spec)?)
        .bind(to_i64(now))
        .bind(id)
        .bind(to_i64(revision))
        .execute(&mut *tx)
        .await;
        let rows = match updated {
            Ok(done) => done.rows_affected(),
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists {
                    spiffe_id: spec.spiffe_id,
                    parent_id: spec.parent_id,
                });
            }
            Err(e) => return Err(e.into()),
        };
        if rows == 0 {
            drop(tx);
            return Err(match self.entry(id).await? {
                None => StoreError::NotFound(id.to_owned()),
                Some(current) => StoreError::StaleRevision {
                    id: id.to_owned(),
                    expected: revision,
                    current: current.revision,
                },
            });
        }
        self.record_change(&mut tx, "entry", id, now).await?;
        let row = sqlx::query("SELECT id, spec, revision, created_at, updated_at FROM entries WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        let entry = entry_from_row(&row)?;
        tx.commit().await?;
        self.notify_local();
        Ok(entry)
    }

    /// Deletes the entry and returns what it was.
    pub async fn delete_entry(&self, id: &str, now: u64) -> Result<Entry, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT id, spec, revision, created_at, updated_at FROM entries WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let entry = entry_from_row(&row)?;
        sqlx::query("DELETE FROM entries WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.record_change(&mut tx, "entry", id, now).await?;
        tx.commit().await?;
        self.notify_local();
        Ok(entry)
    }

    /// Makes a one-time join token valid for `ttl`; only its SHA-256 is stored.
    pub async fn create_join_token(
        &self,
        spiffe_id: Option<&SpiffeId>,
        ttl: Duration,
        now: u64,
    ) -> Result<String, StoreError> {
        let token = random_token()?;
        sqlx::query("INSERT INTO join_tokens (token_sha256, spiffe_id, expires_at) VALUES ($1, $2, $3)")
            .bind(sha256_hex(&token))
            .bind(spiffe_id.map(ToString::to_string))
            .bind(to_i64(now.saturating_add(ttl.as_secs())))
            .execute(&self.pool)
            .await?;
        Ok(token)
    }

    /// Uses a join token: succeeds once, before expiry, atomically even across servers.
    pub async fn consume_join_token(&self, token: &str, now: u64) -> Result<JoinGrant, StoreError> {
        let hash = sha256_hex(token);
        let used = sqlx::query(
            "UPDATE join_tokens SET used_at = $1 WHERE token_sha256 = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(to_i64(now))
        .bind(&hash)
        .execute(&self.pool)
        .await?;
        let row =
            sqlx::query("SELECT spiffe_id, expires_at, used_at FROM join_tokens WHERE token_sha256 = $1")
                .bind(&hash)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Err(StoreError::JoinToken(TokenProblem::Unknown));
        };
        if used.rows_affected() == 0 {
            let expired = to_u64(row.try_get("expires_at")?) <= now;
            return Err(StoreError::JoinToken(if expired {
                TokenProblem::Expired
            } else {
                TokenProblem::Used
            }));
        }
        let spiffe_id: Option<String> = row.try_get("spiffe_id")?;
        let spiffe_id = spiffe_id
            .map(|text| {
                SpiffeId::parse(&text).map_err(|e| StoreError::Corrupt {
                    what: "join token",
                    key: hash.clone(),
                    reason: e.to_string(),
                })
            })
            .transpose()?;
        Ok(JoinGrant { spiffe_id })
    }

    /// Appends to the change feed inside `tx`; on PostgreSQL the notification is
    /// delivered to every listening server when `tx` commits.
    pub(crate) async fn record_change(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        kind: &str,
        subject: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO changes (kind, subject, at) VALUES ($1, $2, $3)")
            .bind(kind)
            .bind(subject)
            .bind(to_i64(now))
            .execute(&mut **tx)
            .await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Starts the task that turns every server's NOTIFYs (this one's included) into
    /// local wake-ups. It runs as long as a handle on this store exists: it never
    /// ends on its own, whoever is subscribed or not. A lost connection is reported
    /// through `feed` (readiness red, a restart counted) and replaced, with backoff.
    async fn listen_for_changes(&mut self, url: String, feed: Reporter) -> Result<(), StoreError> {
        let listener = connect_listener(&url).await?;
        let changed = self.changed.clone();
        let task = tokio::spawn(follow_notifications(listener, url, changed, feed));
        self.feed = Some(Arc::new(FeedTask(task.abort_handle())));
        Ok(())
    }
}

/// The change-feed listener's `application_name`, by which operators (and tests)
/// find its connection in `pg_stat_activity`.
pub const FEED_APPLICATION_NAME: &str = "zt-change-feed";

/// The name the change-feed listener reports under (`task_restarts_total{task=…}`).
pub const FEED_TASK: &str = "change_feed";

/// Ends the listener when the last handle on the store is gone.
struct FeedTask(tokio::task::AbortHandle);

impl Drop for FeedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A listener on [`CHANNEL`] on a connection of its own. It does not reconnect
/// by itself: [`follow_notifications`] replaces it, so that an outage is seen.
async fn connect_listener(url: &str) -> Result<PgListener, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name(FEED_APPLICATION_NAME);
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Wakes the store's watchers on every notification, forever. When the connection
/// is lost, notifications may have been missed: the feed is reported down until a
/// new listener is connected, and the watchers are woken to re-read the feed then.
async fn follow_notifications(
    mut listener: PgListener,
    url: String,
    changed: watch::Sender<()>,
    feed: Reporter,
) {
    loop {
        let lost = match listener.try_recv().await {
            Ok(Some(_)) => {
                changed.send_replace(());
                continue;
            }
            Ok(None) => "lost its connection to PostgreSQL".to_owned(),
            Err(e) => format!("failed: {e}"),
        };
        let mut backoff = zt_task::FIRST_BACKOFF;
        feed.down(&lost, backoff);
        listener = loop {
            tokio::time::sleep(backoff).await;
            match connect_listener(&url).await {
                Ok(listener) => break listener,
                Err(e) => {
                    backoff = (backoff * 2).min(zt_task::MAX_BACKOFF);
                    tracing::error!(task = FEED_TASK, error = %e, retry_in_ms = backoff.as_millis(), "change feed: reconnecting failed");
                }
            }
        };
        feed.restarted();
        changed.send_replace(());
    }
}

fn entry_from_row(row: &AnyRow) -> Result<Entry, StoreError> {
    let id: String = row.try_get("id")?;
    let spec: String = row.try_get("spec")?;
    let spec: EntrySpec = serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
        what: "entry",
        key: id.clone(),
        reason: e.to_string(),
    })?;
    Ok(Entry {
        id,
        spec,
        revision: to_u64(row.try_get("revision")?),
        created_at: to_u64(row.try_get("created_at")?),
        updated_at: to_u64(row.try_get("updated_at")?),
    })
}

fn spec_json(spec: &EntrySpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
        what: "entry",
        key: spec.spiffe_id.to_string(),
        reason: e.to_string(),
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error().is_some_and(|d| d.is_unique_violation())
}

/// Random 128-bit ID, hex.
pub fn random_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| sqlx::Error::Protocol("random number generator failed".into()))?;
    Ok(zt_identity::x509::hex_compact(&bytes))
}

/// Random 256-bit token, base64url.
fn random_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| sqlx::Error::Protocol("random number generator failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A short public name of a join token (the first 16 hex digits of its SHA-256),
/// for agent IDs and logs; the token itself cannot be recovered from it.
pub fn token_id(token: &str) -> String {
    sha256_hex(token).chars().take(16).collect()
}

fn sha256_hex(text: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    zt_identity::x509::hex_compact(digest.as_ref())
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    to_i64(zt_identity::clock::unix_seconds())
}

/// Databases store signed 64-bit integers; our times and counters never reach 2^63.
pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
