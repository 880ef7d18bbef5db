//! Whether a path can be trusted: no one but root and the users allowed could
//! have put anything on the way to it, or could swap it later.
//!
//! OpenSSH's `StrictModes` rule, applied to every component from `/` down and
//! to every symbolic link met on the way (`lstat`, one component at a time):
//! each entry must be owned by a trusted user, and each directory must not be
//! writable by group or others — unless it is sticky (like `/tmp`), where only
//! an entry's owner may rename or remove it, so an entry owned by a trusted user
//! is safe there.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

use crate::{FsError, euid};

/// Symbolic links followed before a path is called a loop (Linux's limit).
const MAX_LINKS: usize = 40;
const STICKY: u32 = 0o1000;

/// Who may own the entries on the way to a path, besides root and this user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// No one else: for a path this process makes and serves itself (the
    /// agent's own socket), as OpenSSH's `StrictModes`.
    RootAndSelf,
    /// Also a user root gave an entry to: one owned by someone else in a
    /// directory owned by root that no one else can write, which only root
    /// could have made (`/run/zt-agent`, made by systemd for the agent's user);
    /// that user is then trusted below it. For a client of another user's
    /// socket.
    GrantedByRoot,
}

/// Checks every component of `path` (made absolute against the current
/// directory) from `/` down, following symbolic links; the last component may
/// not exist yet (a socket about to be bound). The error names the directory
/// or entry at fault with its owner or mode.
pub fn check_path(path: &Path, owners: Owners) -> Result<(), FsError> {
    let own = euid()?;
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .map_err(|source| FsError::Io {
                path: path.to_owned(),
                source,
            })?
            .join(path)
    };
    let mut trusted = vec![0, own];
    let root = Path::new("/");
    let mut dir = root.to_owned();
    let mut dir_meta = lstat(root)?;
    check_root(&dir_meta, &trusted)?;
    let mut pending: VecDeque<OsString> = names(&absolute);
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            // The directory above one already checked was checked too.
            dir.pop();
            dir_meta = lstat(&dir)?;
            continue;
        }
        let entry = dir.join(&name);
        let meta = match fs::symlink_metadata(&entry) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && pending.is_empty() => {
                // Not made yet: the directory it will be made in must keep it.
                return check_writers(&dir, &dir_meta, &entry).map(|_| ());
            }
            Err(source) => return Err(FsError::Io { path: entry, source }),
        };
        check_entry(&dir, &dir_meta, &entry, &meta, &mut trusted, owners)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(FsError::Untrusted {
                    reason: format!("{} has more than {MAX_LINKS} symbolic links", absolute.display()),
                    path: absolute,
                });
            }
            let target = fs::read_link(&entry).map_err(|source| FsError::Io {
                path: entry.clone(),
                source,
            })?;
            for name in names(&target).into_iter().rev() {
                pending.push_front(name);
            }
            if target.is_absolute() {
                dir = root.to_owned();
                dir_meta = lstat(root)?;
            }
            continue;
        }
        if !pending.is_empty() && !meta.is_dir() {
            return Err(FsError::Kind {
                path: entry,
                expected: "directory",
            });
        }
        dir = entry;
        dir_meta = meta;
    }
    Ok(())
}

/// The names of `path`'s components, `.` and the root left out.
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn lstat(path: &Path) -> Result<fs::Metadata, FsError> {
    fs::symlink_metadata(path).map_err(|source| FsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn check_root(meta: &fs::Metadata, trusted: &[u32]) -> Result<(), FsError> {
    if !trusted.contains(&meta.uid()) || meta.mode() & 0o022 != 0 {
        return Err(FsError::Untrusted {
            path: PathBuf::from("/"),
            reason: format!(
                "/ is owned by uid {} with mode {:o}",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// Refuses `dir` if users other than its owner may write to it and it is not
/// sticky; returns whether it is shared (sticky and writable by others), where
/// only entries of trusted users are safe.
fn check_writers(dir: &Path, dir_meta: &fs::Metadata, entry: &Path) -> Result<bool, FsError> {
    let dir_mode = dir_meta.mode() & 0o7777;
    if dir_mode & 0o022 == 0 {
        return Ok(false);
    }
    if dir_mode & STICKY == 0 {
        return Err(FsError::Untrusted {
            path: dir.to_owned(),
            reason: format!(
                "{} is writable by {} (mode {dir_mode:o}) and not sticky, so anyone could replace {} in it",
                dir.display(),
                if dir_mode & 0o002 != 0 {
                    "others"
                } else {
                    "its group"
                },
                entry.file_name().unwrap_or_default().to_string_lossy()
            ),
        });
    }
    Ok(true)
}

/// `entry` (with `meta`, from lstat) in the checked directory `dir`.
fn check_entry(
    dir: &Path,
    dir_meta: &fs::Metadata,
    entry: &Path,
    meta: &fs::Metadata,
    trusted: &mut Vec<u32>,
    owners: Owners,
) -> Result<(), FsError> {
    let dir_mode = dir_meta.mode() & 0o7777;
    let uid = meta.uid();
    let own = trusted.get(1).copied().unwrap_or(0);
    let kind = if meta.file_type().is_symlink() {
        "symbolic link"
    } else if meta.is_dir() {
        "directory"
    } else {
        "entry"
    };
    if check_writers(dir, dir_meta, entry)? {
        // Sticky: only the entry's owner (or the directory's, or root) can
        // rename it, so it is safe if that owner is trusted — never granted.
        if !trusted.contains(&uid) {
            return Err(FsError::Untrusted {
                path: entry.to_owned(),
                reason: format!(
                    "{} is a {kind} owned by uid {uid}, not root or this user (uid {own}), in the shared directory {} (mode {dir_mode:o})",
                    entry.display(),
                    dir.display()
                ),
            });
        }
        return Ok(());
    }
    if trusted.contains(&uid) {
        return Ok(());
    }
    if owners == Owners::GrantedByRoot && dir_meta.uid() == 0 {
        trusted.push(uid);
        return Ok(());
    }
    Err(FsError::Untrusted {
        path: entry.to_owned(),
        reason: format!(
            "{} is a {kind} owned by uid {uid} (mode {:o}), not root or this user (uid {own})",
            entry.display(),
            meta.mode() & 0o7777
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt as _, symlink};

    fn chmod(path: &Path, mode: u32) -> std::io::Result<()> {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    }

    fn refusal(path: &Path, owners: Owners) -> String {
        check_path(path, owners)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn own_private_path_is_trusted() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let sock = tmp.path().join("public").join("api.sock");
        fs::create_dir(tmp.path().join("public"))?;
        check_path(&sock, Owners::RootAndSelf)?;
        // A missing directory on the way is an error; only the last may be missing.
        let err = refusal(&tmp.path().join("nope").join("api.sock"), Owners::RootAndSelf);
        assert!(err.contains("nope") && err.contains("No such file"), "{err}");
        // `..` and relative links stay inside what was checked.
        symlink("../public", tmp.path().join("public").join("up"))?;
        check_path(
            &tmp.path().join("public/up/../public/./api.sock"),
            Owners::RootAndSelf,
        )?;
        Ok(())
    }

    #[test]
    fn writable_directory_on_the_way_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let shared = tmp.path().join("shared");
        fs::create_dir_all(shared.join("public"))?;
        let sock = shared.join("public").join("api.sock");
        for (mode, who) in [(0o777, "others"), (0o775, "its group")] {
            chmod(&shared, mode)?;
            assert_eq!(
                refusal(&sock, Owners::GrantedByRoot),
                format!(
                    "{} is writable by {who} (mode {mode:o}) and not sticky, so anyone could replace public in it",
                    shared.display(),
                )
            );
        }
        // The socket itself not made yet, in a directory anyone may write.
        chmod(&shared.join("public"), 0o777)?;
        chmod(&shared, 0o755)?;
        assert!(
            refusal(&sock, Owners::RootAndSelf).starts_with(&format!(
                "{} is writable by others (mode 777)",
                shared.join("public").display()
            )),
            "{}",
            refusal(&sock, Owners::RootAndSelf)
        );
        chmod(&shared.join("public"), 0o1777)?;
        check_path(&sock, Owners::RootAndSelf)?;
        chmod(&shared.join("public"), 0o755)?;
        // Sticky, with an entry of ours under it: safe.
        chmod(&shared, 0o1777)?;
        check_path(&sock, Owners::RootAndSelf)?;
        Ok(())
    }

    #[test]
    fn entries_of_other_users() -> Result<(), Box<dyn std::error::Error>> {
        if euid()? != 0 {
            eprintln!("skipped: making files of another user needs root");
            return Ok(());
        }
        let tmp = tempfile::tempdir()?;
        let sticky = tmp.path().join("tmp");
        fs::create_dir(&sticky)?;
        chmod(&sticky, 0o1777)?;
        // A directory planted in a sticky directory by another user.
        let planted = sticky.join("zt-agent");
        fs::create_dir(&planted)?;
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534))?;
        let err = refusal(&planted.join("api.sock"), Owners::GrantedByRoot);
        assert_eq!(
            err,
            format!(
                "{} is a directory owned by uid 65534, not root or this user (uid 0), in the shared directory {} (mode 1777)",
                planted.display(),
                sticky.display()
            )
        );
        // A symbolic link in the sticky directory: ours is followed, another user's refused.
        let target = tmp.path().join("real");
        fs::create_dir(&target)?;
        let link = sticky.join("link");
        symlink(&target, &link)?;
        check_path(&link.join("api.sock"), Owners::RootAndSelf)?;
        std::os::unix::fs::lchown(&link, Some(65534), None)?;
        let err = refusal(&link.join("api.sock"), Owners::GrantedByRoot);
        assert!(
            err.starts_with(&format!(
                "{} is a symbolic link owned by uid 65534",
                link.display()
            )),
            "{err}"
        );

        // A directory root gave another user, in a directory only root writes:
        // trusted by a client, not by the process that serves the path.
        let granted = tmp.path().join("granted");
        fs::create_dir_all(granted.join("public"))?;
        std::os::unix::fs::chown(&granted, Some(65534), None)?;
        std::os::unix::fs::chown(granted.join("public"), Some(65534), None)?;
        check_path(&granted.join("public/api.sock"), Owners::GrantedByRoot)?;
        let err = refusal(&granted.join("public/api.sock"), Owners::RootAndSelf);
        assert!(
            err.starts_with(&format!(
                "{} is a directory owned by uid 65534",
                granted.display()
            )),
            "{err}"
        );
        // Not granted below a directory of another (non-root) user.
        let nested = granted.join("public").join("other");
        fs::create_dir(&nested)?;
        std::os::unix::fs::chown(&nested, Some(65533), None)?;
        let err = refusal(&nested.join("api.sock"), Owners::GrantedByRoot);
        assert!(
            err.starts_with(&format!("{} is a directory owned by uid 65533", nested.display())),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn link_loops_end() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        symlink("b", tmp.path().join("a"))?;
        symlink("a", tmp.path().join("b"))?;
        let err = refusal(&tmp.path().join("a").join("x"), Owners::RootAndSelf);
        assert!(err.contains("symbolic links"), "{err}");
        Ok(())
    }
}
