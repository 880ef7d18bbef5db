//! Why a bench could not run.

/// Why a bench could not run (or measured the wrong thing).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SPIFFE ID or trust domain was refused.
    #[error(transparent)]
    SpiffeId(#[from] zt_identity::SpiffeIdError),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] zt_ca::CaError),
    /// A bundle did not parse.
    #[error(transparent)]
    Bundle(#[from] zt_identity::BundleError),
    /// A file, directory or port failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The datastore failed.
    #[error(transparent)]
    Store(#[from] zt_store::StoreError),
    /// A registration entry was refused.
    #[error(transparent)]
    Entry(#[from] zt_store::ModelError),
    /// An admin API call failed.
    #[error(transparent)]
    Admin(#[from] zt_server::client::ClientError),
    /// A gRPC call failed.
    #[error(transparent)]
    Status(#[from] tonic::Status),
    /// A gRPC channel could not be made.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A TLS configuration could not be made.
    #[error(transparent)]
    Tls(#[from] zt_tls::TlsConfigError),
    /// zt server failed.
    #[error(transparent)]
    Server(#[from] zt_server::ServerError),
    /// zt agent failed.
    #[error(transparent)]
    Agent(#[from] zt_agent::AgentError),
    /// A device's enrollment or report failed.
    #[error(transparent)]
    Device(#[from] zt_device::agent::AgentError),
    /// A device's report could not be signed.
    #[error(transparent)]
    Signed(#[from] zt_device::report::SignedError),
    /// A task panicked or was cancelled.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// A decision log could not be written or read.
    #[error(transparent)]
    Audit(#[from] zt_audit::AuditError),
    /// A Rego query failed.
    #[error(transparent)]
    Query(#[from] zt_policy::rego::QueryError),
    /// The bench's policies did not load.
    #[error("{0}")]
    Policies(zt_policy::LoadError),
    /// The bench's Rego policy did not compile.
    #[error("{0:?}")]
    Rego(Vec<zt_policy::rego::ModuleError>),
    /// A key, a socket path, or a stream that answered what it should not.
    #[error("{0}")]
    Failed(String),
    /// Something did not answer in time.
    #[error("{what}")]
    Timeout {
        /// What did not answer.
        what: &'static str,
        /// The timer.
        source: tokio::time::error::Elapsed,
    },
    /// An AuthorizationPolicy decision was not the one the bench expects: its
    /// figures would measure the wrong thing.
    #[error("expected {want}, got {got} ({reason})")]
    Decision {
        /// The decision expected.
        want: zt_policy::Verdict,
        /// The decision made.
        got: zt_policy::Verdict,
        /// Why it was made.
        reason: String,
    },
}

impl Error {
    /// A timeout of `what`.
    pub(crate) fn timeout(what: &'static str) -> impl FnOnce(tokio::time::error::Elapsed) -> Self {
        move |source| Self::Timeout { what, source }
    }
}
