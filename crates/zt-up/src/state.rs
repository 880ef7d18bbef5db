//! `DIR/up.json`: what a running `zt up` started, written once everything is
//! ready and removed when it stops; and [`status`], which reads it and asks each
//! part whether it is healthy (`zt status`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How long one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest state file read.
const MAX_STATE_BYTES: u64 = 64 * 1024;

/// What a running `zt up` started.
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    /// `zt up` itself.
    pub pid: u32,
    /// RFC 3339.
    pub started_at: String,
    /// What it started, in order.
    pub components: Vec<Component>,
}

/// One part of the mesh.
#[derive(Debug, Serialize, Deserialize)]
pub struct Component {
    /// What it is, e.g. `zt agent` or `service-one app`.
    pub name: String,
    /// Its process (the demo apps run inside `zt up`).
    pub pid: u32,
    /// How to tell that it is healthy.
    pub probe: Probe,
    /// Where it logs, if it has a log of its own.
    pub log: Option<PathBuf>,
}

/// How to tell that a component is healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET path` answers 200.
    Http {
        /// Where it listens.
        addr: SocketAddr,
        /// What to get.
        path: String,
    },
    /// The socket accepts a connection.
    Unix {
        /// The socket's path.
        socket: PathBuf,
    },
    /// The file was written within the last `within_secs` (the device
    /// agent's last accepted report).
    Fresh {
        /// The file.
        file: PathBuf,
        /// How recent it must be.
        within_secs: u64,
    },
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { addr, path } => write!(f, "http://{addr}{path}"),
            Self::Unix { socket } => write!(f, "unix://{}", socket.display()),
            Self::Fresh { file, within_secs } => {
                write!(f, "{} written in the last {within_secs} s", file.display())
            }
        }
    }
}

impl Probe {
    /// `Ok` if healthy, else why not.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::Http { addr, path } => match http_get(*addr, path) {
                Ok((200, _)) => Ok(()),
                Ok((status, _)) => Err(format!("answers {status}")),
                Err(e) => Err(e.to_string()),
            },
            Self::Unix { socket } => std::os::unix::net::UnixStream::connect(socket)
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Fresh { file, within_secs } => {
                let modified = std::fs::metadata(file)
                    .and_then(|m| m.modified())
                    .map_err(|e| e.to_string())?;
                let age = modified.elapsed().unwrap_or_default();
                if age.as_secs() <= *within_secs {
                    Ok(())
                } else {
                    Err(format!("last written {}s ago", age.as_secs()))
                }
            }
        }
    }
}

/// Largest answer a probe reads (a proxy's /metrics is a few KiB).
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// `GET path` on `addr`: the status code and the body (with any chunk framing
/// left in: probes only look for lines in it).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP/1.1 answer"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// Whether process `pid` is alive (a zombie is not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // pid (comm) state …: comm may hold spaces and parentheses.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

impl State {
    /// Writes the state file atomically.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self).map_err(Error::Encode)?;
        zt_fs::write_atomically(&[(path.to_owned(), json, zt_fs::PRIVATE_MODE)])
            .map_err(Error::fs(path.display()))
    }

    /// Reads the state file; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, Error> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = {
            let file = std::fs::File::open(path).map_err(Error::io(path.display()))?;
            let mut bytes = Vec::new();
            file.take(MAX_STATE_BYTES)
                .read_to_end(&mut bytes)
                .map_err(Error::io(path.display()))?;
            bytes
        };
        let state = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            path: path.to_owned(),
            source,
        })?;
        Ok(Some(state))
    }
}

/// What runs in a `zt up` directory, by its state file.
pub enum Status {
    /// No state file: `zt up` is not running there (or not ready yet).
    NotRunning,
    /// The state file names a `zt up` whose process is gone.
    Gone {
        /// Its pid.
        pid: u32,
    },
    /// `zt up` runs; each component with its health (`Err` says why not).
    Running {
        /// What it wrote.
        state: State,
        /// Per component, in order: healthy, or why not.
        health: Vec<Result<(), String>>,
    },
}

/// Reads `state_file` and asks each part whether it is healthy.
pub fn status(state_file: &Path) -> Result<Status, Error> {
    let Some(state) = State::load(state_file)? else {
        return Ok(Status::NotRunning);
    };
    if !alive(state.pid) {
        return Ok(Status::Gone { pid: state.pid });
    }
    let health = state
        .components
        .iter()
        .map(|component| {
            if alive(component.pid) {
                component.probe.check().map_err(|why| format!("unhealthy: {why}"))
            } else {
                Err("not running".to_owned())
            }
        })
        .collect();
    Ok(Status::Running { state, health })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_its_absence_means_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.json");
        assert!(matches!(status(&path).unwrap(), Status::NotRunning));
        let state = State {
            pid: std::process::id(),
            started_at: "2026-11-30T14:00:00Z".into(),
            components: vec![Component {
                name: "zt agent".into(),
                pid: u32::MAX,
                probe: Probe::Unix {
                    socket: dir.path().join("api.sock"),
                },
                log: None,
            }],
        };
        state.save(&path).unwrap();
        let Status::Running { state, health } = status(&path).unwrap() else {
            panic!("this process is alive")
        };
        assert_eq!(state.components[0].name, "zt agent");
        assert_eq!(health, vec![Err("not running".to_owned())]);
        assert!(state.components[0].probe.to_string().starts_with("unix://"));
    }
}
