//! Unix workload attestation: who is calling, from the kernel alone.
//!
//! The caller's uid, gid and pid come from the Unix socket's peer credentials
//! (`SO_PEERCRED`), which the kernel fills in at `connect()`; nothing the caller
//! sends is consulted. The pid leads to `/proc/<pid>` for the executable (path and
//! SHA-256) and the supplementary groups. A pid can be reused by another process
//! while we read, so the process's start time is read before and after: if it
//! changed, the attestation fails rather than describe the wrong process.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Executables larger than this are not hashed (no `unix:sha256` selector).
const MAX_HASHED_BYTES: u64 = 1 << 30;
/// How many executables' hashes are remembered.
const HASH_CACHE_ENTRIES: usize = 256;

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The connection carries no peer credentials (not a Unix socket?).
    #[error("the connection carries no peer credentials")]
    NoCredentials,
    /// The kernel gave no pid (a peer in another pid namespace).
    #[error("the caller's pid is not visible from the agent's pid namespace")]
    NoPid,
    /// `/proc/<pid>` could not be read: the process is gone, or not visible.
    #[error("reading {path}: {source}")]
    Proc {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The pid now names another process than the one that connected.
    #[error("process {0} exited or was replaced while it was being attested")]
    Replaced(i32),
    /// `/proc` disagrees with the socket's credentials.
    #[error("process {pid} runs as uid {proc_uid}, but connected as uid {socket_uid}")]
    UidMismatch {
        /// The pid.
        pid: i32,
        /// Effective uid in `/proc/<pid>/status`.
        proc_uid: u32,
        /// uid of the socket's peer credentials.
        socket_uid: u32,
    },
}

/// The kernel's account of a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Effective user ID at connect time.
    pub uid: u32,
    /// Effective group ID at connect time.
    pub gid: u32,
    /// Process ID, if visible from this pid namespace.
    pub pid: Option<i32>,
}

/// An attested workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its pid when attested.
    pub pid: i32,
    /// Its selectors, `unix:<kind>:<value>`, sorted.
    pub selectors: Vec<String>,
}

impl Workload {
    /// Whether this workload has every one of `selectors` (an entry matches a
    /// workload when all the entry's selectors are among the workload's; an entry
    /// without selectors matches nothing).
    pub fn matches(&self, selectors: &[String]) -> bool {
        !selectors.is_empty() && selectors.iter().all(|s| self.selectors.binary_search(s).is_ok())
    }
}

/// A file's identity and version: device, inode, size, mtime and its nanoseconds.
type FileKey = (u64, u64, u64, i64, i64);

/// Attests callers; remembers executables' hashes by file identity.
#[derive(Default)]
pub struct UnixAttestor {
    /// SHA-256 by identity of the executable file.
    hashes: Mutex<HashMap<FileKey, String>>,
}

impl UnixAttestor {
    /// The selectors of the process behind `peer`.
    pub fn attest(&self, peer: PeerCredentials) -> Result<Workload, AttestError> {
        let pid = peer.pid.ok_or(AttestError::NoPid)?;
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let started = start_time(&proc_dir)?;

        let status = read_proc(&proc_dir.join("status"))?;
        let proc_uid = status_ids(&status, "Uid:").get(1).copied();
        if proc_uid != Some(peer.uid) {
            return Err(AttestError::UidMismatch {
                pid,
                proc_uid: proc_uid.unwrap_or(u32::MAX),
                socket_uid: peer.uid,
            });
        }
        let supplementary = status_ids(&status, "Groups:");

        let mut selectors = vec![format!("unix:uid:{}", peer.uid), format!("unix:gid:{}", peer.gid)];
        let users = fs::read_to_string("/etc/passwd").unwrap_or_default();
        let groups = fs::read_to_string("/etc/group").unwrap_or_default();
        if let Some(user) = name_of(&users, peer.uid) {
            selectors.push(format!("unix:user:{user}"));
        }
        if let Some(group) = name_of(&groups, peer.gid) {
            selectors.push(format!("unix:group:{group}"));
        }
        for gid in supplementary {
            selectors.push(format!("unix:supplementary_gid:{gid}"));
            if let Some(group) = name_of(&groups, gid) {
                selectors.push(format!("unix:supplementary_group:{group}"));
            }
        }
        // The executable: readable for processes of any user when the agent runs as
        // root; otherwise only for its own. Without it there are simply no path and
        // sha256 selectors, so entries that need them do not match.
        let exe = proc_dir.join("exe");
        match fs::read_link(&exe) {
            Ok(path) => {
                selectors.push(format!("unix:path:{}", path.display()));
                match self.sha256(&exe) {
                    Ok(Some(hash)) => selectors.push(format!("unix:sha256:{hash}")),
                    Ok(None) => {}
                    Err(e) => tracing::debug!(pid, error = %e, "could not hash the caller's executable"),
                }
            }
            Err(e) => tracing::debug!(pid, error = %e, "could not read the caller's executable path"),
        }

        if start_time(&proc_dir)? != started {
            return Err(AttestError::Replaced(pid));
        }
        selectors.sort();
        selectors.dedup();
        Ok(Workload { pid, selectors })
    }

    /// The SHA-256 of the executable `/proc/<pid>/exe` links to (opened through
    /// the link, so it is the file the process runs even if its path was replaced).
    fn sha256(&self, exe: &Path) -> Result<Option<String>, std::io::Error> {
        let mut file = File::open(exe)?;
        let meta = file.metadata()?;
        if meta.len() > MAX_HASHED_BYTES {
            return Ok(None);
        }
        let key = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some(hash) = self.hashes.lock().ok().and_then(|h| h.get(&key).cloned()) {
            return Ok(Some(hash));
        }
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            context.update(buf.get(..n).unwrap_or_default());
        }
        let hash = zt_identity::x509::hex_compact(context.finish().as_ref());
        if let Ok(mut hashes) = self.hashes.lock() {
            if hashes.len() >= HASH_CACHE_ENTRIES {
                hashes.clear();
            }
            hashes.insert(key, hash.clone());
        }
        Ok(Some(hash))
    }
}

fn read_proc(path: &Path) -> Result<String, AttestError> {
    fs::read_to_string(path).map_err(|source| AttestError::Proc {
        path: path.to_owned(),
        source,
    })
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks
/// since boot. Fields are counted after the command name, which may contain
/// spaces and parentheses, so parsing starts after its last `)`.
fn start_time(proc_dir: &Path) -> Result<String, AttestError> {
    let path = proc_dir.join("stat");
    let stat = read_proc(&path)?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .map(str::to_owned)
        .ok_or_else(|| AttestError::Proc {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no start time"),
        })
}

/// The numbers on the line of `/proc/<pid>/status` that starts with `key`.
fn status_ids(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

/// The name with numeric ID `id` in an `/etc/passwd` or `/etc/group` style file.
fn name_of(file: &str, id: u32) -> Option<&str> {
    file.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let numeric: u32 = fields.nth(1)?.parse().ok()?;
        (numeric == id && !name.is_empty()).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_third_field() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nbad line\nsvc:x:1001:1001::/home/svc:/bin/sh\n";
        assert_eq!(name_of(passwd, 0), Some("root"));
        assert_eq!(name_of(passwd, 1001), Some("svc"));
        assert_eq!(name_of(passwd, 7), None);
    }

    #[test]
    fn status_lines_give_ids() {
        let status = "Name:\tzt\nUid:\t1000\t1001\t1001\t1001\nGroups:\t4 24 27 \n";
        assert_eq!(status_ids(status, "Uid:"), [1000, 1001, 1001, 1001]);
        assert_eq!(status_ids(status, "Groups:"), [4, 24, 27]);
        assert!(status_ids(status, "Gid:").is_empty());
    }

    #[test]
    fn this_process_attests_as_itself() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let uid = status_ids(&status, "Uid:")[1];
        let gid = status_ids(&status, "Gid:")[1];
        let attestor = UnixAttestor::default();
        let workload = attestor
            .attest(PeerCredentials {
                uid,
                gid,
                pid: Some(pid),
            })
            .unwrap();
        let exe = fs::read_link("/proc/self/exe").unwrap();
        assert!(workload.selectors.contains(&format!("unix:uid:{uid}")));
        assert!(
            workload
                .selectors
                .contains(&format!("unix:path:{}", exe.display()))
        );
        let hash = workload
            .selectors
            .iter()
            .find_map(|s| s.strip_prefix("unix:sha256:"))
            .unwrap();
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(&fs::read(&exe).unwrap());
        let expected: String = context
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hash, expected, "plain lowercase hex, as SPIRE's unix:sha256");
        // A uid the process does not run as is refused, not believed.
        let lie = attestor.attest(PeerCredentials {
            uid: uid + 1,
            gid,
            pid: Some(pid),
        });
        assert!(matches!(lie, Err(AttestError::UidMismatch { .. })), "{lie:?}");
        assert!(matches!(
            attestor.attest(PeerCredentials { uid, gid, pid: None }),
            Err(AttestError::NoPid)
        ));
    }

    #[test]
    fn matching_needs_every_entry_selector() {
        let workload = Workload {
            pid: 1,
            selectors: vec!["unix:gid:0".into(), "unix:uid:0".into()],
        };
        assert!(workload.matches(&["unix:uid:0".to_owned()]));
        assert!(workload.matches(&["unix:uid:0".to_owned(), "unix:gid:0".to_owned()]));
        assert!(!workload.matches(&["unix:uid:0".to_owned(), "unix:gid:1".to_owned()]));
        assert!(!workload.matches(&[]));
    }
}
