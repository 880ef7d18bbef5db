//! `DIR/up.json`: what a running `zt up` started, written once everything is
//! ready and removed when it stops; and `zt status`, which reads it and asks each
//! part whether it is healthy.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

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
    pub components: Vec<Component>,
}

/// One part of the mesh.
#[derive(Debug, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    /// Its process (the demo apps run inside `zt up`).
    pub pid: u32,
    pub probe: Probe,
    /// Where it logs, if it has a log of its own.
    pub log: Option<PathBuf>,
}

/// How to tell that a component is healthy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// `GET path` answers 200.
    Http { addr: SocketAddr, path: String },
    /// The socket accepts a connection.
    Unix { socket: PathBuf },
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http { addr, path } => write!(f, "http://{addr}{path}"),
            Self::Unix { socket } => write!(f, "unix://{}", socket.display()),
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
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        zt_fs::write_atomically(&[(path.to_owned(), json, zt_fs::PRIVATE_MODE)])
            .with_context(|| path.display().to_string())
    }

    /// Reads the state file; `None` if there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let bytes = {
            let file = std::fs::File::open(path).with_context(|| path.display().to_string())?;
            let mut bytes = Vec::new();
            file.take(MAX_STATE_BYTES)
                .read_to_end(&mut bytes)
                .with_context(|| path.display().to_string())?;
            bytes
        };
        let state = serde_json::from_slice(&bytes).with_context(|| path.display().to_string())?;
        Ok(Some(state))
    }
}

/// `zt status`: prints what runs in `dir` and whether each part is healthy;
/// true if `zt up` runs there and every part is.
pub fn report(dir: &Path, state_file: &Path) -> anyhow::Result<bool> {
    let Some(state) = State::load(state_file)? else {
        println!(
            "zt up is not running in {} (no {})",
            dir.display(),
            state_file.display()
        );
        return Ok(false);
    };
    if !alive(state.pid) {
        println!(
            "zt up is not running in {}: pid {} in {} is gone (it did not stop cleanly; `zt up --dir {}` starts it again)",
            dir.display(),
            state.pid,
            state_file.display(),
            dir.display()
        );
        return Ok(false);
    }
    println!(
        "zt up in {} (pid {}, since {})",
        dir.display(),
        state.pid,
        state.started_at
    );
    let width = state.components.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut healthy = true;
    for component in &state.components {
        let verdict = if alive(component.pid) {
            component.probe.check().map_err(|why| format!("unhealthy: {why}"))
        } else {
            Err("not running".to_owned())
        };
        let (word, why) = match verdict {
            Ok(()) => ("healthy", String::new()),
            Err(why) => {
                healthy = false;
                ("DOWN", format!(" ({why})"))
            }
        };
        println!(
            "  {:width$}  pid {:<7}  {word:7}  {}{why}",
            component.name, component.pid, component.probe
        );
    }
    Ok(healthy)
}
