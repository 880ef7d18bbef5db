//! The decision log: every authorization decision as one JSON line, chained by
//! hashes so that no one can quietly alter it.
//!
//! Each record carries its sequence number, the hash of the record before it
//! (`prev`) and its own hash: SHA-256 over `prev` and the record's canonical JSON
//! (every field but `hash`, in declaration order). Editing a record breaks its
//! hash; deleting or reordering one breaks the next record's `prev` and the
//! sequence. Cutting records off the end leaves a valid shorter chain: compare
//! the head (`zt audit verify` prints it) with one kept elsewhere — the server's
//! copy, once records are shipped.

#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    /// The hash of the record before (hex).
    pub prev: String,
    /// This record's hash (hex).
    pub hash: String,
}

impl Record {
    /// The hash this record must carry: SHA-256 over `prev` and its canonical
    /// JSON with `hash` empty.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash = String::new();
        // A struct of strings and numbers always serializes.
        let canonical = serde_json::to_vec(&unhashed).unwrap_or_default();
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(self.prev.as_bytes());
        context.update(&canonical);
        hex(context.finish().as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
/// each verified record. The error names the first line that breaks it.
pub fn verify(path: &Path, mut visit: impl FnMut(&Record)) -> Result<Head, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let broken = |line: usize, what: String| AuditError::Broken {
        path: path.to_owned(),
        line,
        what,
    };
    let reader = BufReader::new(File::open(path).map_err(io)?);
    verify_lines(reader, &mut Chain::default(), &mut visit).map_err(|e| match e {
        LineError::Io(source) => io(source),
        LineError::Broken(line, what) => broken(line, what),
    })
}

/// Why a stream of lines does not verify.
#[derive(Debug)]
pub enum LineError {
    /// Reading failed.
    Io(std::io::Error),
    /// The chain breaks at this line (1-based).
    Broken(usize, String),
}

/// Checks every record line of `reader` against `chain`, extending it.
pub fn verify_lines(
    mut reader: impl BufRead,
    chain: &mut Chain,
    visit: &mut impl FnMut(&Record),
) -> Result<Head, LineError> {
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(LineError::Io)?;
        if read == 0 {
            return Ok(chain.head().clone());
        }
        number += 1;
        if line.len() > MAX_LINE_BYTES {
            return Err(LineError::Broken(
                number,
                format!("longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if line.last() != Some(&b'\n') {
            return Err(LineError::Broken(
                number,
                "incomplete last record (no newline)".into(),
            ));
        }
        let record: Record = serde_json::from_slice(&line)
            .map_err(|e| LineError::Broken(number, format!("not a record: {e}")))?;
        chain
            .extend(&record)
            .map_err(|what| LineError::Broken(number, what))?;
        visit(&record);
    }
}

/// Appends records to a log, continuing its chain.
pub struct Writer {
    path: PathBuf,
    file: File,
    head: Head,
}

impl Writer {
    /// Opens (or creates) a log; an existing one must verify first, so that a
    /// broken chain is never extended as if it were whole.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let head = if path.exists() {
            verify(path, |_| {})?
        } else {
            Head {
                records: 0,
                hash: GENESIS.to_owned(),
            }
        };
        // A record of who did what: 0600 whatever the umask, and an existing
        // log of this user's left readable by others is tightened.
        let file = zt_fs::open_private(path, OpenOptions::new().create(true).append(true))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            head,
        })
    }

    /// The chain's head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Chains and appends records (their `seq`, `prev` and `hash` are set here),
    /// in one write.
    pub fn append(&mut self, records: impl IntoIterator<Item = Record>) -> Result<(), AuditError> {
        let mut buffer = Vec::new();
        let mut head = self.head.clone();
        for mut record in records {
            record.seq = head.records + 1;
            record.prev = head.hash.clone();
            record.hash = record.compute_hash();
            // A struct of strings and numbers always serializes.
            serde_json::to_writer(&mut buffer, &record).unwrap_or_default();
            buffer.push(b'\n');
            head = Head {
                records: record.seq,
                hash: record.hash,
            };
        }
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let before = self.file.metadata().map_err(io)?.len();
        let written = self.file.write_all(&buffer).and_then(|()| self.file.flush());
        if let Err(source) = written {
            // A record cut short (a full disk, a file-size limit) is taken
            // back: the log stays a whole chain that verifies.
            let _ = self.file.set_len(before);
            return Err(io(source));
        }
        self.head = head;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn record(path: &str) -> Record {
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
