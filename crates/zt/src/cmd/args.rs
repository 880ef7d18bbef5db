//! Arguments and value parsers that several commands share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::{duration, size};

/// How a decision log's checkpoints are signed (zt proxy, zt pdp run).
#[derive(Args)]
pub(crate) struct CheckpointArgs {
    /// The key that signs the decision log's checkpoints (a signed-note signer key,
    /// `PRIVATE+KEY+…`, mode 0600) [default: LOG.key, created on first use]; pin its
    /// public half (zt audit key show) to verify the log.
    #[arg(long, requires = "decision_log")]
    pub(crate) decision_log_key: Option<PathBuf>,
    /// Sign a checkpoint of the decision log after this many records.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..), requires = "decision_log")]
    pub(crate) decision_log_checkpoint_every: u64,
    /// Sign a checkpoint once records have waited this long (and on a clean stop).
    #[arg(long, default_value = "10s", value_parser = positive_duration, requires = "decision_log")]
    pub(crate) decision_log_checkpoint_interval: Duration,
}

/// A duration longer than zero.
pub(crate) fn positive_duration(text: &str) -> Result<Duration, String> {
    let parsed = duration::parse(text)?;
    if parsed.is_zero() {
        return Err(format!("invalid duration {text:?}: must be longer than zero"));
    }
    Ok(parsed)
}

impl CheckpointArgs {
    pub(crate) fn policy(&self) -> zt_audit::CheckpointPolicy {
        zt_audit::CheckpointPolicy {
            every: self.decision_log_checkpoint_every,
            interval: self.decision_log_checkpoint_interval,
        }
    }
}

/// Limits on every Rego evaluation.
#[derive(Args, Clone, Copy)]
pub(crate) struct RegoLimitArgs {
    /// Most heap the process may hold while Rego runs (a query, a module's parse, an
    /// input), e.g. 512MiB or 2GiB. A query that passes it fails, and the process goes
    /// on serving. The bound is on the whole process, not on each query.
    #[arg(long, default_value = "1GiB", value_parser = size::parse)]
    pub(crate) rego_max_memory: u64,
    /// Longest a Rego query may run before it fails.
    #[arg(long, default_value = "1s", value_parser = parse_rego_timeout)]
    pub(crate) rego_timeout: Duration,
}

/// `--rego-timeout`: a duration, not zero.
pub(crate) fn parse_rego_timeout(text: &str) -> Result<Duration, String> {
    match duration::parse(text)? {
        Duration::ZERO => Err(format!("duration {text:?} is zero: every query would fail")),
        limit => Ok(limit),
    }
}

/// The admin socket and the output format of admin commands.
#[derive(Args)]
pub(crate) struct AdminArgs {
    /// The server's admin socket.
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) socket: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    Text,
    Json,
}

/// Default data directory of `zt server`.
pub(crate) const DEFAULT_DATA_DIR: &str = "zt-data";

/// Default admin socket: the one in the default data directory.
pub(crate) const DEFAULT_ADMIN_SOCKET: &str = "zt-data/admin.sock";

/// A value parsed by its `FromStr`, whose error says what was expected.
pub(crate) fn parse_from_str<T: std::str::FromStr<Err = String>>(text: &str) -> Result<T, String> {
    text.parse()
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BundleFormat {
    Pem,
    /// The SPIFFE bundle format (SPIRE: spiffe).
    #[value(alias = "spiffe")]
    Jwks,
}
