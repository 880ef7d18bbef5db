//! `zt device`: device trust — enrollment tokens and the inventory (admin
//! socket), enrolling this machine and its posture agent, and compliance
//! policy tests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zt_device::agent::{AgentSettings, DeviceDir, Enrollment};
use zt_device::compliance::{self, Policy};
use zt_device::facts::Collector;
use zt_device::key::{KeyChoice, TpmLocation};
use zt_server::api::{CreateDeviceToken, DeviceInfo};
use zt_server::client::{AdminClient, DeviceAction};

use super::args::{AdminArgs, Output, parse_from_str};
use super::timestamp;
use crate::duration;

/// The device's directory when `--dir` is not given.
const DEFAULT_DEVICE_DIR: &str = "zt-device";

#[derive(Subcommand)]
pub(crate) enum DeviceCommand {
    /// One-time enrollment tokens.
    #[command(subcommand)]
    Token(DeviceTokenCommand),
    /// Enroll this machine: create its key (in the TPM when there is one) and get its certificate.
    Enroll(EnrollArgs),
    /// Collect this machine's posture and report it to zt server, signed, every interval.
    Agent(AgentArgs),
    /// List enrolled devices with their tiers.
    List(AdminArgs),
    /// Show one device: its facts, its tier and why, its newest events.
    Show(DeviceId),
    /// Approve a device enrolled with a token that needs approval.
    Approve(DeviceId),
    /// Revoke a device: its certificate and reports are refused from now on.
    Revoke(DeviceId),
    /// Delete a device and its events.
    Delete(DeviceId),
    /// Compliance policies.
    #[command(subcommand)]
    Policy(DevicePolicyCommand),
}

#[derive(Subcommand)]
pub(crate) enum DeviceTokenCommand {
    /// Create a one-time enrollment token.
    Create(DeviceTokenCreate),
}

#[derive(Subcommand)]
pub(crate) enum DevicePolicyCommand {
    /// Run a table of cases against a compliance policy.
    Test(PolicyTest),
}

#[derive(Args)]
pub(crate) struct DeviceTokenCreate {
    /// The person the device is issued to.
    #[arg(long)]
    owner: String,
    /// How long the token is valid (at most 24h).
    #[arg(long, default_value = "15m", value_parser = duration::parse)]
    ttl: Duration,
    /// Devices enrolled with this token wait for `zt device approve`.
    #[arg(long)]
    approval: bool,
    /// FOR TESTS ONLY: devices enrolled with this token may report facts from
    /// a `--facts-override` file.
    #[arg(long)]
    test_mode: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct DeviceId {
    /// The device's ID.
    id: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct EnrollArgs {
    /// The one-time token from `zt device token create` (URL-safe base64: it
    /// may begin with `-`).
    #[arg(
        long,
        env = "ZT_DEVICE_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    token: String,
    /// zt server's device API, `https://host:port`.
    #[arg(long)]
    server: String,
    /// The trust bundle (PEM) to verify the server with (`zt bundle show`).
    #[arg(long)]
    bundle: PathBuf,
    /// Where the device's key, certificate and identity are kept.
    #[arg(long, env = "ZT_DEVICE_DIR", default_value = DEFAULT_DEVICE_DIR)]
    dir: PathBuf,
    /// Where the key is made: `tpm` (refused without one), `software`, or
    /// `auto` (the TPM when there is one). The TPM is `/dev/tpmrm0`, or
    /// the TCTI in `ZT_TPM_TCTI`.
    #[arg(long, default_value = "auto", value_parser = parse_from_str::<KeyChoice>)]
    key: KeyChoice,
}

#[derive(Args)]
pub(crate) struct AgentArgs {
    /// The enrolled device's directory.
    #[arg(long, env = "ZT_DEVICE_DIR", default_value = DEFAULT_DEVICE_DIR)]
    dir: PathBuf,
    /// How often a report is sent: keep it under the policy's heartbeat window.
    #[arg(long, default_value = "2s", value_parser = duration::parse)]
    interval: Duration,
    /// How often facts are collected again.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    collect_interval: Duration,
    /// A process that must be running (an EDR, say); repeatable.
    #[arg(long = "require-process", value_name = "NAME")]
    require_processes: Vec<String>,
    /// FOR TESTS ONLY: facts read from this JSON or YAML file (re-read for
    /// every report) instead of observed. zt server refuses them unless the
    /// device was enrolled with a `--test-mode` token.
    #[arg(long, value_name = "FILE")]
    facts_override: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct PolicyTest {
    /// The compliance policy (YAML).
    policy: PathBuf,
    /// The cases (YAML).
    cases: PathBuf,
}

fn client(admin: &AdminArgs) -> AdminClient {
    AdminClient::new(&admin.socket)
}

/// `zt device token create`.
pub fn token_create(args: DeviceTokenCreate) -> anyhow::Result<ExitCode> {
    let request = CreateDeviceToken {
        owner: args.owner,
        ttl_secs: args.ttl.as_secs(),
        approval: args.approval,
        test_mode: args.test_mode,
    };
    let token = super::admin_call(client(&args.admin).create_device_token(&request))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&token)?),
        Output::Text => {
            println!("{}", token.token);
            eprintln!(
                "one-time device enrollment token for {}, valid until {}{}",
                request.owner,
                timestamp(token.expires_at),
                if request.approval {
                    "; the device waits for zt device approve"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt device list`.
pub fn list(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let devices = super::admin_call(client(&args).devices())?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "devices": devices }))?
        ),
        Output::Text if devices.is_empty() => println!("no devices"),
        Output::Text => {
            println!(
                "{:<32}  {:<12}  {:<8}  {:<8}  {:<10}  LAST SEEN",
                "ID", "OWNER", "STATUS", "KEY", "TIER"
            );
            for info in &devices {
                let d = &info.device;
                println!(
                    "{:<32}  {:<12}  {:<8}  {:<8}  {:<10}  {}",
                    d.id,
                    d.owner,
                    d.status,
                    d.key_type,
                    d.tier,
                    d.last_seen.map_or_else(|| "never".to_owned(), timestamp)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt device show`.
pub fn show(args: DeviceId) -> anyhow::Result<ExitCode> {
    let info = super::admin_call(client(&args.admin).device(&args.id))?;
    print_device(&info, args.admin.output)
}

/// `zt device approve|revoke|delete`.
pub fn act(args: DeviceId, action: DeviceAction) -> anyhow::Result<ExitCode> {
    let info = super::admin_call(client(&args.admin).device_action(&args.id, action))?;
    let done = match action {
        DeviceAction::Approve => "approved",
        DeviceAction::Revoke => "revoked",
        DeviceAction::Delete => "deleted",
    };
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&info)?),
        Output::Text => println!("device {} {done}", info.device.id),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_device(info: &DeviceInfo, output: Output) -> anyhow::Result<ExitCode> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let d = &info.device;
    println!("id:          {}", d.id);
    println!("spiffe id:   {}", info.spiffe_id);
    println!("owner:       {}", d.owner);
    println!("status:      {}", d.status);
    println!("key:         {}", d.key_type);
    println!("tier:        {}", d.tier);
    for reason in &d.tier_reasons {
        println!("  because    {reason}");
    }
    println!("enrolled:    {}", timestamp(d.enrolled_at));
    println!(
        "last seen:   {}",
        d.last_seen.map_or_else(|| "never".to_owned(), timestamp)
    );
    if let Some(serial) = &d.cert_serial {
        println!(
            "certificate: {serial} until {}",
            d.cert_not_after.map_or_else(String::new, timestamp)
        );
    }
    for (name, value) in &d.hardware {
        println!("hardware:    {name} = {value}");
    }
    if let Some(facts) = d.facts.as_object() {
        for (name, fact) in facts {
            let value = fact.get("value").map_or_else(
                || "unknown".to_owned(),
                |v| {
                    if v.is_null() {
                        "unknown".to_owned()
                    } else {
                        v.to_string()
                    }
                },
            );
            println!("fact:        {name} = {value}");
        }
    }
    for event in &info.events {
        println!(
            "event:       {} {} {}",
            event.at_ms / 1000,
            event.kind,
            event.detail
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt device enroll`.
pub fn enroll(args: EnrollArgs) -> anyhow::Result<ExitCode> {
    let bundle =
        std::fs::read(&args.bundle).with_context(|| format!("--bundle {}", args.bundle.display()))?;
    let collector = Collector::new(Vec::new(), env!("CARGO_PKG_VERSION"));
    let enrolled = super::admin_call(zt_device::agent::enroll(Enrollment {
        dir: &args.dir,
        server: &args.server,
        bundle_pem: &bundle,
        token: &args.token,
        key: args.key,
        tpm: &TpmLocation::from_env(),
        hardware: collector.hardware(),
    }))?;
    println!("{}", enrolled.identity.device_id);
    eprintln!(
        "enrolled {} for {} with a {} key in {}{}",
        enrolled.identity.spiffe_id,
        enrolled.identity.owner,
        enrolled.key_type,
        args.dir.display(),
        if enrolled.status == "pending" {
            format!(
                "; it waits for approval: zt device approve {}",
                enrolled.identity.device_id
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt device agent`.
pub fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    super::init_logging("info");
    let device = DeviceDir::open(&args.dir, &TpmLocation::from_env())?;
    eprintln!(
        "zt device agent: {} ({} key) reporting to {} every {:?}",
        device.identity().spiffe_id,
        device.key().kind(),
        device.identity().server,
        args.interval
    );
    let settings = AgentSettings {
        interval: args.interval,
        collect_interval: args.collect_interval,
        collector: Collector::new(args.require_processes, env!("CARGO_PKG_VERSION")),
        facts_override: args.facts_override,
    };
    super::runtime()?.block_on(zt_device::agent::run(device, settings, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt device policy test`.
pub fn policy_test(args: PolicyTest) -> anyhow::Result<ExitCode> {
    let policy = Policy::load(&args.policy)?;
    let cases = compliance::Cases::load(&args.cases)?;
    let results = compliance::run(&policy, &cases);
    let failed = results.iter().filter(|r| !r.passed).count();
    for result in &results {
        if result.passed {
            println!("ok    {}: {}", result.name, result.got.tier);
        } else {
            println!("FAIL  {}: {}", result.name, result.message);
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
