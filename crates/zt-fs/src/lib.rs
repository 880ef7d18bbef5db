//! Files that hold secrets and records, and the paths that lead to them.
//!
//! Every file zt writes with a key, a token, a datastore or a decision log goes
//! through here, so that its mode is the one asked for whatever the umask, and
//! every directory that holds them is this user's alone. `trust` checks a path
//! that another user could otherwise swap (the Workload API socket).

#![forbid(unsafe_code)]

pub mod trust;

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

pub use trust::{Owners, check_path};

/// Mode of files holding secrets or records: keys, tokens, datastores, logs.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of files holding public material: certificates, bundles.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories holding secrets or records.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Why a file or directory could not be written, opened or trusted; every
/// variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file or directory that must be this user's belongs to another.
    #[error("{path}: owned by uid {uid} (mode {mode:o}), not by this user (uid {own}); not using it")]
    NotOwn {
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
        /// This process's effective uid.
        own: u32,
    },
    /// Not the kind of file expected (a directory, a regular file).
    #[error("{path}: not a {expected}")]
    Kind {
        /// The path.
        path: PathBuf,
        /// What it should have been.
        expected: &'static str,
    },
    /// A path that someone other than root or this user could swap.
    #[error("{reason}")]
    Untrusted {
        /// The directory or entry at fault.
        path: PathBuf,
        /// Why, naming `path` with its owner or mode.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// This process's effective uid, from the kernel (`/proc/self/status`, without
/// unsafe code).
pub fn euid() -> Result<u32, FsError> {
    let path = Path::new("/proc/self/status");
    let status = fs::read_to_string(path).map_err(io(path))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| FsError::Io {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no effective uid on a Uid line"),
        })
}

/// Makes `dir` (and any missing parent) mode 0700, or checks the one that
/// exists: a directory of this user's with looser permissions is tightened to
/// 0700 (its old mode is returned, for the caller to say so); one of another
/// user's is refused, naming its owner and mode.
pub fn private_dir(dir: &Path) -> Result<Option<u32>, FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(io(dir))?;
    let meta = fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(FsError::Kind {
            path: dir.to_owned(),
            expected: "directory",
        });
    }
    tighten(dir, &meta, PRIVATE_DIR_MODE, |mode| {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))
    })
}

/// Opens `path` with `options`, creating it mode 0600 whatever the umask; an
/// existing file of this user's with looser permissions is tightened to 0600,
/// one of another user's is refused. For files appended to or kept open (logs,
/// locks, datastores); files written whole go through [`write_atomically`].
pub fn open_private(path: &Path, options: &mut OpenOptions) -> Result<File, FsError> {
    let file = options.mode(PRIVATE_MODE).open(path).map_err(io(path))?;
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(FsError::Kind {
            path: path.to_owned(),
            expected: "regular file",
        });
    }
    tighten(path, &meta, PRIVATE_MODE, |mode| {
        file.set_permissions(fs::Permissions::from_mode(mode))
    })?;
    Ok(file)
}

/// Tightens an existing file or directory to `mode` if this user owns it and
/// others may do more than `mode` lets them; refuses one of another user's.
/// Returns the old permission bits when it changed them.
fn tighten(
    path: &Path,
    meta: &fs::Metadata,
    mode: u32,
    chmod: impl FnOnce(u32) -> std::io::Result<()>,
) -> Result<Option<u32>, FsError> {
    let own = euid()?;
    let old = meta.mode() & 0o7777;
    if meta.uid() != own {
        return Err(FsError::NotOwn {
            path: path.to_owned(),
            uid: meta.uid(),
            mode: old,
            own,
        });
    }
    if old & !mode == 0 {
        return Ok(None);
    }
    chmod(mode).map_err(io(path))?;
    Ok(Some(old))
}

/// Writes every `(path, contents, mode)` so that each file is either its old self
/// or entirely new: temporary files first, each created with exactly `mode`
/// (whatever the umask) and synced, then renamed over the targets.
pub fn write_atomically(files: &[(PathBuf, Vec<u8>, u32)]) -> Result<(), FsError> {
    let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
    let result = files.iter().try_for_each(|(path, contents, mode)| {
        let temp = temp_path(path);
        temps.push(temp.clone());
        // Errors name the file the caller asked for, not the temporary one.
        write_synced(&temp, contents, *mode).map_err(io(path))
    });
    if let Err(e) = result {
        for temp in &temps {
            let _ = fs::remove_file(temp);
        }
        return Err(e);
    }
    for ((path, _, _), temp) in files.iter().zip(&temps) {
        fs::rename(temp, path).map_err(io(path))?;
    }
    for dir in files.iter().filter_map(|(path, _, _)| path.parent()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        // Make the renames durable; a directory that cannot be opened is not an error here.
        if let Ok(handle) = File::open(dir) {
            let _ = handle.sync_all();
        }
    }
    Ok(())
}

fn write_synced(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The umask took bits off `mode` at creation; the file gets exactly `mode`.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).map(|m| m.mode() & 0o7777).unwrap_or(0)
    }

    #[test]
    fn atomic_writes_get_exactly_their_mode() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let key = tmp.path().join("k.key");
        let cert = tmp.path().join("c.crt");
        // A looser file in the way is replaced by one with the mode asked for.
        fs::write(&key, "old")?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o666))?;
        write_atomically(&[
            (key.clone(), b"secret".to_vec(), PRIVATE_MODE),
            (cert.clone(), b"public".to_vec(), PUBLIC_MODE),
        ])?;
        assert_eq!((mode(&key), mode(&cert)), (0o600, 0o644));
        assert_eq!(fs::read_to_string(&key)?, "secret");
        assert_eq!(fs::read_dir(tmp.path())?.count(), 2, "no temporary file left");
        Ok(())
    }

    #[test]
    fn failed_write_leaves_targets_untouched() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let good = tmp.path().join("a.crt");
        fs::write(&good, "old")?;
        let missing_dir = tmp.path().join("no-such-dir").join("b.key");
        let err = write_atomically(&[
            (good.clone(), b"new".to_vec(), PUBLIC_MODE),
            (missing_dir.clone(), b"k".to_vec(), PRIVATE_MODE),
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.starts_with(&missing_dir.display().to_string()), "{err}");
        assert_eq!(fs::read_to_string(&good)?, "old");
        assert_eq!(
            fs::read_dir(tmp.path())?.count(),
            1,
            "temporary files are cleaned up"
        );
        Ok(())
    }

    #[test]
    fn private_dir_creates_tightens_and_refuses() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let new = tmp.path().join("a").join("b");
        assert_eq!(private_dir(&new)?, None);
        assert_eq!((mode(&new), mode(&tmp.path().join("a"))), (0o700, 0o700));

        let loose = tmp.path().join("loose");
        fs::create_dir(&loose)?;
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o755))?;
        assert_eq!(private_dir(&loose)?, Some(0o755));
        assert_eq!(mode(&loose), 0o700);

        let file = tmp.path().join("file");
        fs::write(&file, "")?;
        assert!(matches!(
            private_dir(&file),
            Err(FsError::Io { .. } | FsError::Kind { .. })
        ));

        if euid()? == 0 {
            let theirs = tmp.path().join("theirs");
            fs::create_dir(&theirs)?;
            fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755))?;
            std::os::unix::fs::chown(&theirs, Some(65534), None)?;
            let err = private_dir(&theirs)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert_eq!(
                err,
                format!(
                    "{}: owned by uid 65534 (mode 755), not by this user (uid 0); not using it",
                    theirs.display()
                )
            );
            assert_eq!(mode(&theirs), 0o755, "another user's directory is left alone");
        }
        Ok(())
    }

    #[test]
    fn open_private_creates_and_tightens() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let log = tmp.path().join("decisions.log");
        let mut append = OpenOptions::new();
        append.create(true).append(true);
        open_private(&log, &mut append)?;
        assert_eq!(mode(&log), 0o600);

        fs::set_permissions(&log, fs::Permissions::from_mode(0o644))?;
        fs::write(&log, "kept\n")?;
        let mut file = open_private(&log, &mut append)?;
        file.write_all(b"more\n")?;
        assert_eq!(mode(&log), 0o600);
        assert_eq!(fs::read_to_string(&log)?, "kept\nmore\n");

        let err = open_private(tmp.path(), OpenOptions::new().read(true))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(err, format!("{}: not a regular file", tmp.path().display()));
        Ok(())
    }

    #[test]
    fn euid_is_the_owner_of_what_this_process_creates() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        assert_eq!(euid()?, fs::metadata(tmp.path())?.uid());
        Ok(())
    }
}
