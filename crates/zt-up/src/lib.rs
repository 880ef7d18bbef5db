//! `zt up`: the whole mesh on one machine, in one foreground process. It runs
//! `zt server` (SQLite in DIR), a `zt agent` joined with a fresh token, and two
//! demo services — an app served in this process behind a `zt proxy` each, every
//! proxy with its own SVID from the Workload API — and applies the example
//! policies with `zt policy apply`; in front of service-one, a `zt gateway`
//! lets people in who signed in at zt server's OpenID Provider. Stopping stops
//! everything in order; running it again reuses DIR: the datastore, the
//! agent's SVID, the (possibly edited) policies, the gateway's OAuth client.
//!
//! The children are zt itself, whose path the caller gives ([`run`]'s `exe`);
//! what happens is reported as [`Event`]s, for the caller to show.

#![forbid(unsafe_code)]

pub mod children;
pub mod demo;
mod error;
pub mod layout;
mod mesh;
pub mod state;

pub use error::Error;
pub use mesh::{CLIENT_CERT_RENEWAL, Event, Outcome, Progress, run};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::layout::Layout;

/// Creates DIR (0700) and its subdirectories, all 0700 (keys, tokens, logs and
/// the agent's socket are in them): ones of this user's left open to others are
/// tightened, another user's refused, and the way to the agent's socket must be
/// one no one else can change. Returns DIR's canonical path, which is what the
/// kernel reports for the proxies' executables.
pub fn prepare_dir(dir: &Path) -> Result<PathBuf, Error> {
    let flag = format!("--dir {}", dir.display());
    zt_fs::private_dir(dir).map_err(Error::fs(&flag))?;
    let dir = dir.canonicalize().map_err(Error::io(&flag))?;
    for sub in ["bin", "logs", "decisions", "clients", "agent", "gateway"] {
        zt_fs::private_dir(&dir.join(sub)).map_err(Error::fs(&flag))?;
    }
    zt_fs::check_path(&dir.join("agent"), zt_fs::Owners::RootAndSelf).map_err(Error::fs(&flag))?;
    Ok(dir)
}

/// How long `zt up` tries for its directory's lock before it says another runs
/// there: `zt status` and `zt down` probe the lock by holding it shared for an
/// instant, which must not pass for a running `zt up`.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// One `zt up` per directory: takes DIR's lock and writes this process's pid in
/// it, for `zt down`. The lock lasts as long as the file returned is open.
pub fn lock(layout: &Layout) -> Result<std::fs::File, Error> {
    use std::io::Write as _;
    let path = layout.lock();
    let file = zt_fs::open_private(
        &path,
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
    )
    .map_err(Error::Private)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::AlreadyRunning {
                    dir: layout.dir.clone(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(path.display())(e));
            }
        }
    }
    file.set_len(0)
        .and_then(|()| (&file).write_all(std::process::id().to_string().as_bytes()))
        .map_err(Error::io(path.display()))?;
    Ok(file)
}

/// Every port must be free before anything starts, so that a clash is one clear
/// error rather than a half-started mesh.
pub fn check_ports_free(layout: &Layout) -> Result<(), Error> {
    for (addr, what) in layout.ports() {
        if let Err(error) = std::net::TcpListener::bind(addr) {
            return Err(Error::PortTaken {
                port: addr.port(),
                what,
                error,
                port_base: layout.port_base(),
            });
        }
    }
    Ok(())
}

/// Whether a `zt up` holds the lock of its directory (it has started and not
/// yet stopped). Probed with a shared lock, held for no longer than the probe.
pub fn lock_held(path: &Path) -> bool {
    std::fs::File::open(path)
        .is_ok_and(|file| matches!(file.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)))
}

/// The pid a `zt up` wrote in its lock file, if there is one.
fn read_pid(lock: &Path) -> Option<rustix::process::Pid> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(lock)
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    rustix::process::Pid::from_raw(text.trim().parse().ok()?)
}

/// How often `zt down` looks whether `zt up` has stopped.
const POLL: Duration = Duration::from_millis(50);

/// How long `zt down` waits for `zt up` to stop: each of its five children has
/// 10 s to stop before it is killed.
pub const DOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends SIGTERM to the `zt up` that holds DIR's lock (its pid is in the lock
/// file), as Ctrl-C in its terminal would; returns its pid, or `None` if none
/// runs there. [`wait_stopped`] waits for it.
pub fn signal_stop(layout: &Layout) -> Result<Option<i32>, Error> {
    let lock = layout.lock();
    // The pid is read before the lock is probed, so that a held lock vouches for
    // it: it is the holder's (or, for the microseconds a new zt up takes to write
    // its own after taking the lock, that of one that died without clearing it).
    let pid = read_pid(&lock);
    if !lock_held(&lock) {
        return Ok(None);
    }
    let pid = pid.ok_or(Error::PidNotWritten { lock })?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(|source| Error::Signal {
        pid: pid.as_raw_pid(),
        dir: layout.dir.clone(),
        source,
    })?;
    Ok(Some(pid.as_raw_pid()))
}

/// Waits until the `zt up` of pid `pid` has released DIR's lock, at most
/// [`DOWN_TIMEOUT`].
pub fn wait_stopped(layout: &Layout, pid: i32) -> Result<(), Error> {
    let lock = layout.lock();
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while lock_held(&lock) {
        if Instant::now() >= deadline {
            return Err(Error::StillRunning {
                pid,
                timeout: DOWN_TIMEOUT,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}
