//! The decision log: every authorization decision as one JSON line, chained by
//! hashes, with signed checkpoints of its Merkle tree beside it.
//!
//! Each record carries its sequence number, the hash of the record before it
//! (`prev`) and its own hash: SHA-256 over `prev` and the record's canonical JSON
//! (every field but `hash`, in declaration order). Editing a record breaks its
//! hash; deleting or reordering one breaks the next record's `prev` and the
//! sequence. A chain alone stops no one who can write the file: they can edit a
//! record and recompute every hash after it. So the writer also keeps an RFC 9162
//! Merkle tree over the records' hashes ([`merkle`]) and appends, every so many
//! records or seconds and when it stops, a checkpoint of the tree's head signed
//! with its own key (C2SP tlog-checkpoint signed notes, [`note`]) to
//! `LOG.checkpoints`; [`signed::verify`] recomputes the tree and checks every
//! checkpoint's signature and root, so a rewritten history fails at the first
//! checkpoint that covers it. What the last checkpoint does not cover, and a log
//! cut back together with its checkpoints, only a copy kept elsewhere (the
//! server's, once records are shipped) can expose.

#![forbid(unsafe_code)]

pub mod cosignature;
pub mod merkle;
pub mod note;
pub mod signed;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::merkle::Frontier;
use crate::note::{Checkpoint, SigningKey};
pub use crate::signed::{CheckpointPolicy, Verified};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest line read back, in bytes: a record is far smaller.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One decision, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When, in Unix milliseconds.
    pub time_ms: u64,
    /// The decision's id (random, 128 bits, hex).
    pub id: String,
    /// The caller's SPIFFE ID; absent for plaintext.
    pub source_principal: Option<String>,
    /// The caller's address.
    pub source_ip: Option<String>,
    /// The workload decided for, `namespace` or `namespace/app`.
    pub destination: String,
    /// The destination port.
    pub port: Option<u16>,
    /// `http` or `tcp`.
    pub protocol: String,
    /// HTTP method.
    pub method: Option<String>,
    /// HTTP host.
    pub host: Option<String>,
    /// The normalized path (without query).
    pub path: Option<String>,
    /// `ALLOW` or `DENY`: the policies' decision.
    pub decision: String,
    /// `enforce` or `permissive` (a DENY let through and recorded).
    pub mode: String,
    /// The deciding policy, `namespace/name`; absent: no policy decided.
    pub policy: Option<String>,
    /// Why.
    pub reason: String,
    /// The version of the policy set.
    pub policy_version: String,
    /// The evaluation's duration, in nanoseconds.
    pub eval_ns: u64,
    /// What dry-run policies would have decided, when any applies.
    pub dry_run: Option<String>,
    /// The AUDIT policy that matched, if any.
    pub audit: Option<String>,
    /// A policy decision point's decision: the document queried (`authz/allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Its input, with the masked fields removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Its result (absent when undefined).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The bundle revisions in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The request's authenticated principal (`iss/sub` of a verified JWT,
    /// Istio's `request.auth.principal`), so that the records of two hops can
    /// name the same user; absent for requests without one (and in records
    /// written before it existed, which still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_principal: Option<String>,
    /// The hash of the record before (hex).
    pub prev: String,
    /// This record's hash (hex).
    pub hash: String,
}

impl Record {
    /// The hash this record must carry: SHA-256 over `prev` and its canonical
    /// JSON with `hash` empty.
    pub fn compute_hash(&self) -> String {
        // `hash` is serialized last: the canonical JSON is the record's own
        // with that value emptied, without copying the record.
        let mut json = Vec::with_capacity(512);
        let tail = format!(",\"hash\":{}}}", serde_json::Value::from(self.hash.as_str()));
        let canonical = match serde_json::to_writer(&mut json, self) {
            Ok(()) if json.ends_with(tail.as_bytes()) => {
                json.truncate(json.len() - tail.len());
                json.extend_from_slice(b",\"hash\":\"\"}");
                json
            }
            _ => {
                let mut unhashed = self.clone();
                unhashed.hash = String::new();
                // A struct of strings and numbers always serializes.
                serde_json::to_vec(&unhashed).unwrap_or_default()
            }
        };
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(self.prev.as_bytes());
        context.update(&canonical);
        hex(context.finish().as_ref())
    }

    /// The record's leaf in the Merkle tree: its hash's 32 bytes (`None` if
    /// `hash` is not 64 hex digits, which a verified record never is).
    pub fn leaf(&self) -> Option<merkle::Hash> {
        merkle::leaf_from_hex(&self.hash)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Why a log could not be used or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Creating or opening the log: its mode or owner.
    #[error(transparent)]
    Fs(#[from] zt_fs::FsError),
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The log.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The chain is broken at a line.
    #[error("{path}:{line}: {what}")]
    Broken {
        /// The log.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// What is wrong there.
        what: String,
    },
    /// A checkpoint is malformed, not signed by the key, or does not match the log.
    #[error("{path}:{line}: checkpoint {number}: {what}")]
    Checkpoint {
        /// The checkpoints file.
        path: PathBuf,
        /// Its first line, 1-based.
        line: usize,
        /// Its position in the file, from 1.
        number: usize,
        /// What is wrong with it.
        what: String,
    },
    /// The witnessed checkpoint (`LOG.cosigned`) is missing, not cosigned by
    /// the witness, or does not match the log.
    #[error("{path}: {what}")]
    Witness {
        /// The cosigned checkpoint's file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The log's signing key cannot be used.
    #[error("{path}: {what}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        what: String,
    },
}

impl AuditError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What verifying a log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Records in the log.
    pub records: u64,
    /// The last record's hash (or [`GENESIS`]).
    pub hash: String,
}

/// A chain being checked record by record: from the start of a log, or from a
/// head already trusted (a server's stored copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    head: Head,
}

impl Default for Chain {
    fn default() -> Self {
        Self::from(Head {
            records: 0,
            hash: GENESIS.to_owned(),
        })
    }
}

impl From<Head> for Chain {
    fn from(head: Head) -> Self {
        Self { head }
    }
}

impl Chain {
    /// The head so far.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Checks that `record` continues the chain, and extends it.
    pub fn extend(&mut self, record: &Record) -> Result<(), String> {
        if record.seq != self.head.records + 1 {
            return Err(format!(
                "sequence {} where {} was due: a record was removed or moved",
                record.seq,
                self.head.records + 1
            ));
        }
        if record.prev != self.head.hash {
            return Err(
                "prev is not the hash of the record before: a record was removed, moved or replaced".into(),
            );
        }
        if record.compute_hash() != record.hash {
            return Err("the record does not match its hash: it was edited".into());
        }
        self.head = Head {
            records: record.seq,
            hash: record.hash.clone(),
        };
        Ok(())
    }
}

/// Reads every record of a log, checking the chain as it goes; `visit` sees
/// each verified record. The error names the first line that breaks it. This
/// checks the chain only: [`signed::verify`] checks the signed checkpoints too.
pub fn verify(path: &Path, mut visit: impl FnMut(&Record)) -> Result<Head, AuditError> {
    read_records(path, |record| {
        visit(record);
        Ok(())
    })
}

/// Reads every record of a log, checking the chain; `visit` sees each verified
/// record and may stop the reading with an error.
fn read_records(
    path: &Path,
    mut visit: impl FnMut(&Record) -> Result<(), AuditError>,
) -> Result<Head, AuditError> {
    let broken = |line: usize, what: String| AuditError::Broken {
        path: path.to_owned(),
        line,
        what,
    };
    let mut reader = BufReader::new(File::open(path).map_err(AuditError::io(path))?);
    let mut chain = Chain::default();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(AuditError::io(path))?;
        if read == 0 {
            return Ok(chain.head().clone());
        }
        number += 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(broken(number, format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        if line.last() != Some(&b'\n') {
            return Err(broken(number, "incomplete last record (no newline)".into()));
        }
        let record: Record =
            serde_json::from_slice(&line).map_err(|e| broken(number, format!("not a record: {e}")))?;
        chain.extend(&record).map_err(|what| broken(number, what))?;
        visit(&record)?;
    }
}

/// Appends records to a log, continuing its chain and its Merkle tree, and —
/// when it holds a signing key — appending signed checkpoints of the tree's
/// head to `LOG.checkpoints`.
pub struct Writer {
    path: PathBuf,
    file: File,
    head: Head,
    tree: Frontier,
    signer: Option<Signer>,
}

/// What a signing writer needs: its key, the checkpoints file and when the
/// next checkpoint is due.
struct Signer {
    key: SigningKey,
    path: PathBuf,
    file: File,
    policy: CheckpointPolicy,
    /// Records the last checkpoint covers.
    covered: u64,
    /// When it was written (or the writer opened).
    at: Instant,
    /// Records no checkpoint covered when the writer opened the log.
    found_uncovered: u64,
}

impl Writer {
    /// Opens (or creates, mode 0600) a log without signed checkpoints; an
    /// existing one must verify first, so that a broken chain is never extended
    /// as if it were whole.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let mut tree = Frontier::default();
        let head = if path.exists() {
            read_records(path, |record| {
                tree.push(&record.leaf().unwrap_or_default());
                Ok(())
            })?
        } else {
            Chain::default().head().clone()
        };
        // A record of who did what: 0600 whatever the umask, and an existing
        // log of this user's left readable by others is tightened.
        let file = zt_fs::open_private(path, OpenOptions::new().create(true).append(true))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            head,
            tree,
            signer: None,
        })
    }

    /// Opens (or creates) a log that this key signs checkpoints of. An existing
    /// log and its checkpoints must verify with this key first: a writer never
    /// signs a head inconsistent with one it signed before.
    pub fn open_signed(path: &Path, key: SigningKey, policy: CheckpointPolicy) -> Result<Self, AuditError> {
        let (head, tree, covered) = if path.exists() {
            let verified = signed::verify(path, Some(key.verifier()), |_| {})?;
            (verified.head, verified.tree, verified.covered)
        } else {
            // Checkpoints without their log are someone else's history: not extended.
            let checkpoints = signed::checkpoints_path(path);
            if checkpoints.exists() {
                return Err(AuditError::Checkpoint {
                    path: checkpoints,
                    line: 1,
                    number: 1,
                    what: format!("checkpoints of a log that does not exist ({})", path.display()),
                });
            }
            (Chain::default().head().clone(), Frontier::default(), 0)
        };
        let checkpoints = signed::checkpoints_path(path);
        let signer = Signer {
            file: zt_fs::open_private(&checkpoints, OpenOptions::new().create(true).append(true))?,
            path: checkpoints,
            key,
            policy,
            covered,
            at: Instant::now(),
            found_uncovered: head.records.saturating_sub(covered),
        };
        let file = zt_fs::open_private(path, OpenOptions::new().create(true).append(true))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            head,
            tree,
            signer: Some(signer),
        })
    }

    /// The chain's head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The key that verifies this writer's checkpoints, if it signs them.
    pub fn verifier(&self) -> Option<&note::VerifierKey> {
        self.signer.as_ref().map(|s| s.key.verifier())
    }

    /// Records that no checkpoint covered when this writer opened the log: its
    /// next checkpoint vouches for them as found, so callers say so loudly (a
    /// crash before the last checkpoint, or checkpoints removed).
    pub fn found_uncovered(&self) -> u64 {
        self.signer.as_ref().map_or(0, |s| s.found_uncovered)
    }

    /// Records the last signed checkpoint covers (0 if this writer signs none).
    pub fn covered(&self) -> u64 {
        self.signer.as_ref().map_or(0, |s| s.covered)
    }

    /// How long records may wait for a checkpoint, if this writer signs them.
    pub fn checkpoint_interval(&self) -> Option<std::time::Duration> {
        self.signer.as_ref().map(|s| s.policy.interval)
    }

    /// Chains and appends records (their `seq`, `prev` and `hash` are set here),
    /// in one write; then signs a checkpoint if enough records have gone
    /// uncovered.
    pub fn append(&mut self, records: impl IntoIterator<Item = Record>) -> Result<(), AuditError> {
        let mut buffer = Vec::new();
        let mut head = self.head.clone();
        let mut tree = self.tree.clone();
        for mut record in records {
            record.seq = head.records + 1;
            record.prev = head.hash.clone();
            record.hash = record.compute_hash();
            // A struct of strings and numbers always serializes.
            serde_json::to_writer(&mut buffer, &record).unwrap_or_default();
            buffer.push(b'\n');
            tree.push(&record.leaf().unwrap_or_default());
            head = Head {
                records: record.seq,
                hash: record.hash,
            };
        }
        let before = self.file.metadata().map_err(AuditError::io(&self.path))?.len();
        let written = self.file.write_all(&buffer).and_then(|()| self.file.flush());
        if let Err(source) = written {
            // A record cut short (a full disk, a file-size limit) is taken
            // back: the log stays a whole chain that verifies.
            let _ = self.file.set_len(before);
            return Err(AuditError::io(&self.path)(source));
        }
        self.head = head;
        self.tree = tree;
        if let Some(signer) = &self.signer
            && self.head.records.saturating_sub(signer.covered) >= signer.policy.every
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Signs a checkpoint if records have gone uncovered for the policy's
    /// interval (a timer calls this while decisions are few).
    pub fn checkpoint_if_due(&mut self) -> Result<(), AuditError> {
        match &self.signer {
            Some(signer) if signer.at.elapsed() >= signer.policy.interval => self.checkpoint(),
            _ => Ok(()),
        }
    }

    /// Signs and appends a checkpoint of the head, if records are uncovered:
    /// the log is synced first, so no checkpoint ever covers records a crash
    /// could lose.
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        let Some(signer) = &mut self.signer else {
            return Ok(());
        };
        signer.at = Instant::now();
        if self.head.records == signer.covered {
            return Ok(());
        }
        self.file.sync_data().map_err(AuditError::io(&self.path))?;
        let checkpoint = Checkpoint {
            origin: signer.key.verifier().name().to_owned(),
            size: self.tree.size(),
            root: self.tree.root(),
        };
        // One note and its closing blank line in one append.
        let note = format!("{}\n", signer.key.sign(&checkpoint.text()));
        signer
            .file
            .write_all(note.as_bytes())
            .and_then(|()| signer.file.sync_data())
            .map_err(AuditError::io(&signer.path))?;
        signer.covered = checkpoint.size;
        Ok(())
    }
}

impl Drop for Writer {
    /// A writer that stops cleanly leaves every record covered.
    fn drop(&mut self) {
        let _ = self.checkpoint();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    pub(crate) fn record(path: &str) -> Record {
        Record {
            seq: 0,
            time_ms: 1_700_000_000_000,
            id: "id".into(),
            source_principal: Some("spiffe://example.org/a".into()),
            source_ip: Some("10.0.0.1".into()),
            destination: "production/billing".into(),
            port: Some(8080),
            protocol: "http".into(),
            method: Some("GET".into()),
            host: Some("billing".into()),
            path: Some(path.into()),
            decision: "ALLOW".into(),
            mode: "enforce".into(),
            policy: None,
            reason: "r".into(),
            policy_version: "v1".into(),
            eval_ns: 1000,
            dry_run: None,
            audit: None,
            query: None,
            input: None,
            result: None,
            revision: None,
            request_principal: None,
            prev: String::new(),
            hash: String::new(),
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    /// The hash as first defined: over a copy with `hash` emptied.
    fn hash_of_a_copy(record: &Record) -> String {
        let mut unhashed = record.clone();
        unhashed.hash = String::new();
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(record.prev.as_bytes());
        context.update(&serde_json::to_vec(&unhashed).unwrap());
        hex(context.finish().as_ref())
    }

    #[test]
    fn the_hash_is_the_one_over_a_copy_whatever_the_record_holds() {
        let mut r = record("/a\"b\\c\u{1}é");
        r.input = Some(serde_json::json!({"hash": "x", "n": [1, 2]}));
        r.prev = "p".repeat(64);
        for hash in ["", "ab".repeat(32).as_str(), "not hex \" \\ ,\"hash\":\"\"}"] {
            r.hash = hash.to_owned();
            assert_eq!(r.compute_hash(), hash_of_a_copy(&r), "hash {hash:?}");
        }
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn a_whole_chain_verifies_and_continues_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        let mut writer = Writer::open(&path).unwrap();
        writer.append([record("/a"), record("/b")]).unwrap();
        drop(writer);
        let mut writer = Writer::open(&path).unwrap();
        assert_eq!(writer.head().records, 2);
        writer.append([record("/c")]).unwrap();
        let mut seen = Vec::new();
        let head = verify(&path, |r| seen.push(r.path.clone().unwrap())).unwrap();
        assert_eq!(seen, ["/a", "/b", "/c"]);
        assert_eq!(head.records, 3);
        assert_eq!(&head.hash, &writer.head().hash);
    }

    #[test]
    fn edits_deletions_and_reordering_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("decisions.log");
        Writer::open(&path)
            .unwrap()
            .append(["/a", "/b", "/c", "/d"].map(record))
            .unwrap();
        let original = lines(&path);

        let mut edited = original.clone();
        edited[1] = edited[1].replace("\"ALLOW\"", "\"DENY\"");
        write(&path, &edited);
        let e = verify(&path, |_| {}).unwrap_err().to_string();
        assert!(
            e.ends_with(":2: the record does not match its hash: it was edited"),
            "{e}"
        );

        let mut deleted = original.clone();
        deleted.remove(1);
        write(&path, &deleted);
        let e = verify(&path, |_| {}).unwrap_err().to_string();
        assert!(e.contains(":2: sequence 3 where 2 was due"), "{e}");

        let mut reordered = original.clone();
        reordered.swap(1, 2);
        write(&path, &reordered);
        assert!(
            verify(&path, |_| {})
                .unwrap_err()
                .to_string()
                .contains(":2: sequence")
        );

        // Rewriting seq and prev of later records is caught by their hashes.
        let mut forged = original.clone();
        forged.remove(1);
        let mut third: Record = serde_json::from_str(&forged[1]).unwrap();
        third.seq = 2;
        let first: Record = serde_json::from_str(&forged[0]).unwrap();
        third.prev = first.hash;
        forged[1] = serde_json::to_string(&third).unwrap();
        write(&path, &forged);
        assert!(
            verify(&path, |_| {})
                .unwrap_err()
                .to_string()
                .contains(":2: the record does not match its hash")
        );

        // A broken log is not extended.
        assert!(Writer::open(&path).is_err());
        write(&path, &original[..2]);
        assert_eq!(verify(&path, |_| {}).unwrap().records, 2);
        std::fs::write(&path, format!("{}\n{}", original[0], &original[1][..20])).unwrap();
        assert!(
            verify(&path, |_| {})
                .unwrap_err()
                .to_string()
                .contains(":2: incomplete")
        );
    }
}
