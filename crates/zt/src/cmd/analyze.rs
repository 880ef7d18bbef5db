//! `zt analyze`: the mesh's security metrics — blast radius, critical
//! findings, mTLS coverage, credential lifetimes, unused rules — from the
//! policies in force, the workloads and the decision logs, computed by
//! `zt-analyze` and printed here as text or JSON, or written as an HTML page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use zt_analyze::lifetimes::Credential;
use zt_analyze::{Policies, Workload};
use zt_policy::PolicySet;

use super::args::{DEFAULT_ADMIN_SOCKET, Output};
use super::audit::AuditSource;

/// Largest workloads file read, in bytes.
const MAX_WORKLOADS_BYTES: u64 = 16 << 20;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("policy_source").required(true).multiple(true).args(["policies", "server"])))]
pub(crate) struct AnalyzeArgs {
    /// The directory of policy files in force (*.yaml, *.yml; searched recursively).
    #[arg(long)]
    pub(crate) policies: Option<PathBuf>,
    /// Ask zt server through its admin socket: its current policy version (unless
    /// --policies), its registration entries as workloads (unless --workloads) and for
    /// credential lifetimes, its trust bundle for the CA's lifetime, and the decisions
    /// proxies shipped to it (unless --log).
    #[arg(long)]
    pub(crate) server: bool,
    /// The server's admin socket (with --server).
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) socket: PathBuf,
    /// The workloads: a YAML or JSON list of {name, namespace, labels, spiffe_id,
    /// x509_ttl?, jwt_ttl?} (TTLs in seconds).
    #[arg(long)]
    pub(crate) workloads: Option<PathBuf>,
    /// A decision log (zt proxy --decision-log), verified as it is read; repeat for
    /// several. The observed traffic: mTLS coverage, plaintext served, unused rules.
    #[arg(long)]
    pub(crate) log: Vec<PathBuf>,
    /// Decisions at or after this moment: RFC 3339, Unix seconds, or a duration ago (24h).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Decisions before this moment: RFC 3339, Unix seconds, or a duration ago.
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// A second policy directory (a proposed change): its blast radius and the
    /// difference are reported beside the first's.
    #[arg(long)]
    pub(crate) against: Option<PathBuf>,
    /// A PEM trust bundle whose CA certificates' lifetimes are reported (zt server's
    /// is read with --server).
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// The namespace whose policies apply to every workload.
    #[arg(long, default_value = zt_policy::DEFAULT_ROOT_NAMESPACE)]
    pub(crate) root_namespace: String,
    /// Output format on standard output.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// Also write the report as one self-contained HTML page (mode 0644).
    #[arg(long)]
    pub(crate) html: Option<PathBuf>,
    /// Exit 1 (after the report) when a finding is at least this severe: a gate for CI.
    #[arg(long, value_enum)]
    pub(crate) fail_on: Option<FailOn>,
}

/// The least severe finding that fails `--fail-on`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum FailOn {
    Critical,
    High,
    Medium,
    Low,
}

impl FailOn {
    fn severity(self) -> zt_analyze::findings::Severity {
        use zt_analyze::findings::Severity;
        match self {
            FailOn::Critical => Severity::Critical,
            FailOn::High => Severity::High,
            FailOn::Medium => Severity::Medium,
            FailOn::Low => Severity::Low,
        }
    }
}

/// `zt analyze`: the report on standard output, and as HTML with `--html`.
pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let client = zt_server::client::AdminClient::new(&args.socket);
    let (set, policies_from) = match &args.policies {
        Some(dir) => (
            load_dir("--policies", dir, &args.root_namespace)?,
            dir.display().to_string(),
        ),
        None => server_policies(&client, &args.root_namespace)?,
    };
    let against = args
        .against
        .as_ref()
        .map(|dir| load_dir("--against", dir, &args.root_namespace))
        .transpose()?;

    let entries = if args.server {
        super::admin_call(client.list_entries(&Default::default()))
            .context("--server: listing registration entries")?
    } else {
        Vec::new()
    };
    let workload_entries = || entries.iter().filter(|e| !e.spec.node);
    let (workloads, workloads_from, skipped_ids) = match &args.workloads {
        Some(file) => (read_workloads(file)?, file.display().to_string(), Vec::new()),
        None if args.server => {
            let (workloads, skipped) =
                zt_analyze::workloads::from_spiffe_ids(workload_entries().map(|e| &e.spec.spiffe_id));
            (workloads, "zt server's registration entries".to_owned(), skipped)
        }
        None => anyhow::bail!("--workloads FILE is needed without --server"),
    };
    let credentials: Vec<Credential> = if args.server {
        workload_entries()
            .map(|e| Credential {
                spiffe_id: e.spec.spiffe_id.to_string(),
                x509_ttl: Some(e.spec.x509_ttl),
                jwt_ttl: Some(e.spec.jwt_ttl),
            })
            .collect()
    } else {
        workloads
            .iter()
            .filter(|w| w.x509_ttl.is_some() || w.jwt_ttl.is_some())
            .map(|w| Credential {
                spiffe_id: w.spiffe_id.to_string(),
                x509_ttl: w.x509_ttl,
                jwt_ttl: w.jwt_ttl,
            })
            .collect()
    };
    let ca = match (&args.bundle, args.server) {
        (Some(file), _) => {
            let pem = super::read_input("--bundle", file)?;
            zt_analyze::lifetimes::ca_lifetimes(&pem)
                .map_err(|e| anyhow::anyhow!("--bundle {}: {e}", file.display()))?
        }
        (None, true) => {
            let pem = super::admin_call(client.bundle(zt_server::api::BundleFormat::Pem))
                .context("--server: reading the trust bundle")?;
            zt_analyze::lifetimes::ca_lifetimes(pem.as_bytes())
                .map_err(|e| anyhow::anyhow!("zt server's trust bundle: {e}"))?
        }
        (None, false) => Vec::new(),
    };

    let traffic = read_traffic(&args)?;
    let report = zt_analyze::analyze(zt_analyze::Input {
        policies: Policies {
            set: &set,
            from: policies_from,
        },
        root_namespace: &args.root_namespace,
        workloads: &workloads,
        workloads_from,
        skipped_ids,
        traffic: traffic.as_ref().map(|(t, sources)| (t, sources.clone())),
        credentials,
        ca,
        against: against.as_ref().map(|set| Policies {
            set,
            from: args
                .against
                .as_deref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
        }),
    });

    match args.output {
        Output::Text => print!("{}", report.to_text()),
        Output::Json => println!("{}", report.to_json()),
    }
    if let Some(file) = &args.html {
        let page = zt_analyze::html::render(&report);
        zt_fs::write_atomically(&[(file.clone(), page.into_bytes(), 0o644)])
            .with_context(|| format!("--html {}", file.display()))?;
        eprintln!("wrote {}", file.display());
    }
    if let Some(fail_on) = args.fail_on {
        // Severities order from the worst: Critical < High < Medium < Low.
        let failing = report
            .findings
            .iter()
            .filter(|f| f.severity <= fail_on.severity())
            .count();
        if failing > 0 {
            eprintln!(
                "zt analyze: {failing} finding(s) at {} or worse (--fail-on)",
                fail_on.severity()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The policies of `dir`, or every problem, named by the flag.
fn load_dir(flag: &str, dir: &Path, root_namespace: &str) -> anyhow::Result<PolicySet> {
    let policies = zt_policy::load_dir(dir).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", dir.display()))?;
    Ok(PolicySet::new(policies, root_namespace))
}

/// zt server's current policy version, as `zt policy apply` stored it.
fn server_policies(
    client: &zt_server::client::AdminClient,
    root_namespace: &str,
) -> anyhow::Result<(PolicySet, String)> {
    let version = super::admin_call(client.policies())
        .context("--server: reading the current policy version")?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--server: no policy version applied yet (zt policy apply DIR); give --policies DIR"
            )
        })?;
    let sources: Vec<zt_policy::load::Source> = version
        .files
        .iter()
        .map(|f| zt_policy::load::Source {
            name: PathBuf::from(&f.name),
            text: f.text.clone(),
        })
        .collect();
    let policies = zt_policy::load::parse(&sources)
        .map_err(|e| anyhow::anyhow!("zt server's policy version {}: {e}", version.version))?;
    Ok((
        PolicySet::new(policies, root_namespace),
        format!("zt server's policy version {}", version.version),
    ))
}

fn read_workloads(file: &Path) -> anyhow::Result<Vec<Workload>> {
    let name = || format!("--workloads {}", file.display());
    let size = std::fs::metadata(file).with_context(name)?.len();
    if size > MAX_WORKLOADS_BYTES {
        anyhow::bail!("{}: larger than {MAX_WORKLOADS_BYTES} bytes", name());
    }
    let text = std::fs::read_to_string(file).with_context(name)?;
    zt_analyze::workloads::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", name()))
}

/// The decisions of `--log` files, or of zt server with `--server`, verified
/// as read and kept to the window; `None` without either.
fn read_traffic(args: &AnalyzeArgs) -> anyhow::Result<Option<(zt_observe::Traffic, Vec<String>)>> {
    let since_ms = args
        .since
        .as_deref()
        .map(|t| super::audit::moment("--since", t))
        .transpose()?;
    let until_ms = args
        .until
        .as_deref()
        .map(|t| super::audit::moment("--until", t))
        .transpose()?;
    let mut traffic = zt_observe::Traffic::new(zt_observe::Window { since_ms, until_ms });
    let sources: Vec<AuditSource> = if !args.log.is_empty() {
        args.log
            .iter()
            .map(|log| AuditSource {
                log: Some(log.clone()),
                server: false,
                socket: args.socket.clone(),
            })
            .collect()
    } else if args.server {
        vec![AuditSource {
            log: None,
            server: true,
            socket: args.socket.clone(),
        }]
    } else {
        return Ok(None);
    };
    let mut names = Vec::new();
    for source in &sources {
        let name = source.log.as_ref().map_or_else(
            || "zt server's shipped decisions".to_owned(),
            |l| l.display().to_string(),
        );
        super::audit::verified(source, |record| traffic.add(record))
            .with_context(|| format!("--log {name}"))?;
        names.push(name);
    }
    if traffic.overflow > 0 {
        anyhow::bail!(
            "{}: more than {} distinct flows in the window ({} records beyond them): narrow it with --since/--until",
            names.join(", "),
            traffic.max_flows(),
            traffic.overflow
        );
    }
    Ok(Some((traffic, names)))
}
