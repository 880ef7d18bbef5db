//! `zt bench`: figures for BENCHMARKS.md, measured on the machine it runs on by
//! the `zt-bench` crate; printed here.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zt_bench::Figure;

#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// SPIFFE ID parsing, SVID verification, minting and issuance.
    Identity(BenchIdentity),
    /// zt server through its agent API: signing throughput and entry propagation.
    Server(BenchServer),
    /// zt agent: entry created → SVID on a workload's stream, Workload API call latency.
    Agent(BenchAgent),
    /// AuthorizationPolicy evaluation in process, with 1 to 10 000 policies.
    Policy(BenchPolicy),
    /// Rego decisions in process (the seed's policy).
    Pdp(BenchPdp),
    /// zt policy generate over a large signed decision log: read, verified, folded,
    /// generated, on one thread.
    Generate(BenchGenerate),
    /// zt analyze on a synthetic mesh (1 000 workloads, 10 000 policies by default).
    Analyze(BenchAnalyze),
    /// The OpenID Provider's token endpoint over TLS (refresh, client credentials
    /// with a JWT-SVID or a secret), introspection, and verification in process.
    Tokens(BenchTokens),
    /// Device trust: posture reports accepted per second over mTLS, and the delay
    /// from a silent device's heartbeat deadline to its new tier on /v1/states.
    Devices(BenchDevices),
}

#[derive(Args)]
pub(crate) struct BenchDevices {
    /// Software devices enrolled (test-mode tokens, no approval).
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: usize,
    /// Concurrent keep-alive connections reporting, each one device's.
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// Length of each throughput round, seconds (1 to 20).
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Throughput rounds (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: usize,
    /// Devices that report once and fall silent, timed to /v1/states.
    #[arg(long, default_value_t = 200)]
    pub(crate) silent: usize,
    /// The compliance policy's heartbeat window, milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub(crate) window_ms: u64,
}

#[derive(Args)]
pub(crate) struct BenchTokens {
    /// Length of each run, seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Concurrent clients, each on its own keep-alive TLS connection.
    #[arg(long, default_value_t = 16)]
    pub(crate) concurrency: usize,
    /// The server's datastore: a postgres:// URL of an empty database (default:
    /// SQLite in a temporary directory).
    #[arg(long)]
    pub(crate) datastore: Option<String>,
}

#[derive(Args)]
pub(crate) struct BenchGenerate {
    /// Decision records in the log.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) records: u64,
    /// Write the log here and keep it (a new file: an existing one is refused), to time
    /// zt policy generate --log FILE on it.
    #[arg(long)]
    pub(crate) keep: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub(crate) struct BenchAnalyze {
    /// Workloads in the synthetic mesh (ten per namespace).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) workloads: usize,
    /// Policies in all: one DENY per hundred workloads, the rest ALLOWs spread evenly
    /// over the workloads (but one in a hundred, left with none).
    #[arg(long, default_value_t = 10_000)]
    pub(crate) policies: usize,
    /// Timed runs of each stage.
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Write the mesh instead (DIR/workloads.yaml, DIR/policies/NS.yaml), to time
    /// zt analyze --policies DIR/policies --workloads DIR/workloads.yaml itself.
    #[arg(long)]
    pub(crate) write: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub(crate) struct BenchIdentity {
    /// Timed calls per operation (issuance is capped at 2000).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) iterations: usize,
}

#[derive(Args)]
pub(crate) struct BenchServer {
    /// Entries of other agents stored before the server starts.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) entries: usize,
    /// Concurrent signing callers, each on its own connection.
    #[arg(long, default_value_t = 16)]
    pub(crate) callers: usize,
    /// Length of the signing run, seconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Entry changes timed to the sync stream.
    #[arg(long, default_value_t = 200)]
    pub(crate) changes: usize,
    /// A postgres:// URL to bench on PostgreSQL instead of SQLite (its database should be empty).
    #[arg(long)]
    pub(crate) datastore: Option<String>,
}

#[derive(Args)]
pub(crate) struct BenchAgent {
    /// Entries created and timed to the workload's X.509-SVID stream.
    #[arg(long, default_value_t = 200)]
    pub(crate) changes: usize,
    /// Workload API calls timed.
    #[arg(long, default_value_t = 500)]
    pub(crate) calls: usize,
}

#[derive(Args)]
pub(crate) struct BenchPolicy {
    /// Decisions timed per line.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) iterations: usize,
}

#[derive(Args)]
pub(crate) struct BenchPdp {
    /// Decisions timed per line.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) iterations: usize,
}

/// `zt bench identity`: the identity operations on every hot path.
pub fn identity(args: BenchIdentity) -> anyhow::Result<ExitCode> {
    let mut header = Header::new("operation", 28);
    zt_bench::identity::run(args.iterations, |figure| print(&figure, header.width()))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench server`: a real `zt server` in this process on loopback, driven
/// through its agent API as agents drive it: SVID signing throughput with
/// concurrent callers, and the delay from an entry created (admin API) to the
/// entry arriving on an agent's sync stream, with `--entries` already stored.
pub fn server(args: BenchServer) -> anyhow::Result<ExitCode> {
    let bench = zt_bench::server::ServerBench {
        entries: args.entries,
        callers: args.callers,
        window: Duration::from_secs(args.seconds),
        changes: args.changes,
        datastore: args.datastore,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(zt_bench::server::run(bench, |figure| print(&figure, 0)))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench tokens`: a real `zt server --idp` in this process on loopback
/// (SQLite, the decision log on), a person signed in with a password, and
/// concurrent clients over TLS on keep-alive connections.
pub fn tokens(args: BenchTokens) -> anyhow::Result<ExitCode> {
    super::init_logging("warn,zt::audit=error");
    let bench = zt_bench::tokens::TokensBench {
        window: Duration::from_secs(args.seconds),
        concurrency: args.concurrency,
        datastore: args.datastore,
    };
    println!(
        "{:<52} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "request", "requests", "seconds", "per second", "p50", "p99"
    );
    let mut header = Header::new("in process", 52);
    super::runtime()?.block_on(zt_bench::tokens::run(bench, |figure| {
        if let Figure::Calls { .. } = figure {
            header.width();
        }
        print(&figure, 52)
    }))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench devices`: a real `zt server --devices` in this process (on a
/// runtime of its own), software devices enrolled into temporary directories,
/// pre-signed posture reports posted over keep-alive mTLS connections, and a
/// follower of `/v1/states` timing silent devices' drops.
pub fn devices(args: BenchDevices) -> anyhow::Result<ExitCode> {
    // A warning per device dropping tier, or per audit line, would drown the figures.
    super::init_logging("warn,zt::audit=error");
    let bench = zt_bench::devices::DevicesBench {
        devices: args.devices,
        connections: args.connections,
        window: Duration::from_secs(args.seconds),
        rounds: args.rounds,
        silent: args.silent,
        heartbeat: Duration::from_millis(args.window_ms),
    };
    zt_bench::devices::run(bench, |figure| print(&figure, 52))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench agent`: a real `zt server` and `zt agent` in this process, this
/// process as the workload on the Workload API socket: the delay from an entry
/// created on the server to its SVID on a watching workload's stream, and the
/// latency of Workload API calls (attestation included).
pub fn agent(args: BenchAgent) -> anyhow::Result<ExitCode> {
    // The audit line of each policy version applied would drown the figures.
    super::init_logging("warn,zt::audit=error");
    let bench = zt_bench::agent::AgentBench {
        changes: args.changes,
        calls: args.calls,
    };
    super::runtime()?.block_on(zt_bench::agent::run(bench, |figure| print(&figure, 0)))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench policy`: one request decided by AuthorizationPolicies in process,
/// for sets of 1, 100, 1 000 and 10 000 policies.
pub fn policy(args: BenchPolicy) -> anyhow::Result<ExitCode> {
    Header::new("policies (layout) — request", 52).width();
    match zt_bench::policy::run(args.iterations, |figure| print(&figure, 52)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(zt_bench::Error::Decision { want, got, reason }) => {
            eprintln!("zt bench policy: expected {want}, got {got} ({reason})");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// `zt bench pdp`: the seed's Rego policy decided in process (a clone of the
/// prepared engine per decision, as the API does).
pub fn pdp(args: BenchPdp) -> anyhow::Result<ExitCode> {
    let mut header = Header::new("decision (seed policy)", 28);
    zt_bench::pdp::run(args.iterations, |figure| print(&figure, header.width()))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench generate`: `zt policy generate`'s pipeline over `--records`
/// decision records of a synthetic mesh.
pub fn generate(args: BenchGenerate) -> anyhow::Result<ExitCode> {
    if let Some(keep) = &args.keep
        && keep.exists()
    {
        anyhow::bail!("--keep {}: already exists", keep.display());
    }
    zt_bench::observe::run(args.records, args.keep.as_deref(), |figure| print(&figure, 0))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt bench analyze`: the stages of `zt analyze` timed on a synthetic mesh,
/// or the mesh written out with `--write`.
pub fn analyze(args: BenchAnalyze) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.write {
        let mesh = zt_bench::analyze::mesh(args.workloads, args.policies);
        let mut files = vec![(dir.join("workloads.yaml"), mesh.workloads.into_bytes(), 0o644)];
        let policies = dir.join("policies");
        std::fs::create_dir_all(&policies).with_context(|| format!("--write {}", policies.display()))?;
        files.extend(
            mesh.policies
                .into_iter()
                .map(|(name, text)| (policies.join(name), text.into_bytes(), 0o644)),
        );
        zt_fs::write_atomically(&files).with_context(|| format!("--write {}", dir.display()))?;
        println!(
            "wrote {} files: time zt analyze --policies {} --workloads {} --output json",
            files.len(),
            policies.display(),
            dir.join("workloads.yaml").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut header = Header::new("stage — mesh", 64);
    zt_bench::analyze::run(args.workloads, args.policies, args.runs, |figure| {
        print(&figure, header.width())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The header line of a table of [`Figure::Calls`], printed once, before the
/// first line.
struct Header {
    first: &'static str,
    width: usize,
    printed: bool,
}

impl Header {
    fn new(first: &'static str, width: usize) -> Self {
        Self {
            first,
            width,
            printed: false,
        }
    }

    /// Prints the header if not yet printed; returns the first column's width.
    fn width(&mut self) -> usize {
        if !self.printed {
            self.printed = true;
            println!(
                "{:<width$} {:>10} {:>10} {:>14}",
                self.first,
                "p50",
                "p99",
                "ops/s (1 core)",
                width = self.width
            );
        }
        self.width
    }
}

/// One figure, one line; `width` is the first column's, for [`Figure::Calls`].
fn print(figure: &Figure, width: usize) {
    match figure {
        Figure::Calls { name, samples } => println!(
            "{name:<width$} {:>10} {:>10} {:>14.0}",
            fmt(samples.percentile(0.5)),
            fmt(samples.percentile(0.99)),
            samples.per_second()
        ),
        Figure::Rate {
            name,
            items,
            what,
            took,
        } => println!(
            "{name:<60} {items} {what} in {took:.2?}: {:.0} {what}/s",
            *items as f64 / took.as_secs_f64().max(f64::MIN_POSITIVE)
        ),
        Figure::Cpu {
            name,
            cpu,
            elapsed,
            items,
            what,
        } => println!(
            "{name:<52} {:>5.0}% of a core, {} CPU per {what}",
            100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            fmt(cpu.checked_div((*items).max(1) as u32).unwrap_or_default()),
        ),
        Figure::Stored { entries, took } => println!("stored {entries} entries in {took:.1?}"),
        Figure::Throughput {
            name,
            samples,
            callers,
            elapsed,
        } => println!(
            "{name:<44} {:>10.0} SVIDs/s  (p50 {}, p99 {}, {callers} callers, {elapsed:.1?})",
            samples.len() as f64 / elapsed.as_secs_f64(),
            fmt(samples.percentile(0.5)),
            fmt(samples.percentile(0.99)),
        ),
        Figure::Requests {
            name,
            samples,
            callers,
            elapsed,
        } => println!(
            "{name:<width$} {:>9} {:>8.1} {:>10.0} {:>10} {:>10}  ({callers} clients)",
            samples.len(),
            elapsed.as_secs_f64(),
            samples.len() as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            fmt(samples.percentile(0.5)),
            fmt(samples.percentile(0.99)),
        ),
        Figure::Delays { name, samples, what } => println!(
            "{name:<44} p50 {}, p99 {}, max {}  ({} {what})",
            fmt(samples.percentile(0.5)),
            fmt(samples.percentile(0.99)),
            fmt(samples.max()),
            samples.len(),
        ),
        Figure::Latency {
            name,
            samples,
            entries,
        } => println!(
            "{name:<44} p50 {}, p99 {}  ({} calls; the caller has {entries} entries)",
            fmt(samples.percentile(0.5)),
            fmt(samples.percentile(0.99)),
            samples.len(),
        ),
    }
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 {
        format!("{ns} ns")
    } else if ns >= 10_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} µs", ns as f64 / 1000.0)
    }
}
