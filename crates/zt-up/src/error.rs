//! Why `zt up`, `zt status` or `zt down` failed: each message names the file,
//! port, process or flag at fault, and its cause follows as the error's source.

use std::path::PathBuf;

/// Why a step of `zt up`, `zt status` or `zt down` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed; `what` names it.
    #[error("{what}")]
    Io {
        /// The file, directory or process, as the user would name it.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A private file or directory could not be made, or its path is not safe.
    #[error("{what}")]
    Fs {
        /// The file or directory, as the user would name it.
        what: String,
        /// The error.
        source: zt_fs::FsError,
    },
    /// A file that holds secrets could not be opened.
    #[error(transparent)]
    Private(zt_fs::FsError),
    /// Files could not be written (the cause is in the message).
    #[error("{0}")]
    Write(zt_fs::FsError),
    /// A Unix socket in `--dir` would be too long to bind.
    #[error(
        "--dir {}: the socket {} would be {length} bytes long, and a Unix socket path can have at most {max}; choose a shorter --dir",
        dir.display(),
        socket.display()
    )]
    SocketPathTooLong {
        /// The directory.
        dir: PathBuf,
        /// The socket that would be too long.
        socket: PathBuf,
        /// Its length in bytes.
        length: usize,
        /// The longest a socket path may be.
        max: usize,
    },
    /// Another `zt up` holds the directory's lock.
    #[error(
        "--dir {}: zt up is already running there (`zt status --dir {}` shows it)",
        dir.display(),
        dir.display()
    )]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
    },
    /// A port of the block is taken.
    #[error(
        "port {port} ({what}): {error}; stop what holds it, or move every zt up port with --port-base (now {port_base})"
    )]
    PortTaken {
        /// The port.
        port: u16,
        /// What `zt up` would use it for.
        what: String,
        /// Why it could not be bound.
        error: std::io::Error,
        /// `--port-base`.
        port_base: u16,
    },
    /// A child exited, or was not ready in time; the message ends with its log's last lines.
    #[error("{name} {what}; its log {}:\n{tail}", log.display())]
    Child {
        /// The child, e.g. `zt agent`.
        name: String,
        /// What went wrong, e.g. `exited (exit 1)`.
        what: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log, indented.
        tail: String,
    },
    /// The operating system gave a child no pid.
    #[error("a child without a pid")]
    NoPid,
    /// An admin API call failed.
    #[error(transparent)]
    Admin(#[from] zt_server::client::ClientError),
    /// An X.509-SVID for callers outside the mesh could not be minted.
    #[error(transparent)]
    Mint(#[from] zt_server::client::MintError),
    /// This machine could not be enrolled as the demo device.
    #[error("enrolling this machine as a device: {0}")]
    Device(#[from] zt_device::agent::AgentError),
    /// A SPIFFE ID was refused.
    #[error(transparent)]
    SpiffeId(#[from] zt_identity::SpiffeIdError),
    /// A registration entry was refused.
    #[error(transparent)]
    Entry(#[from] zt_store::ModelError),
    /// The demo user or client was refused.
    #[error(transparent)]
    People(zt_store::StoreError),
    /// zt server made the gateway's confidential client without a secret.
    #[error("zt server made the gateway's OAuth client without a secret")]
    NoClientSecret,
    /// `/proc/self/status` has no `Uid:` line.
    #[error("/proc/self/status: no Uid line")]
    NoUid,
    /// `zt policy apply` failed; `said` is its error.
    #[error("zt policy apply {}: {said}", dir.display())]
    PolicyApply {
        /// The policy directory.
        dir: PathBuf,
        /// What it wrote on standard error.
        said: String,
    },
    /// zt server holds no policies after `zt policy apply` succeeded.
    #[error("no policy version after zt policy apply")]
    NoPolicyVersion,
    /// The state file could not be encoded.
    #[error(transparent)]
    Encode(serde_json::Error),
    /// The state file could not be read as JSON.
    #[error("{}", path.display())]
    Decode {
        /// The state file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// `zt up` holds its lock but has not written its pid yet.
    #[error("{}: zt up is starting there and has not written its pid yet; try again", lock.display())]
    PidNotWritten {
        /// The lock file.
        lock: PathBuf,
    },
    /// SIGTERM could not be sent.
    #[error("stopping zt up (pid {pid}) in {}", dir.display())]
    Signal {
        /// `zt up`'s pid.
        pid: i32,
        /// Its directory.
        dir: PathBuf,
        /// The error.
        source: rustix::io::Errno,
    },
    /// `zt up` did not stop in time.
    #[error("zt up (pid {pid}) still runs {timeout:?} after SIGTERM; its output says why")]
    StillRunning {
        /// `zt up`'s pid.
        pid: i32,
        /// How long it was given.
        timeout: std::time::Duration,
    },
}

impl Error {
    /// An I/O error on `what`.
    pub(crate) fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |source| Self::Io { what, source }
    }

    /// A zt-fs error on `what`.
    pub(crate) fn fs(what: impl std::fmt::Display) -> impl FnOnce(zt_fs::FsError) -> Self {
        let what = what.to_string();
        move |source| Self::Fs { what, source }
    }
}
