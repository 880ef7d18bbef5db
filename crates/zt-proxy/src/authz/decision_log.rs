//! The decision log: every decision appended to the hash-chained, signed log
//! (in batches, by one writer task), and shipped to zt server through zt agent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use zt_policy::Request;
use zt_task::Tasks;

use super::{AuthzConfig, AuthzError, Decision, PolicySource};
use crate::admin::Metrics;
use crate::follow::Backoff;

/// Decisions waiting for the log writer; requests wait when it is full, so no
/// decision is ever dropped.
const LOG_BACKLOG: usize = 4096;

/// Opens (and verifies) the log at `path` with its signing key, and starts its
/// writer — not supervised: a writer whose file fails ends, and every request
/// is then refused (fail closed, loud in the log, the metrics and `/readyz`)
/// — and, with the policies from zt agent, the supervised shipper.
pub(super) fn start(
    config: &AuthzConfig,
    path: &Path,
    metrics: &Arc<Metrics>,
    tasks: &Tasks,
    stop: &watch::Receiver<bool>,
) -> Result<mpsc::Sender<zt_audit::Record>, AuthzError> {
    let key_path = config
        .decision_log_key
        .clone()
        .unwrap_or_else(|| zt_audit::signed::default_key_path(path));
    let key = zt_audit::signed::load_or_create_key(&key_path)?;
    tracing::info!(log = %path.display(), key = %key.verifier(), "decision log checkpoints signed (zt audit verify --key)");
    let writer = zt_audit::Writer::open_signed(path, key, config.checkpoints)?;
    if writer.found_uncovered() > 0 {
        tracing::warn!(log = %path.display(), records = writer.found_uncovered(), "decision log records no checkpoint covers (a crash, or checkpoints removed): the next checkpoint signs them as found");
    }
    let (written_tx, written) = watch::channel(Written::of(&writer));
    let verifier_key = writer.verifier().map(ToString::to_string).unwrap_or_default();
    let (tx, rx) = mpsc::channel(LOG_BACKLOG);
    tokio::spawn(write_log(
        writer,
        rx,
        written_tx,
        config.checkpoints.interval,
        metrics.clone(),
    ));
    // With zt server behind the agent, the log is also shipped there.
    if let PolicySource::Agent(socket) = &config.source {
        let (path, socket, metrics) = (path.to_owned(), socket.clone(), metrics.clone());
        tasks.spawn_until_stop("decision_shipper", stop.clone(), move || {
            ship(
                path.clone(),
                socket.clone(),
                written.clone(),
                verifier_key.clone(),
                metrics.clone(),
            )
        });
    }
    Ok(tx)
}

/// The log record of one decision.
pub(super) fn record(request: &Request, decision: &Decision, verdict: &str, mode: &str) -> zt_audit::Record {
    let http = request.request.as_ref();
    let outcome = &decision.verdict;
    zt_audit::Record {
        seq: 0,
        time_ms: zt_identity::clock::unix_millis(),
        id: decision_id(),
        source_principal: request.source.principal.clone(),
        source_ip: request.source.ip.map(|ip| ip.to_string()),
        destination: decision.destination.to_string(),
        port: request.destination.port,
        protocol: match request.protocol {
            zt_policy::request::Protocol::Http => "http".into(),
            zt_policy::request::Protocol::Tcp => "tcp".into(),
        },
        method: http.map(|h| h.method.clone()),
        host: http.map(|h| h.host.clone()),
        path: http.map(|h| without_query(&h.path).to_owned()),
        decision: verdict.into(),
        mode: mode.into(),
        policy: outcome.policy.clone(),
        reason: outcome.reason.clone(),
        policy_version: decision.version.to_string(),
        eval_ns: decision.eval_ns,
        dry_run: outcome
            .dry_run
            .as_ref()
            .map(|d| format!("{} {}", d.decision, d.policy.as_deref().unwrap_or("(no policy)"))),
        audit: outcome.audit.clone(),
        query: None,
        input: None,
        result: None,
        revision: None,
        request_principal: http
            .and_then(|h| h.auth.as_ref())
            .and_then(|a| a.principal.clone()),
        request_claims: http
            .and_then(|h| h.auth.as_ref())
            .and_then(|auth| claims_named(&auth.claims, &decision.claims)),
        prev: String::new(),
        hash: String::new(),
    }
}

/// The claims at `paths` in `claims`, keyed by the path joined with `.`;
/// `None` when none is there.
fn claims_named(
    claims: &serde_json::Map<String, serde_json::Value>,
    paths: &[Vec<String>],
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let found: serde_json::Map<String, serde_json::Value> = paths
        .iter()
        .filter_map(|path| {
            let (first, rest) = path.split_first()?;
            let mut value = claims.get(first)?;
            for part in rest {
                value = value.get(part)?;
            }
            Some((path.join("."), value.clone()))
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

/// A request target without its query: logs record the path only (a query may
/// carry a token).
pub(crate) fn without_query(target: &str) -> &str {
    target.split_once('?').map_or(target, |(path, _)| path)
}

/// 128 random bits, hex.
fn decision_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG does not fail on Linux; an all-zero id would still be logged.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    zt_identity::x509::hex_compact(&bytes)
}

/// How far the log is written and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Written {
    /// The last sequence number written.
    records: u64,
    /// Records the last signed checkpoint covers.
    covered: u64,
}

impl Written {
    fn of(writer: &zt_audit::Writer) -> Self {
        Self {
            records: writer.head().records,
            covered: writer.covered(),
        }
    }
}

/// Appends decisions in batches until every sender is gone; publishes how far
/// the log is written and signed. While decisions are few, a checkpoint is
/// signed once records have waited `interval`; the writer's drop signs the
/// last one.
async fn write_log(
    mut writer: zt_audit::Writer,
    mut rx: mpsc::Receiver<zt_audit::Record>,
    written: watch::Sender<Written>,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(256);
    let interval = interval.max(Duration::from_millis(10));
    loop {
        let appended = match tokio::time::timeout(interval, rx.recv_many(&mut batch, 256)).await {
            Ok(0) => return,
            Ok(_) => writer.append(batch.drain(..)),
            Err(_) => Ok(()),
        };
        if let Err(e) = appended.and_then(|()| writer.checkpoint_if_due()) {
            metrics.decision_log_failures.inc();
            tracing::error!(error = %e, "decision log write failed: requests are denied until the proxy is restarted");
            return;
        }
        written.send_replace(Written::of(&writer));
    }
}

/// Records per shipped batch.
const SHIP_BATCH: usize = 500;
/// Unshipped records above which the backlog is reported (they stay in the
/// local log, which is the buffer: nothing is dropped).
const SHIP_BACKLOG_BOUND: u64 = 100_000;

/// Ships the decision log to zt server through zt agent, in order, in
/// acknowledged batches; what the server holds is remembered in `LOG.shipped`,
/// so a restart resumes there. While the server is unreachable the local log
/// is the buffer. Each batch carries the latest signed checkpoint it completes
/// (with the log's verifier key) for zt server to witness; its cosigned copy
/// is kept in `LOG.cosigned`, always the latest.
async fn ship(
    log: PathBuf,
    socket: PathBuf,
    mut written: watch::Receiver<Written>,
    verifier_key: String,
    metrics: Arc<Metrics>,
) {
    let cursor = log.with_extension("shipped");
    let mut shipped: u64 = std::fs::read_to_string(&cursor)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0);
    let cosigned = zt_audit::signed::cosigned_path(&log);
    // The size of the last checkpoint cosigned.
    let mut witnessed = std::fs::read_to_string(&cosigned)
        .ok()
        .and_then(|note| checkpoint_size(&note))
        .unwrap_or(0);
    let client = match zt_workload::WorkloadClient::new(&socket) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(socket = %socket.display(), error = %e, "decisions cannot be shipped");
            return;
        }
    };
    // Byte offset of the first line not known to be stored.
    let mut offset = 0u64;
    let mut backoff = Backoff::new();
    let mut over_bound = false;
    loop {
        let now = *written.borrow_and_update();
        let backlog = now.records.saturating_sub(shipped);
        metrics
            .decisions_unshipped
            .set(i64::try_from(backlog).unwrap_or(i64::MAX));
        if backlog > SHIP_BACKLOG_BOUND && !over_bound {
            metrics.decision_backlog_over_bound.inc();
            tracing::warn!(backlog, bound = SHIP_BACKLOG_BOUND, log = %log.display(), "decisions not yet on zt server passed the bound; they stay in the local log");
        }
        over_bound = backlog > SHIP_BACKLOG_BOUND;
        let witness_due = !verifier_key.is_empty() && now.covered > witnessed;
        if backlog == 0 && !witness_due {
            if written.changed().await.is_err() {
                return;
            }
            continue;
        }
        let batch = if backlog == 0 {
            Vec::new()
        } else {
            match read_batch(&log, &mut offset, shipped) {
                Ok(batch) if batch.is_empty() => {
                    // The log holds less than its head says (a record being written, or
                    // a file replaced under the proxy): look again later, not in a loop.
                    tokio::time::sleep(zt_task::files::FILE_POLL).await;
                    continue;
                }
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(log = %log.display(), error = %e, "reading the decision log to ship it");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            }
        };
        // Records are consecutive: after this batch the server holds through here.
        let through = shipped + batch.len() as u64;
        let checkpoint = if witness_due {
            latest_checkpoint(&log, through)
                .unwrap_or_else(|e| {
                    tracing::warn!(log = %log.display(), error = %e, "reading the decision log's checkpoints to have them witnessed");
                    None
                })
                .filter(|(size, _)| *size > witnessed)
        } else {
            None
        };
        if batch.is_empty() && checkpoint.is_none() {
            if written.changed().await.is_err() {
                return;
            }
            continue;
        }
        let sent = checkpoint
            .as_ref()
            .map(|(_, note)| note.clone())
            .unwrap_or_default();
        match client.ship_decisions(batch, sent, verifier_key.clone()).await {
            Ok(answer) => {
                let through = answer.stored_through;
                if through < shipped {
                    // The server holds less than we thought: ship again from there.
                    offset = 0;
                }
                shipped = through;
                backoff.reset();
                if let Err(e) = zt_fs::write_atomically(&[(
                    cursor.clone(),
                    format!("{shipped}\n").into_bytes(),
                    zt_fs::PRIVATE_MODE,
                )]) {
                    tracing::warn!(cursor = %cursor.display(), error = %e, "remembering what was shipped");
                }
                if let Some((size, note)) = checkpoint.filter(|_| !answer.cosignatures.is_empty()) {
                    let whole = format!("{note}{}", answer.cosignatures.concat());
                    match zt_fs::write_atomically(&[(
                        cosigned.clone(),
                        whole.into_bytes(),
                        zt_fs::PRIVATE_MODE,
                    )]) {
                        Ok(()) => {
                            witnessed = size;
                            tracing::debug!(size, "decision log checkpoint witnessed by zt server");
                        }
                        Err(e) => {
                            tracing::warn!(file = %cosigned.display(), error = %e, "keeping the checkpoint zt server cosigned");
                        }
                    }
                }
            }
            Err(status) => {
                metrics.decision_ship_failures.inc();
                let retry_in = backoff.next();
                tracing::warn!(error = %status.message(), ?retry_in, "shipping decisions to zt server");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// The size of a checkpoint note's tree, if it parses.
fn checkpoint_size(note: &str) -> Option<u64> {
    let parsed = zt_audit::note::Note::parse(note).ok()?;
    Some(zt_audit::note::Checkpoint::parse(parsed.text).ok()?.size)
}

/// The latest signed checkpoint (its size and whole note) that covers no more
/// than `limit` records.
fn latest_checkpoint(log: &Path, limit: u64) -> Result<Option<(u64, String)>, zt_audit::AuditError> {
    let notes = zt_audit::signed::read_checkpoints(&zt_audit::signed::checkpoints_path(log))?;
    Ok(notes.unwrap_or_default().into_iter().rev().find_map(|stored| {
        let size = checkpoint_size(&stored.note)?;
        (size <= limit).then_some((size, stored.note))
    }))
}

/// The next lines after `shipped` (at most [`SHIP_BATCH`]), reading from
/// `offset`, which moves past the lines already shipped.
fn read_batch(log: &Path, offset: &mut u64, shipped: u64) -> std::io::Result<Vec<String>> {
    use std::io::{BufRead as _, Seek as _};
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let mut file = std::fs::File::open(log)?;
    file.seek(std::io::SeekFrom::Start(*offset))?;
    let mut reader = std::io::BufReader::new(file);
    let mut batch = Vec::new();
    let mut line = String::new();
    while batch.len() < SHIP_BATCH {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        let seq = serde_json::from_str::<Seq>(&line)
            .map_err(std::io::Error::other)?
            .seq;
        if seq <= shipped {
            *offset += read as u64;
        } else {
            batch.push(line.trim_end().to_owned());
        }
    }
    Ok(batch)
}
