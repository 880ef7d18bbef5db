//! Observed traffic for `zt policy generate|promote` and `zt analyze`: decision
//! logs (proxies' files, or the copies zt server holds), each verified before a
//! single record is learned from, kept to a window.

use std::path::PathBuf;

use super::args::DEFAULT_ADMIN_SOCKET;
use clap::Args;
use zt_observe::{Traffic, Window};

/// Where the observed traffic comes from, and which of it counts.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("traffic").required(true).multiple(true).args(["log", "server"])))]
pub(crate) struct TrafficArgs {
    /// A proxy's decision log (zt proxy --decision-log); repeat for several. Its chain
    /// and checkpoints must verify: a log that was edited or cut is refused.
    #[arg(long = "log", value_name = "FILE")]
    pub(crate) log: Vec<PathBuf>,
    /// The decision records proxies shipped to zt server (every chain verified).
    #[arg(long)]
    pub(crate) server: bool,
    /// The server's admin socket (with --server).
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) socket: PathBuf,
    /// Records at or after this moment: RFC 3339, Unix seconds, or a duration ago (24h).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Records before this moment: RFC 3339, Unix seconds, or a duration ago.
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// Distinct flows (caller, destination, method, path, outcome) kept at most; more
    /// is an error, never a policy made from part of the traffic.
    #[arg(long, default_value_t = zt_observe::traffic::DEFAULT_MAX_FLOWS)]
    pub(crate) max_flows: usize,
}

impl TrafficArgs {
    /// The window the flags give.
    pub(crate) fn window(&self) -> anyhow::Result<Window> {
        let moment =
            |flag, text: &Option<String>| text.as_deref().map(|t| super::audit::moment(flag, t)).transpose();
        let window = Window {
            since_ms: moment("--since", &self.since)?,
            until_ms: moment("--until", &self.until)?,
        };
        if let (Some(since), Some(until)) = (window.since_ms, window.until_ms)
            && since >= until
        {
            anyhow::bail!(
                "--since {} is not before --until {}: the window is empty",
                self.since.as_deref().unwrap_or_default(),
                self.until.as_deref().unwrap_or_default()
            );
        }
        Ok(window)
    }

    /// Every verified record of every source, folded into flows; an error
    /// names the source (and line) that does not verify, or says that the
    /// window holds no traffic.
    pub(crate) fn read(&self) -> anyhow::Result<Traffic> {
        let mut traffic = Traffic::with_max_flows(self.window()?, self.max_flows);
        for log in &self.log {
            super::audit::verified_log(log, |record| traffic.add(record))?;
        }
        if self.server {
            super::audit::verified_server(&self.socket, |record| traffic.add(record))?;
        }
        if traffic.overflow > 0 {
            anyhow::bail!(
                "{}: more than --max-flows {} distinct flows in the window ({} records beyond them): \
                 narrow it with --since/--until, or raise --max-flows",
                self.describe(),
                self.max_flows,
                traffic.overflow
            );
        }
        if traffic.in_window == 0 {
            let sources = self.describe();
            anyhow::bail!(
                "{sources}: no proxy decisions in the window{} ({} records read{}): nothing was observed",
                self.describe_window(),
                traffic.records,
                if traffic.not_proxy > 0 {
                    format!(", {} of them a policy decision point's", traffic.not_proxy)
                } else {
                    String::new()
                },
            );
        }
        Ok(traffic)
    }

    fn describe(&self) -> String {
        let mut sources: Vec<String> = self
            .log
            .iter()
            .map(|l| format!("--log {}", l.display()))
            .collect();
        if self.server {
            sources.push(format!("--server (zt server on {})", self.socket.display()));
        }
        sources.join(", ")
    }

    fn describe_window(&self) -> String {
        match (&self.since, &self.until) {
            (None, None) => String::new(),
            (since, until) => {
                let mut parts = Vec::new();
                if let Some(since) = since {
                    parts.push(format!("--since {since}"));
                }
                if let Some(until) = until {
                    parts.push(format!("--until {until}"));
                }
                format!(" {}", parts.join(" "))
            }
        }
    }
}
