//! Commands that talk to `zt server` through its admin API: `zt entry`,
//! `zt agent`, `zt revoke`, `zt bundle show` and `zt ca rotate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use anyhow::Context as _;
use zt_identity::SpiffeId;
use zt_server::api::{CreateJoinToken, EntryFilter, UpdateEntry};
use zt_server::client::AdminClient;
use zt_store::{Entry, EntrySpec};

use super::args::{AdminArgs, BundleFormat, Output};
use super::timestamp;
use crate::duration;

#[derive(Subcommand)]
pub(crate) enum AuthorityCommand {
    /// Ask zt server to rotate its signing authority now (the old one stays in the
    /// bundle until it expires); every replica on the datastore follows.
    Rotate(AdminArgs),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["spiffe_id", "serial"])))]
pub(crate) struct RevokeArgs {
    /// Every SVID of this SPIFFE ID issued until now.
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// One SVID, by serial (hex, as zt svid inspect prints it).
    #[arg(long)]
    pub(crate) serial: Option<String>,
    /// Why, for the record.
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum X509Command {
    /// Have zt server sign an X.509-SVID for a fresh key made here (the key never
    /// leaves this process): svid.pem, key.pem (0600) and bundle.pem with --write.
    Mint(X509MintArgs),
}

#[derive(Args)]
pub(crate) struct X509MintArgs {
    /// The identity, in the server's trust domain (SPIRE: -spiffeID).
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: SpiffeId,
    /// Lifetime, e.g. 1h (at most 24h; the signing authority's own life cuts it shorter).
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub(crate) ttl: Duration,
    /// A DNS SAN, for peers that check host names (repeatable).
    #[arg(long)]
    pub(crate) dns: Vec<String>,
    /// Write svid.pem, key.pem and bundle.pem to this directory instead of printing them.
    #[arg(long)]
    pub(crate) write: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum BundleCommand {
    /// Print the trust bundle: every authority not yet expired.
    Show(BundleShow),
}

#[derive(Args)]
pub(crate) struct BundleShow {
    /// pem (X.509 authorities only) or jwks (the SPIFFE bundle format, with JWT
    /// keys; SPIRE: -format spiffe) [default: jwks with --output json, else pem].
    #[arg(long, value_enum)]
    pub(crate) format: Option<BundleFormat>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum EntryCommand {
    /// Create a registration entry.
    Create(EntryCreate),
    /// Show one entry (--entry-id) or those matching the filters.
    Show(EntryShow),
    /// Change some fields of an entry; refused if it changed since it was read.
    Update(EntryUpdate),
    /// Delete an entry.
    Delete(EntryTarget),
    /// Count the entries.
    Count(AdminArgs),
}

/// Fields of an entry, for create and update.
#[derive(Args)]
pub(crate) struct EntryFields {
    /// SPIFFE ID of the workload (SPIRE: -spiffeID).
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// SPIFFE ID of the agent or node alias it runs under (SPIRE: -parentID).
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) parent_id: Option<SpiffeId>,
    /// Selector type:value, repeatable, e.g. k8s:ns:production (SPIRE: -selector).
    #[arg(long = "selector", value_parser = zt_store::Selector::parse)]
    pub(crate) selectors: Vec<zt_store::Selector>,
    /// X.509-SVID lifetime (SPIRE: -x509SVIDTTL, seconds or e.g. 1h).
    #[arg(long, value_parser = duration::parse)]
    pub(crate) x509_ttl: Option<Duration>,
    /// Same as --x509-ttl (SPIRE's older -ttl).
    #[arg(long, value_parser = duration::parse, conflicts_with = "x509_ttl")]
    pub(crate) ttl: Option<Duration>,
    /// JWT-SVID lifetime (SPIRE: -jwtSVIDTTL).
    #[arg(long, value_parser = duration::parse)]
    pub(crate) jwt_ttl: Option<Duration>,
    /// DNS name for the X.509-SVID, repeatable (SPIRE: -dns).
    #[arg(long = "dns")]
    pub(crate) dns_names: Vec<String>,
    /// SVIDs of this entry may use the admin API (SPIRE: -admin).
    #[arg(long)]
    pub(crate) admin: bool,
    /// A node alias: agents matching the selectors are grouped under the SPIFFE ID (SPIRE: -node).
    #[arg(long)]
    pub(crate) node: bool,
    /// Unix time after which the entry no longer issues (SPIRE: -entryExpiry).
    #[arg(long)]
    pub(crate) expires_at: Option<u64>,
    /// The Workload API's hint on this entry's SVIDs, by which a workload holding
    /// several picks one (SPIRE: -hint).
    #[arg(long)]
    pub(crate) hint: Option<String>,
}

#[derive(Args)]
pub(crate) struct EntryCreate {
    #[command(flatten)]
    pub(crate) fields: EntryFields,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct EntryShow {
    /// Only this entry (SPIRE: -entryID).
    #[arg(long)]
    pub(crate) entry_id: Option<String>,
    /// Only entries with this SPIFFE ID.
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Only entries under this parent.
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) parent_id: Option<SpiffeId>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct EntryUpdate {
    /// The entry to change (SPIRE: -entryID).
    #[arg(long)]
    pub(crate) entry_id: String,
    /// Refuse unless the entry is still at this revision (default: the one just read).
    #[arg(long)]
    pub(crate) revision: Option<u64>,
    #[command(flatten)]
    pub(crate) fields: EntryFields,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct EntryTarget {
    /// The entry (SPIRE: -entryID).
    #[arg(long)]
    pub(crate) entry_id: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct AgentTarget {
    /// The agent's SPIFFE ID (SPIRE: -spiffeID).
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: SpiffeId,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a one-time join token.
    Create(TokenCreate),
}

#[derive(Args)]
pub(crate) struct TokenCreate {
    /// The agent ID the token grants.
    #[arg(long, value_parser = SpiffeId::parse)]
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Validity of the token.
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    pub(crate) ttl: Duration,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// Default X.509-SVID TTL of new entries, as the seeds require.
const DEFAULT_X509_TTL: u64 = 3600;
/// Default JWT-SVID TTL of new entries.
const DEFAULT_JWT_TTL: u64 = 300;

/// `zt entry create`.
pub fn create(args: EntryCreate) -> anyhow::Result<ExitCode> {
    let fields = args.fields;
    let spiffe_id = fields.spiffe_id.clone().context("--spiffe-id is required")?;
    let parent_id = match (&fields.parent_id, fields.node) {
        (Some(parent), _) => parent.clone(),
        // Node aliases hang off the server itself, as in SPIRE.
        (None, true) => SpiffeId::from_parts(spiffe_id.trust_domain(), "/zt/server")?,
        (None, false) => anyhow::bail!("--parent-id is required (or --node for a node alias entry)"),
    };
    let spec = EntrySpec {
        spiffe_id,
        parent_id,
        selectors: fields.selectors.clone(),
        x509_ttl: fields.x509_ttl().unwrap_or(DEFAULT_X509_TTL),
        jwt_ttl: fields.jwt_ttl.map_or(DEFAULT_JWT_TTL, |d| d.as_secs()),
        dns_names: fields.dns_names.clone(),
        admin: fields.admin,
        node: fields.node,
        expires_at: fields.expires_at,
        hint: fields.hint.clone(),
    };
    let entry = super::admin_call(client(&args.admin).create_entry(&spec))?;
    print_entries(&[entry], args.admin.output);
    if args.admin.output == Output::Text
        && let Some(kind) = spec
            .selectors
            .iter()
            .map(zt_store::Selector::kind)
            .find(|kind| !ATTESTED_SELECTORS.contains(kind))
    {
        println!(
            "Note: nothing in zt attests {kind}: selectors yet (workloads: unix:; agents: join_token:, spiffe_id:); this entry is issued to no one until something does"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Selector types zt's attestors produce (workload and node).
const ATTESTED_SELECTORS: &[&str] = &["unix", "join_token", "spiffe_id"];

/// `zt entry show`.
pub fn show(args: EntryShow) -> anyhow::Result<ExitCode> {
    let client = client(&args.admin);
    let entries = match &args.entry_id {
        Some(id) => vec![super::admin_call(client.entry(id))?],
        None => super::admin_call(client.list_entries(&EntryFilter {
            spiffe_id: args.spiffe_id.as_ref().map(ToString::to_string),
            parent_id: args.parent_id.as_ref().map(ToString::to_string),
        }))?,
    };
    print_entries(&entries, args.admin.output);
    Ok(ExitCode::SUCCESS)
}

/// `zt entry update`: changes the given fields, keeps the rest, and refuses if the
/// entry changed since it was read (no lost update).
pub fn update(args: EntryUpdate) -> anyhow::Result<ExitCode> {
    let client = client(&args.admin);
    let current = super::admin_call(client.entry(&args.entry_id))?;
    let fields = args.fields;
    let mut spec = current.spec.clone();
    if let Some(id) = fields.spiffe_id.clone() {
        spec.spiffe_id = id;
    }
    if let Some(id) = fields.parent_id.clone() {
        spec.parent_id = id;
    }
    if !fields.selectors.is_empty() {
        spec.selectors = fields.selectors.clone();
    }
    if let Some(ttl) = fields.x509_ttl() {
        spec.x509_ttl = ttl;
    }
    if let Some(ttl) = fields.jwt_ttl {
        spec.jwt_ttl = ttl.as_secs();
    }
    if !fields.dns_names.is_empty() {
        spec.dns_names = fields.dns_names.clone();
    }
    spec.admin |= fields.admin;
    spec.node |= fields.node;
    if fields.expires_at.is_some() {
        spec.expires_at = fields.expires_at;
    }
    if fields.hint.is_some() {
        spec.hint.clone_from(&fields.hint);
    }
    let revision = args.revision.unwrap_or(current.revision);
    let entry = super::admin_call(client.update_entry(&args.entry_id, &UpdateEntry { revision, spec }))?;
    print_entries(&[entry], args.admin.output);
    Ok(ExitCode::SUCCESS)
}

/// `zt entry delete`.
pub fn delete(args: EntryTarget) -> anyhow::Result<ExitCode> {
    let entry = super::admin_call(client(&args.admin).delete_entry(&args.entry_id))?;
    match args.admin.output {
        Output::Json => print_entries(&[entry], Output::Json),
        Output::Text => println!("deleted entry {} ({})", entry.id, entry.spec.spiffe_id),
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt entry count`.
pub fn count(admin: AdminArgs) -> anyhow::Result<ExitCode> {
    let count = super::admin_call(client(&admin).count_entries())?;
    match admin.output {
        Output::Json => println!("{}", serde_json::json!({ "count": count })),
        Output::Text => println!("{count} registration entries"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt agent token create`.
pub fn create_token(args: TokenCreate) -> anyhow::Result<ExitCode> {
    let request = CreateJoinToken {
        spiffe_id: args.spiffe_id.as_ref().map(ToString::to_string),
        ttl_secs: args.ttl.as_secs(),
    };
    let token = super::admin_call(client(&args.admin).create_join_token(&request))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&token)?),
        Output::Text => {
            println!("Token: {}", token.token);
            println!("Expires: {}", timestamp(token.expires_at));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt bundle show`.
pub fn show_bundle(args: BundleShow) -> anyhow::Result<ExitCode> {
    let format = match (args.format, args.admin.output) {
        (Some(BundleFormat::Pem), Output::Json) => {
            anyhow::bail!("--format pem with --output json: JSON output is the SPIFFE bundle (--format jwks)")
        }
        (Some(BundleFormat::Pem), Output::Text) | (None, Output::Text) => zt_server::api::BundleFormat::Pem,
        (Some(BundleFormat::Jwks), _) | (None, Output::Json) => zt_server::api::BundleFormat::Jwks,
    };
    print!("{}", super::admin_call(client(&args.admin).bundle(format))?);
    Ok(ExitCode::SUCCESS)
}

/// `zt ca rotate`.
pub fn rotate_ca(admin: AdminArgs) -> anyhow::Result<ExitCode> {
    let rotated = super::admin_call(client(&admin).rotate_ca())?;
    match admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rotated)?),
        Output::Text => println!(
            "rotated: now signing with CA {} (expires {}); {} authorities in the bundle",
            rotated.serial,
            timestamp(rotated.not_after),
            rotated.authorities
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt revoke`.
pub fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let request = zt_server::api::Revoke {
        serial: args.serial.clone(),
        spiffe_id: args.spiffe_id.as_ref().map(ToString::to_string),
        reason: args.reason.clone(),
    };
    let revocation = super::admin_call(client(&args.admin).revoke(&request))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&revocation)?),
        Output::Text => match &revocation.revoked {
            zt_store::Revoked::Serial(serial) => println!("revoked SVID serial {serial}"),
            zt_store::Revoked::SpiffeId {
                spiffe_id,
                issued_before,
            } => {
                println!(
                    "revoked every SVID of {spiffe_id} issued before {}",
                    timestamp(*issued_before)
                );
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt x509 mint`.
pub fn mint_x509(args: X509MintArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.admin);
    let request = zt_server::client::MintRequest {
        spiffe_id: &args.spiffe_id,
        ttl: args.ttl,
        dns_names: &args.dns,
    };
    let Some(dir) = &args.write else {
        let (minted, key_pem) = super::admin_call(client.mint_x509_svid_for_new_key(&request))?;
        match args.admin.output {
            Output::Json => {
                let mut value = serde_json::to_value(&minted)?;
                value["key_pem"] = key_pem.into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            Output::Text => {
                println!("X509-SVID:\n{}", minted.chain_pem);
                println!("Private key:\n{key_pem}");
                println!("Root CAs:\n{}", minted.bundle_pem);
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    let minted = super::admin_call(client.mint_x509_svid_to_dir(&request, dir))?;
    println!(
        "{}: svid.pem, key.pem, bundle.pem for {} (serial {}, expires {})",
        dir.display(),
        args.spiffe_id,
        minted.serial,
        timestamp(minted.expires_at)
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt agent list`.
pub fn list_agents(admin: AdminArgs) -> anyhow::Result<ExitCode> {
    let agents = super::admin_call(client(&admin).list_agents())?;
    print_agents(&agents, admin.output);
    Ok(ExitCode::SUCCESS)
}

/// `zt agent show`.
pub fn show_agent(args: AgentTarget) -> anyhow::Result<ExitCode> {
    let agent = super::admin_call(client(&args.admin).agent(&args.spiffe_id.to_string()))?;
    print_agents(&[agent], args.admin.output);
    Ok(ExitCode::SUCCESS)
}

/// `zt agent evict` and `zt agent ban`.
pub fn evict_agent(args: AgentTarget, ban: bool) -> anyhow::Result<ExitCode> {
    let agent = super::admin_call(client(&args.admin).evict_agent(&args.spiffe_id.to_string(), ban))?;
    let verb = if ban { "banned" } else { "evicted" };
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&agent)?),
        Output::Text => println!(
            "{verb} agent {} and revoked its SVID {}",
            agent.spiffe_id, agent.serial
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_agents(agents: &[zt_store::Agent], output: Output) {
    if output == Output::Json {
        println!("{}", serde_json::json!({ "agents": agents }));
        return;
    }
    if agents.is_empty() {
        println!("no agents");
    }
    for (i, agent) in agents.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("SPIFFE ID        : {}", agent.spiffe_id);
        println!("SVID serial      : {}", agent.serial);
        println!("SVID expires at  : {}", timestamp(agent.not_after));
        println!("Attested at      : {}", timestamp(agent.attested_at));
        for selector in &agent.selectors {
            println!("Selector         : {selector}");
        }
        if agent.banned {
            println!("Banned           : true");
        }
    }
}

impl EntryFields {
    /// `--x509-ttl`, or SPIRE's older `-ttl`.
    fn x509_ttl(&self) -> Option<u64> {
        self.x509_ttl.or(self.ttl).map(|d| d.as_secs())
    }
}

fn client(admin: &AdminArgs) -> AdminClient {
    AdminClient::new(&admin.socket)
}

fn print_entries(entries: &[Entry], output: Output) {
    if output == Output::Json {
        let doc = serde_json::json!({ "entries": entries });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    if entries.is_empty() {
        println!("no entries");
    }
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let spec = &entry.spec;
        println!("Entry ID         : {}", entry.id);
        println!("SPIFFE ID        : {}", spec.spiffe_id);
        println!("Parent ID        : {}", spec.parent_id);
        println!("Revision         : {}", entry.revision);
        println!("X509-SVID TTL    : {}", spec.x509_ttl);
        println!("JWT-SVID TTL     : {}", spec.jwt_ttl);
        for selector in &spec.selectors {
            println!("Selector         : {selector}");
        }
        for dns in &spec.dns_names {
            println!("DNS name         : {dns}");
        }
        if spec.admin {
            println!("Admin            : true");
        }
        if spec.node {
            println!("Node alias       : true");
        }
        if let Some(at) = spec.expires_at {
            println!("Expires at       : {}", timestamp(at));
        }
        if let Some(hint) = &spec.hint {
            println!("Hint             : {hint}");
        }
    }
}
