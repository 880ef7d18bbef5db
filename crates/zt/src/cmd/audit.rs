//! `zt audit`: the decision log's chain and signed checkpoints verified, its
//! records queried — a proxy's file, or the copies proxies shipped to zt
//! server — and the keys that sign checkpoints shown or made.

use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zt_audit::cosignature::CosignatureVerifier;
use zt_audit::note::{SigningKey, VerifierKey};
use zt_audit::{Chain, Head, Record};
use zt_policy::matching::StringMatch;

use super::args::{CheckpointArgs, DEFAULT_ADMIN_SOCKET};

#[derive(Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the hash chain and, with --key, the signed checkpoints: an edited, deleted
    /// or reordered record is named by line, a rewritten history by the first checkpoint
    /// it contradicts.
    Verify(AuditVerifyArgs),
    /// Print the records (JSON lines) that match every filter given; the chain is verified on the way.
    Query(AuditQueryArgs),
    /// The keys that sign decision logs' checkpoints.
    #[command(subcommand)]
    Key(AuditKeyCommand),
    /// RFC 9162 proofs from a log's Merkle tree, as JSON (hashes in base64): that a record
    /// is in the tree a checkpoint signs, or that a later tree extends an earlier one.
    Prove(AuditProveArgs),
    /// Print zt server's witness key (NAME+KEYID+BASE64, type 0x04), which verifies the
    /// checkpoints it cosigned: pin it with zt audit verify LOG --witness-key.
    WitnessKey(AuditServerArgs),
    /// Forget the decision log key zt server pinned for a workload on first use, so that
    /// the next key it presents is pinned (after the workload's log key was replaced).
    ForgetKey(AuditForgetKeyArgs),
}

/// zt server's admin socket.
#[derive(Args)]
pub(crate) struct AuditServerArgs {
    /// The server's admin socket.
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) socket: PathBuf,
}

#[derive(Args)]
pub(crate) struct AuditForgetKeyArgs {
    /// The workload's SPIFFE ID (the source of its shipped decisions).
    pub(crate) source: String,
    #[command(flatten)]
    pub(crate) server: AuditServerArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("proof").required(true).args(["inclusion", "consistency"])))]
pub(crate) struct AuditProveArgs {
    /// A decision log file; its chain and checkpoints are verified first.
    pub(crate) log: PathBuf,
    /// The record (its seq) to prove included in the tree of --size records.
    #[arg(long)]
    pub(crate) inclusion: Option<u64>,
    /// The tree size for --inclusion [default: the last checkpoint's].
    #[arg(long, requires = "inclusion")]
    pub(crate) size: Option<u64>,
    /// OLD NEW: prove that the tree of the first NEW records extends that of the first OLD.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    pub(crate) consistency: Option<Vec<u64>>,
}

#[derive(Subcommand)]
pub(crate) enum AuditKeyCommand {
    /// Print the public verifier key (NAME+KEYID+BASE64) of a signing key file, to pin
    /// with zt audit verify --key.
    Show(AuditKeyShowArgs),
    /// Create a signing key file (mode 0600) before the first decision is logged.
    Create(AuditKeyCreateArgs),
}

#[derive(Args)]
pub(crate) struct AuditKeyShowArgs {
    /// The signing key file (zt proxy --decision-log-key; default LOG.key).
    pub(crate) file: PathBuf,
}

#[derive(Args)]
pub(crate) struct AuditKeyCreateArgs {
    /// Where to write it; an existing file is not replaced.
    pub(crate) file: PathBuf,
    /// The key's name, which is also the origin line of every checkpoint it signs
    /// (no spaces or '+'), e.g. example.org/decisions/billing.
    #[arg(long)]
    pub(crate) name: String,
}

/// Which decision log: a proxy's file, or the copies zt server holds.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["log", "server"])))]
pub(crate) struct AuditSource {
    /// A decision log file (zt proxy --decision-log).
    pub(crate) log: Option<PathBuf>,
    /// The records proxies shipped to zt server, one chain per workload.
    #[arg(long)]
    pub(crate) server: bool,
    /// The server's admin socket (with --server).
    #[arg(long, env = "ZT_ADMIN_SOCKET", default_value = DEFAULT_ADMIN_SOCKET)]
    pub(crate) socket: PathBuf,
}

#[derive(Args)]
pub(crate) struct AuditVerifyArgs {
    #[command(flatten)]
    pub(crate) source: AuditSource,
    /// The verifier key (NAME+KEYID+BASE64, from zt audit key show) that must have signed
    /// the log's checkpoints (LOG.checkpoints); without it, nothing shows that the log
    /// was not rewritten by whoever can write it.
    #[arg(long, conflicts_with_all = ["key_file", "server"])]
    pub(crate) key: Option<String>,
    /// A file holding the verifier key.
    #[arg(long, conflicts_with = "server")]
    pub(crate) key_file: Option<PathBuf>,
    /// zt server's witness key (zt audit witness-key): the checkpoint in LOG.cosigned must
    /// carry its cosignature and match the log, which shows that no record it covers was
    /// rewritten since zt server saw it.
    #[arg(long, conflicts_with = "server")]
    pub(crate) witness_key: Option<String>,
}

#[derive(Args)]
pub(crate) struct AuditQueryArgs {
    #[command(flatten)]
    pub(crate) source: AuditSource,
    /// The caller's SPIFFE ID (`*` wildcards at the ends, as in policies).
    #[arg(long)]
    pub(crate) principal: Option<String>,
    /// ALLOW or DENY.
    #[arg(long, value_parser = ["ALLOW", "DENY"])]
    pub(crate) decision: Option<String>,
    /// The deciding policy, namespace/name; `none` for decisions no policy made.
    #[arg(long)]
    pub(crate) policy: Option<String>,
    /// Records at or after this moment: RFC 3339, Unix seconds, or a duration ago (24h).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// Records before this moment: RFC 3339, Unix seconds, or a duration ago.
    #[arg(long)]
    pub(crate) until: Option<String>,
}

/// Opens a decision log whose checkpoints are signed with `--decision-log-key`
/// (default `LOG.key`, created on first use). Errors name the flag.
pub fn open_log(path: &Path, args: &CheckpointArgs) -> anyhow::Result<zt_audit::Writer> {
    let key_path = args
        .decision_log_key
        .clone()
        .unwrap_or_else(|| zt_audit::signed::default_key_path(path));
    let key = zt_audit::signed::load_or_create_key(&key_path)
        .map_err(|e| anyhow::anyhow!("--decision-log-key {e}"))?;
    zt_audit::Writer::open_signed(path, key, args.policy()).map_err(|e| anyhow::anyhow!("--decision-log {e}"))
}

/// Verifies every chain of `source` (and a file's checkpoints), showing each
/// verified record to `visit`; returns each chain's name and head.
pub(crate) fn verified(
    source: &AuditSource,
    visit: impl FnMut(&Record),
) -> anyhow::Result<Vec<(String, Head)>> {
    match &source.log {
        Some(log) => Ok(vec![verified_log(log, visit)?]),
        None => verified_server(&source.socket, visit),
    }
}

/// Verifies a log file's chain and its checkpoints' roots (not their
/// signatures: zt audit verify --key), showing each record to `visit`; the
/// error names the first line or checkpoint that fails.
pub(crate) fn verified_log(log: &Path, visit: impl FnMut(&Record)) -> anyhow::Result<(String, Head)> {
    let verified = zt_audit::signed::verify(log, None, visit)?;
    Ok((log.display().to_string(), verified.head))
}

/// Verifies every chain zt server holds (one per workload), showing each
/// record to `visit`.
pub(crate) fn verified_server(
    socket: &Path,
    mut visit: impl FnMut(&Record),
) -> anyhow::Result<Vec<(String, Head)>> {
    let client = zt_server::client::AdminClient::new(socket);
    let mut chains: Vec<(String, Chain)> = Vec::new();
    let mut after = (String::new(), 0u64);
    loop {
        let page = super::admin_call(client.decisions((&after.0, after.1)))?;
        if page.is_empty() {
            break;
        }
        for shipped in page {
            let record: Record = serde_json::from_str(&shipped.record)
                .map_err(|e| anyhow::anyhow!("zt server, {}: not a record: {e}", shipped.source))?;
            if chains.last().is_none_or(|(name, _)| *name != shipped.source) {
                chains.push((shipped.source.clone(), Chain::default()));
            }
            if let Some((name, chain)) = chains.last_mut() {
                chain
                    .extend(&record)
                    .map_err(|e| anyhow::anyhow!("zt server, {name}, record {}: {e}", record.seq))?;
            }
            visit(&record);
            after = (shipped.source, record.seq);
        }
    }
    Ok(chains
        .into_iter()
        .map(|(name, chain)| (name, chain.head().clone()))
        .collect())
}

/// `zt audit verify LOG [--key K] | --server`: each chain's record count and
/// head hash, or the first broken record; for a file, its checkpoints, and
/// plainly how far the result can be trusted.
pub fn verify(args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let key = match (&args.key, &args.key_file) {
        (Some(text), _) => {
            Some(VerifierKey::parse(text).map_err(|e| anyhow::anyhow!("--key {text:?}: {e}"))?)
        }
        (None, Some(file)) => Some(read_verifier(file)?),
        (None, None) => None,
    };
    let witness = args
        .witness_key
        .as_deref()
        .map(|text| {
            CosignatureVerifier::parse(text).map_err(|e| anyhow::anyhow!("--witness-key {text:?}: {e}"))
        })
        .transpose()?;
    if let Some(log) = &args.source.log {
        return verify_file(log, key.as_ref(), witness.as_ref());
    }
    let chains = verified(&args.source, |_| {})?;
    if chains.is_empty() {
        println!("zt server: no decisions shipped yet");
    }
    for (name, head) in &chains {
        println!(
            "{name}: {} records, chain intact, head {}",
            head.records, head.hash
        );
    }
    if !chains.is_empty() {
        println!(
            "zt server holds chains and cosigns the checkpoints proxies ship with them: check a \
             proxy's own log against both keys (zt audit verify LOG --key KEY --witness-key WKEY)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A verifier key from `--key-file`; a signing key there is refused, not used.
fn read_verifier(file: &Path) -> anyhow::Result<VerifierKey> {
    let text = std::fs::read_to_string(file).with_context(|| format!("--key-file {}", file.display()))?;
    if text.trim_start().starts_with("PRIVATE+KEY+") {
        anyhow::bail!(
            "--key-file {}: holds a private signing key; give its public half (zt audit key show {})",
            file.display(),
            file.display()
        );
    }
    VerifierKey::parse(&text).map_err(|e| anyhow::anyhow!("--key-file {}: {e}", file.display()))
}

/// Verifies a log file and its checkpoints (and the one zt server cosigned,
/// with a witness key), and says what that proves.
fn verify_file(
    log: &Path,
    key: Option<&VerifierKey>,
    witness: Option<&CosignatureVerifier>,
) -> anyhow::Result<ExitCode> {
    let (verified, witnessed) = match witness {
        Some(witness) => {
            let (verified, witnessed) = zt_audit::signed::verify_witnessed(log, key, witness, |_| {})
                .map_err(|e| match e {
                    // The cosigned checkpoint's own faults name the flag; the log's do not.
                    e @ zt_audit::AuditError::Witness { .. } => {
                        anyhow::anyhow!("--witness-key {witness}: {e}")
                    }
                    e => e.into(),
                })?;
            (verified, Some(witnessed))
        }
        None => (zt_audit::signed::verify(log, key, |_| {})?, None),
    };
    let (records, covered) = (verified.head.records, verified.covered);
    println!(
        "{}: {records} records, chain intact, head {}",
        log.display(),
        verified.head.hash
    );
    let checkpoints = zt_audit::signed::checkpoints_path(log);
    let uncovered = if covered == records {
        "every record is covered".to_owned()
    } else {
        format!(
            "the last {} records (after record {covered}) are not yet covered by a checkpoint",
            records - covered
        )
    };
    match key {
        Some(key) if verified.checkpoints == 0 && records > 0 => {
            let why = if verified.checkpoints_file {
                "holds none"
            } else {
                "is missing"
            };
            anyhow::bail!(
                "{}: no signed checkpoints ({} {why}): the log's integrity cannot be established                  with key {key}; anyone who can write the file can rewrite it and its chain",
                log.display(),
                checkpoints.display()
            );
        }
        Some(key) => println!(
            "{} signed checkpoints verified with key {key}; {uncovered}",
            verified.checkpoints
        ),
        None if witnessed.is_some() => {
            println!("the writer's checkpoint signatures were not checked (pin its key with --key)")
        }
        None => {
            if verified.checkpoints > 0 {
                println!(
                    "{} checkpoints match the records, but their signatures were not checked; {uncovered}",
                    verified.checkpoints
                );
            }
            println!(
                "not verified: a hash chain proves nothing against someone who can write the file;                  pin the writer's key (zt audit key show {}) and give it with --key",
                zt_audit::signed::default_key_path(log).display()
            );
        }
    }
    if let Some(witnessed) = witnessed {
        let size = witnessed.size;
        println!(
            "witnessed by {} up to record {size} (cosigned {}): those records are the ones zt server holds",
            witnessed.witness,
            super::timestamp(witnessed.time)
        );
        if size < records {
            let vouched = if key.is_some() {
                "only the writer's own signature vouches for those it covers"
            } else {
                "nothing independent vouches for them"
            };
            println!(
                "the last {} records (after record {size}) are not witnessed: {vouched}",
                records - size
            );
        } else {
            println!("every record is witnessed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt audit witness-key`: zt server's cosignature verifier key.
pub fn witness_key(args: AuditServerArgs) -> anyhow::Result<ExitCode> {
    let client = zt_server::client::AdminClient::new(&args.socket);
    let key = super::admin_call(client.witness_key())?;
    println!("{}", key.verifier_key);
    Ok(ExitCode::SUCCESS)
}

/// `zt audit forget-key SOURCE`: zt server pins the next log key the source presents.
pub fn forget_key(args: AuditForgetKeyArgs) -> anyhow::Result<ExitCode> {
    let client = zt_server::client::AdminClient::new(&args.server.socket);
    let forgotten = super::admin_call(client.forget_source_key(&args.source))?;
    println!(
        "{}: forgot decision log key {}; the next key it presents is pinned",
        forgotten.source, forgotten.verifier_key
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt audit prove LOG --inclusion SEQ [--size N] | --consistency OLD NEW`:
/// the proof as one JSON object, checked before it is printed.
pub fn prove(args: AuditProveArgs) -> anyhow::Result<ExitCode> {
    use base64::Engine as _;
    use zt_audit::merkle;
    let b64 = |hash: &merkle::Hash| base64::engine::general_purpose::STANDARD.encode(hash);
    let mut leaves = Vec::new();
    let verified = zt_audit::signed::verify(&args.log, None, |record| {
        leaves.push(merkle::leaf_hash(&record.leaf().unwrap_or_default()));
    })?;
    let records = verified.head.records;
    let prefix = |flag: &str, size: u64| -> anyhow::Result<&[merkle::Hash]> {
        usize::try_from(size)
            .ok()
            .and_then(|n| leaves.get(..n))
            .ok_or_else(|| anyhow::anyhow!("{flag} {size}: the log holds {records} records"))
    };
    let proof = if let Some(seq) = args.inclusion {
        let size = args.size.unwrap_or(verified.covered);
        if seq == 0 || seq > size {
            anyhow::bail!(
                "--inclusion {seq}: not in a tree of {size} records (--size, or the last checkpoint's)"
            );
        }
        let tree = prefix("--size", size)?;
        let index = seq - 1;
        let path = merkle::inclusion_proof(index, tree)?;
        let root = merkle::root_of(tree);
        let leaf = tree.get(usize::try_from(index)?).copied().unwrap_or_default();
        anyhow::ensure!(
            merkle::verify_inclusion(index, size, &leaf, &path, &root),
            "the inclusion proof does not verify"
        );
        serde_json::json!({
            "seq": seq, "leaf_index": index, "tree_size": size, "leaf_hash": b64(&leaf),
            "root_hash": b64(&root), "inclusion_path": path.iter().map(b64).collect::<Vec<_>>(),
        })
    } else {
        let (old, new) = match args.consistency.as_deref() {
            Some(&[old, new]) => (old, new),
            _ => anyhow::bail!("--consistency takes OLD NEW"),
        };
        if old > new {
            anyhow::bail!("--consistency {old} {new}: OLD is larger than NEW");
        }
        let tree = prefix("--consistency", new)?;
        let path = merkle::consistency_proof(old, tree)?;
        let old_root = merkle::root_of(prefix("--consistency", old)?);
        let new_root = merkle::root_of(tree);
        anyhow::ensure!(
            merkle::verify_consistency(old, new, &old_root, &new_root, &path),
            "the consistency proof does not verify"
        );
        serde_json::json!({
            "old_size": old, "new_size": new, "old_root_hash": b64(&old_root),
            "new_root_hash": b64(&new_root), "consistency_path": path.iter().map(b64).collect::<Vec<_>>(),
        })
    };
    println!("{proof}");
    Ok(ExitCode::SUCCESS)
}

/// `zt audit key show FILE`: the verifier key of a signing key file.
pub fn key_show(args: AuditKeyShowArgs) -> anyhow::Result<ExitCode> {
    let key = zt_audit::signed::load_key(&args.file)?;
    println!("{}", key.verifier());
    Ok(ExitCode::SUCCESS)
}

/// `zt audit key create FILE --name NAME`: a new signing key, 0600; prints its
/// verifier key.
pub fn key_create(args: AuditKeyCreateArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::generate(&args.name).map_err(|e| anyhow::anyhow!("--name {:?}: {e}", args.name))?;
    if !zt_audit::signed::create_key_file(&args.file, &key)? {
        anyhow::bail!("{}: already exists; it is not replaced", args.file.display());
    }
    println!("{}", key.verifier());
    Ok(ExitCode::SUCCESS)
}

/// A moment given as RFC 3339, Unix seconds, or a duration ago (`90s`, `30m`,
/// `24h`, `7d`), in Unix milliseconds.
pub(crate) fn moment(flag: &str, text: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let unit = |suffix: char| match suffix {
        's' => Some(1_000u64),
        'm' => Some(60_000),
        'h' => Some(3_600_000),
        'd' => Some(86_400_000),
        _ => None,
    };
    if let Some(suffix) = text.chars().last()
        && let Some(ms) = unit(suffix)
        && let Ok(count) = text[..text.len() - 1].parse::<u64>()
    {
        return Ok(zt_identity::clock::unix_millis().saturating_sub(count.saturating_mul(ms)));
    }
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|e| {
            anyhow::anyhow!(
                "{flag} {text:?}: neither RFC 3339, Unix seconds, nor a duration ago such as 24h ({e})"
            )
        })?;
    u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| anyhow::anyhow!("{flag} {text:?}: before 1970"))
}

/// `zt audit query LOG | --server [filters]`: matching records, one JSON line
/// each; the chain is verified on the way.
pub fn query(args: AuditQueryArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(|t| moment("--since", t)).transpose()?;
    let until = args.until.as_deref().map(|t| moment("--until", t)).transpose()?;
    let principal = args.principal.as_deref().map(|p| StringMatch::parse(p, false));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written: std::io::Result<()> = Ok(());
    verified(&args.source, |record| {
        let wanted = principal
            .as_ref()
            .is_none_or(|p| record.source_principal.as_deref().is_some_and(|v| p.matches(v)))
            && args.decision.as_ref().is_none_or(|d| *d == record.decision)
            && args.policy.as_deref().is_none_or(|p| match p {
                "none" => record.policy.is_none(),
                p => record.policy.as_deref() == Some(p),
            })
            && since.is_none_or(|t| record.time_ms >= t)
            && until.is_none_or(|t| record.time_ms < t);
        if wanted && written.is_ok() {
            written = serde_json::to_writer(&mut out, record)
                .map_err(std::io::Error::other)
                .and_then(|()| std::io::Write::write_all(&mut out, b"\n"));
        }
    })?;
    written?;
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
