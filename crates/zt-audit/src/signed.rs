//! A log's signed checkpoints: the files beside it (`LOG.checkpoints`, the
//! writer's key `LOG.key`), and verification of the log against them.
//!
//! `LOG.checkpoints` is a sequence of signed notes (c2sp.org/tlog-checkpoint),
//! each followed by a blank line, appended one at a time and synced. Verifying
//! recomputes the Merkle tree from the records and requires, for every
//! checkpoint in order of growing size, a valid signature by the pinned key
//! and the root the records give at that size — which also proves each
//! checkpoint consistent with the ones before it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cosignature::CosignatureVerifier;
use crate::merkle::Frontier;
use crate::note::{Checkpoint, MAX_NOTE_BYTES, Note, SigningKey, VerifierKey};
use crate::{AuditError, Head, read_records};

/// When a writer signs a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many uncovered records.
    pub every: u64,
    /// After this long with records uncovered (checked by [`crate::Writer::checkpoint_if_due`]).
    pub interval: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every: 1000,
            interval: Duration::from_secs(10),
        }
    }
}

/// `LOG.checkpoints`.
pub fn checkpoints_path(log: &Path) -> PathBuf {
    beside(log, "checkpoints")
}

/// `LOG.cosigned`: the latest checkpoint zt server cosigned (witnessed), as the
/// shipper got it back: the writer's note with the witness's signature lines.
pub fn cosigned_path(log: &Path) -> PathBuf {
    beside(log, "cosigned")
}

/// `LOG.key`: where a writer's signing key is kept unless given elsewhere.
pub fn default_key_path(log: &Path) -> PathBuf {
    beside(log, "key")
}

fn beside(log: &Path, suffix: &str) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Loads the signing key at `path`, or creates one there (mode 0600, named
/// `zt/decision-log/<random>`) if there is none. A key file others can read is
/// refused: whoever can read it can sign a rewritten history.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, AuditError> {
    let key_error = |what: String| AuditError::Key {
        path: path.to_owned(),
        what,
    };
    match std::fs::metadata(path) {
        Ok(_) => load_key(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut suffix = [0u8; 8];
            aws_lc_rs::rand::fill(&mut suffix)
                .map_err(|_| key_error("the system random generator failed".into()))?;
            let name = format!("zt/decision-log/{}", crate::hex(&suffix));
            let key = SigningKey::generate(&name).map_err(|e| key_error(e.to_string()))?;
            if create_key_file(path, &key)? {
                Ok(key)
            } else {
                // Another process created it first: use theirs.
                load_key(path)
            }
        }
        Err(e) => Err(AuditError::io(path)(e)),
    }
}

/// Loads a signing key file (`PRIVATE+KEY+…`), which must not be readable by others.
pub fn load_key(path: &Path) -> Result<SigningKey, AuditError> {
    let key_error = |what: String| AuditError::Key {
        path: path.to_owned(),
        what,
    };
    let file = File::open(path).map_err(AuditError::io(path))?;
    let mode = file
        .metadata()
        .map_err(AuditError::io(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(key_error(format!(
            "mode {:04o} lets other users use the decision log's signing key (chmod 600 it, or make a new one)",
            mode & 0o7777
        )));
    }
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(AuditError::io(path))?;
    SigningKey::parse(&text).map_err(|e| key_error(e.to_string()))
}

/// Writes a new key file atomically, 0600: a synced temporary file linked into
/// place, which fails rather than replace a key that appeared meanwhile.
/// Returns whether this key is the one in place.
pub fn create_key_file(path: &Path, key: &SigningKey) -> Result<bool, AuditError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(format!("{}\n", key.to_secret_text()).as_bytes())?;
            file.sync_all()
        });
    let linked = written.and_then(|()| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(dir) = File::open(dir)
            {
                let _ = dir.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(AuditError::io(path)(e)),
    }
}

/// A note as stored, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredNote {
    /// 1-based.
    pub line: usize,
    /// The note, signatures included.
    pub note: String,
}

/// The notes of a checkpoints file; `None` if there is no such file.
pub fn read_checkpoints(path: &Path) -> Result<Option<Vec<StoredNote>>, AuditError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io(path)(e)),
    };
    let malformed = |line: usize, number: usize, what: &str| AuditError::Checkpoint {
        path: path.to_owned(),
        line,
        number,
        what: what.to_owned(),
    };
    let mut reader = BufReader::new(file);
    let mut notes = Vec::new();
    let mut current = String::new();
    let (mut start, mut signatures) = (0, false);
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_NOTE_BYTES as u64 + 1)
            .read_line(&mut line)
            .map_err(AuditError::io(path))?;
        if read == 0 {
            break;
        }
        number += 1;
        if !line.ends_with('\n') {
            return Err(malformed(
                number,
                notes.len() + 1,
                "incomplete last line (no newline)",
            ));
        }
        if current.is_empty() {
            start = number;
        }
        if current.len() + line.len() > MAX_NOTE_BYTES {
            return Err(malformed(
                start,
                notes.len() + 1,
                "longer than a checkpoint can be",
            ));
        }
        match (line.as_str(), signatures) {
            ("\n", false) if current.is_empty() => {
                return Err(malformed(
                    number,
                    notes.len() + 1,
                    "a blank line where a checkpoint was due",
                ));
            }
            ("\n", false) => signatures = true,
            ("\n", true) => {
                notes.push(StoredNote {
                    line: start,
                    note: std::mem::take(&mut current),
                });
                signatures = false;
                continue;
            }
            _ => {}
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        return Err(malformed(
            start,
            notes.len() + 1,
            "incomplete: the file ends before the blank line after its signatures",
        ));
    }
    Ok(Some(notes))
}

/// What verifying a log and its checkpoints found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The chain's head.
    pub head: Head,
    /// The Merkle tree over every record.
    pub tree: Frontier,
    /// Whether `LOG.checkpoints` exists.
    pub checkpoints_file: bool,
    /// Checkpoints checked (their signatures too, if a key was given).
    pub checkpoints: usize,
    /// Records the last checkpoint covers.
    pub covered: u64,
}

/// Verifies a log's chain and its checkpoints: each must be signed by `key`
/// (when given; otherwise only their roots are checked, which anyone who can
/// write both files can forge), name it as origin, grow in size, and carry the
/// root the log's records give at its size. The error names the first record
/// or checkpoint that fails.
pub fn verify(
    log: &Path,
    key: Option<&VerifierKey>,
    mut visit: impl FnMut(&crate::Record),
) -> Result<Verified, AuditError> {
    let path = checkpoints_path(log);
    let notes = read_checkpoints(&path)?;
    let checkpoints_file = notes.is_some();
    let mut checkpoints = Vec::new();
    for (index, stored) in notes.unwrap_or_default().into_iter().enumerate() {
        let failed = |what: String| AuditError::Checkpoint {
            path: path.clone(),
            line: stored.line,
            number: index + 1,
            what,
        };
        let text = match key {
            Some(key) => key.verify(&stored.note),
            None => Note::parse(&stored.note).map(|note| note.text),
        }
        .map_err(|e| failed(e.to_string()))?;
        let checkpoint = Checkpoint::parse(text).map_err(|e| failed(e.to_string()))?;
        check_origin(&checkpoint, key).map_err(failed)?;
        if let Some((_, _, before)) = checkpoints.last()
            && checkpoint.size <= *before
        {
            return Err(failed(format!(
                "covers {} records, after a checkpoint of {before}: checkpoints out of order",
                checkpoint.size
            )));
        }
        checkpoints.push((stored.line, checkpoint.root, checkpoint.size));
    }

    let mut tree = Frontier::default();
    let mut pending = checkpoints.iter().enumerate().peekable();
    let mismatch = |number: usize, line: usize, size: u64| AuditError::Checkpoint {
        path: path.clone(),
        line,
        number: number + 1,
        what: format!(
            "its root hash is not the one of the log's first {size} records: a record among them was changed, \
             and the chain recomputed to hide it"
        ),
    };
    // A checkpoint of the empty log.
    if let Some((number, (line, root, 0))) = pending.peek() {
        if *root != tree.root() {
            return Err(mismatch(*number, *line, 0));
        }
        pending.next();
    }
    let head = read_records(log, |record| {
        tree.push(&record.leaf().unwrap_or_default());
        visit(record);
        if let Some((number, (line, root, size))) = pending.peek()
            && *size == tree.size()
        {
            if *root != tree.root() {
                return Err(mismatch(*number, *line, *size));
            }
            pending.next();
        }
        Ok(())
    })?;
    if let Some((number, (line, _, size))) = pending.next() {
        return Err(AuditError::Checkpoint {
            path: path.clone(),
            line: *line,
            number: number + 1,
            what: format!(
                "covers {size} records, but the log holds {}: records were cut off its end",
                head.records
            ),
        });
    }
    Ok(Verified {
        head,
        tree,
        checkpoints_file,
        checkpoints: checkpoints.len(),
        covered: checkpoints.last().map_or(0, |(_, _, size)| *size),
    })
}

/// What a witness's cosignature vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    /// The witness's key.
    pub witness: String,
    /// Records the cosigned checkpoint covers.
    pub size: u64,
    /// When it was cosigned, Unix seconds.
    pub time: u64,
}

/// Verifies a log as [`verify`] does, and the checkpoint in `LOG.cosigned`:
/// cosigned by `witness`, signed by `key` (when given) with its origin, and
/// carrying the root the log's first records give at its size. A log
/// rewritten after the witness saw it fails here even when every checkpoint
/// in `LOG.checkpoints` was signed again by the writer.
pub fn verify_witnessed(
    log: &Path,
    key: Option<&VerifierKey>,
    witness: &CosignatureVerifier,
    mut visit: impl FnMut(&crate::Record),
) -> Result<(Verified, Witnessed), AuditError> {
    let path = cosigned_path(log);
    let failed = |what: String| AuditError::Witness {
        path: path.clone(),
        what,
    };
    let note = match File::open(&path) {
        Ok(file) => {
            let mut note = String::new();
            file.take(MAX_NOTE_BYTES as u64 + 1)
                .read_to_string(&mut note)
                .map_err(AuditError::io(&path))?;
            note
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(failed(
                "missing: no checkpoint of this log was cosigned (is it shipped to zt server through zt agent?)"
                    .into(),
            ));
        }
        Err(e) => return Err(AuditError::io(&path)(e)),
    };
    let cosigned = witness.verify(&note).map_err(|e| failed(e.to_string()))?;
    if let Some(key) = key {
        key.verify(&note).map_err(|e| failed(e.to_string()))?;
    }
    let checkpoint = Checkpoint::parse(cosigned.text).map_err(|e| failed(e.to_string()))?;
    check_origin(&checkpoint, key).map_err(failed)?;
    let mut tree = Frontier::default();
    let mut root_at_size = (checkpoint.size == 0).then(|| tree.root());
    let verified = verify(log, key, |record| {
        tree.push(&record.leaf().unwrap_or_default());
        if tree.size() == checkpoint.size {
            root_at_size = Some(tree.root());
        }
        visit(record);
    })?;
    match root_at_size {
        None => Err(failed(format!(
            "the cosigned checkpoint covers {} records, but the log holds {}: records were cut off its end",
            checkpoint.size, verified.head.records
        ))),
        Some(root) if root != checkpoint.root => Err(failed(format!(
            "the root hash {} cosigned for the first {} records is not the log's: the log was rewritten \
             after zt server witnessed it",
            witness.name(),
            checkpoint.size
        ))),
        Some(_) => Ok((
            verified,
            Witnessed {
                witness: witness.to_string(),
                size: checkpoint.size,
                time: cosigned.time,
            },
        )),
    }
}

/// A checkpoint signed by `key` must name the key's log as its origin.
fn check_origin(checkpoint: &Checkpoint, key: Option<&VerifierKey>) -> Result<(), String> {
    match key {
        Some(key) if checkpoint.origin != key.name() => Err(format!(
            "origin {:?} is not the key's name {:?}",
            checkpoint.origin,
            key.name()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
    use super::*;
    use crate::Writer;
    use crate::tests::record;

    fn policy(every: u64) -> CheckpointPolicy {
        CheckpointPolicy {
            every,
            interval: Duration::from_secs(3600),
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_signed_log_verifies_and_reopens_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.log");
        let key = load_or_create_key(&default_key_path(&log)).unwrap();
        let verifier = key.verifier().clone();
        let mut writer = Writer::open_signed(&log, key, policy(2)).unwrap();
        writer.append(["/a", "/b", "/c"].map(record)).unwrap();
        drop(writer);
        // Three records: one checkpoint at 3 (every 2, then none due), none added on drop.
        let verified = verify(&log, Some(&verifier), |_| {}).unwrap();
        assert_eq!((verified.checkpoints, verified.covered), (1, 3));

        let key = load_or_create_key(&default_key_path(&log)).unwrap();
        assert_eq!(key.verifier(), &verifier);
        let mut writer = Writer::open_signed(&log, key, policy(100)).unwrap();
        writer.append([record("/d")]).unwrap();
        drop(writer);
        // The clean stop covered the fourth.
        let verified = verify(&log, Some(&verifier), |_| {}).unwrap();
        assert_eq!(
            (verified.head.records, verified.checkpoints, verified.covered),
            (4, 2, 4)
        );
        for file in [log.clone(), checkpoints_path(&log), default_key_path(&log)] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[test]
    fn records_a_crash_left_uncovered_are_reported_when_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.log");
        let key_path = default_key_path(&log);
        let mut writer =
            Writer::open_signed(&log, load_or_create_key(&key_path).unwrap(), policy(2)).unwrap();
        writer.append(["/a", "/b", "/c"].map(record)).unwrap();
        writer.append([record("/d")]).unwrap();
        // A crash: no clean stop, so no last checkpoint.
        std::mem::forget(writer);
        let writer = Writer::open_signed(&log, load_or_create_key(&key_path).unwrap(), policy(2)).unwrap();
        assert_eq!(writer.found_uncovered(), 1);
        drop(writer);
        let verified = verify(&log, Some(load_key(&key_path).unwrap().verifier()), |_| {}).unwrap();
        assert_eq!((verified.checkpoints, verified.covered), (2, 4));
    }

    #[test]
    fn another_writers_key_or_a_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.log");
        let key = load_or_create_key(&default_key_path(&log)).unwrap();
        Writer::open_signed(&log, key, policy(1))
            .unwrap()
            .append([record("/a")])
            .unwrap();
        let other = SigningKey::generate("zt/decision-log/other").unwrap();
        let e = Writer::open_signed(&log, other, policy(1))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("decisions.log.checkpoints:1: checkpoint 1: not signed by zt/decision-log/other+"),
            "{e}"
        );

        let key_path = default_key_path(&log);
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = load_or_create_key(&key_path).unwrap_err().to_string();
        assert!(
            e.contains("decisions.log.key: mode 0640 lets other users use"),
            "{e}"
        );
    }

    #[test]
    fn a_witnessed_checkpoint_exposes_a_log_rewritten_and_signed_again_by_its_writer() {
        use crate::cosignature::CosignerKey;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.log");
        let key = load_or_create_key(&default_key_path(&log)).unwrap();
        let verifier = key.verifier().clone();
        let witness = CosignerKey::generate("example.org/zt-server/witness").unwrap();
        let mut writer = Writer::open_signed(&log, key, policy(3)).unwrap();
        writer.append(["/a", "/b", "/c"].map(record)).unwrap();
        drop(writer);
        let e = verify_witnessed(&log, Some(&verifier), witness.verifier(), |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("decisions.log.cosigned: missing: no checkpoint of this log was cosigned (is it shipped to zt server through zt agent?)"), "{e}");

        // The witness cosigns the checkpoint of 3; then the writer adds one more.
        let note = read_checkpoints(&checkpoints_path(&log)).unwrap().unwrap()[0]
            .note
            .clone();
        let text = verifier.verify(&note).unwrap();
        let cosigned = format!("{note}{}", witness.cosign(text, 1_700_000_000).unwrap());
        std::fs::write(cosigned_path(&log), &cosigned).unwrap();
        let key = load_key(&default_key_path(&log)).unwrap();
        Writer::open_signed(&log, key, policy(3))
            .unwrap()
            .append([record("/d")])
            .unwrap();
        let (verified, witnessed) =
            verify_witnessed(&log, Some(&verifier), witness.verifier(), |_| {}).unwrap();
        assert_eq!(
            (verified.head.records, witnessed.size, witnessed.time),
            (4, 3, 1_700_000_000)
        );

        // The writer rewrites record 2 and signs every checkpoint again: its own
        // key is satisfied, the witness's cosignature is not.
        let forged = dir.path().join("forged.log");
        std::fs::copy(default_key_path(&log), default_key_path(&forged)).unwrap();
        let mut rewriter =
            Writer::open_signed(&forged, load_key(&default_key_path(&forged)).unwrap(), policy(3)).unwrap();
        let mut edited = record("/b");
        edited.decision = "DENY".into();
        rewriter
            .append([record("/a"), edited, record("/c"), record("/d")])
            .unwrap();
        drop(rewriter);
        verify(&forged, Some(&verifier), |_| {}).unwrap();
        std::fs::write(cosigned_path(&forged), &cosigned).unwrap();
        let e = verify_witnessed(&forged, Some(&verifier), witness.verifier(), |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("forged.log.cosigned: the root hash example.org/zt-server/witness cosigned for the first 3 records is not the log's"), "{e}");

        // A log cut shorter than the witnessed size, or another witness's key.
        let short = dir.path().join("short.log");
        let lines: Vec<&str> = std::fs::read_to_string(&log).unwrap().leak().lines().collect();
        std::fs::write(&short, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        std::fs::write(cosigned_path(&short), &cosigned).unwrap();
        let e = verify_witnessed(&short, None, witness.verifier(), |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("covers 3 records, but the log holds 2"), "{e}");
        let other = CosignerKey::generate("example.org/zt-server/witness").unwrap();
        let e = verify_witnessed(&log, None, other.verifier(), |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("decisions.log.cosigned: not cosigned by example.org/zt-server/witness+"),
            "{e}"
        );
    }

    #[test]
    fn existing_logs_are_narrowed_to_0600() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("decisions.log");
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
        Writer::open(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
    }

    #[test]
    fn malformed_checkpoint_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.checkpoints");
        std::fs::write(&path, "o\n1\nAAAA\n\n\u{2014} o AAAA\n").unwrap();
        let e = read_checkpoints(&path).unwrap_err().to_string();
        assert!(e.ends_with("x.checkpoints:1: checkpoint 1: incomplete: the file ends before the blank line after its signatures"), "{e}");
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_checkpoints(&path)
                .unwrap_err()
                .to_string()
                .contains(":1: checkpoint 1: a blank line")
        );
        std::fs::write(&path, "a\n\n\u{2014} o AAAA\n\nb\n\n\u{2014} o BBBB\n\n").unwrap();
        let notes = read_checkpoints(&path).unwrap().unwrap();
        assert_eq!(notes.iter().map(|n| n.line).collect::<Vec<_>>(), [1, 5]);
        assert_eq!(notes[1].note, "b\n\n\u{2014} o BBBB\n");
    }
}
