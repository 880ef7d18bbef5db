//! The processes `zt up` runs: each in a process group of its own (a terminal's
//! Ctrl-C reaches `zt up` alone, which stops them in order), its output in a log
//! file, and its standard input a pipe whose closing stops it — so a child also
//! stops when `zt up` dies, however it dies.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStdin, Command};

use crate::Error;

/// Set (to anything) by a supervisor that holds a zt process's standard input,
/// as `zt up` does: when its end closes (the supervisor stops, or dies), the
/// process stops as it would on SIGTERM, so nothing outlives its supervisor.
pub const EXIT_ON_STDIN_EOF: &str = "ZT_EXIT_ON_STDIN_EOF";

/// How long a child has to stop once asked before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running child process.
pub struct Supervised {
    /// What it is, e.g. `zt agent`.
    pub name: String,
    /// Its process ID.
    pub pid: u32,
    /// Where its standard output and error go.
    pub log: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    /// Starts `program args…` with its output appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[&OsStr], log: &Path) -> Result<Self, Error> {
        let output = zt_fs::open_private(log, std::fs::OpenOptions::new().create(true).append(true))
            .map_err(Error::fs(format!("{name}'s log")))?;
        let errors = output
            .try_clone()
            .map_err(Error::io(format!("{name}'s log {}", log.display())))?;
        let mut child = Command::new(program)
            .args(args)
            .env(EXIT_ON_STDIN_EOF, "1")
            .stdin(Stdio::piped())
            .stdout(output)
            .stderr(errors)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!("starting {name} ({})", program.display())))?;
        let pid = child.id().ok_or(Error::NoPid)?;
        let stdin = child.stdin.take();
        Ok(Self {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
            child,
            stdin,
        })
    }

    /// Whether the child has exited, and how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the child to stop (its standard input closes) and waits; kills it if
    /// it has not stopped within the grace period. Says how it ended.
    pub async fn stop(&mut self) -> String {
        drop(self.stdin.take());
        match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
            Ok(Ok(status)) => describe(status),
            Ok(Err(e)) => format!("could not be waited for: {e}"),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                format!("killed: still running {STOP_GRACE:?} after being asked to stop")
            }
        }
    }

    /// If the child has exited: which, how, and the end of its log.
    pub fn exit_report(&mut self) -> Option<Error> {
        let status = self.exited()?;
        Some(self.failure(&format!("exited ({})", describe(status))))
    }

    /// "NAME WHAT; its log PATH:" and the end of that log, to show why it failed.
    pub fn failure(&self, what: &str) -> Error {
        Error::Child {
            name: self.name.clone(),
            what: what.to_owned(),
            log: self.log.clone(),
            tail: self.log_tail(),
        }
    }

    /// The last lines of the child's log, indented.
    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .iter()
            .skip(lines.len().saturating_sub(12))
            .map(|line| format!("    | {line}\n"))
            .collect()
    }
}

/// "exit 0", "exit 1", "signal 9".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}
