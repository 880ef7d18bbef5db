//! `zt agent` (the node agent) and `zt agent api …` (a Workload API client, with
//! `spire-agent api`'s commands, output and file names).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use rustls_pki_types::CertificateDer;
use zt_agent::{AgentConfig, NodeConfig};
use zt_api::workload::X509svidResponse;
use zt_ca::store::{PRIVATE_MODE, PUBLIC_MODE, write_atomically};
use zt_identity::Bundle;
use zt_workload::client::WorkloadClient;

use super::args::{AdminArgs, Output};
use super::entry::{AgentTarget, TokenCommand};
use crate::duration;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct AgentArgs {
    #[command(subcommand)]
    pub(crate) command: Option<AgentCommand>,
    #[command(flatten)]
    pub(crate) run: AgentRun,
}

/// `zt agent` without a subcommand: run the agent.
#[derive(Args)]
pub(crate) struct AgentRun {
    /// zt server's agent API, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub(crate) server: String,
    /// A one-time join token from `zt agent token create` (SPIRE: -joinToken).
    /// Tokens are URL-safe base64 and may begin with `-`.
    #[arg(
        long,
        env = "ZT_JOIN_TOKEN",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub(crate) join_token: Option<String>,
    /// A file with a join token, read again whenever the agent must attest
    /// (after an eviction, write a new token here; no restart needed).
    #[arg(long)]
    pub(crate) join_token_file: Option<PathBuf>,
    /// The trust bundle that authenticates the server before the agent has an SVID
    /// (PEM or SPIFFE JWKS, from `zt bundle show`; SPIRE: -trustBundle).
    #[arg(long, required = true)]
    pub(crate) trust_bundle: Option<PathBuf>,
    /// Where the Workload API listens: a path, unix:///path or unix:/path [default: /run/zt-agent/public/api.sock for root, else $XDG_RUNTIME_DIR/zt-agent/public/api.sock, else /tmp/zt-agent-$UID/public/api.sock].
    #[arg(long, value_parser = zt_workload::client::parse_socket)]
    pub(crate) socket: Option<PathBuf>,
    /// Where the agent keeps its own SVID and the last bundle, to resume after a restart [default: /var/lib/zt-agent for root, else $XDG_RUNTIME_DIR/zt-agent/data, else /tmp/zt-agent-$UID/data].
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum AgentCommand {
    /// Call the SPIFFE Workload API as this process, like `spire-agent api`.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Join tokens for node attestation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List attested agents.
    List(AdminArgs),
    /// Show one agent.
    Show(AgentTarget),
    /// Evict an agent: its SVID is revoked at once and it must attest again.
    Evict(AgentTarget),
    /// Ban an agent: evicted, and refused if it attests again.
    Ban(AgentTarget),
}

/// Where the Workload API is: --socket, else SPIFFE_ENDPOINT_SOCKET, else the default.
#[derive(Args)]
pub(crate) struct WorkloadSocket {
    /// The Workload API socket (SPIRE: -socketPath): a path, unix:///path or unix:/path [default: $SPIFFE_ENDPOINT_SOCKET, else /run/zt-agent/public/api.sock if it exists, else the agent's default for this user].
    #[arg(long, value_parser = zt_workload::client::parse_socket)]
    pub(crate) socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// Give up after this long.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub(crate) timeout: Duration,
}

#[derive(Subcommand)]
pub(crate) enum ApiCommand {
    /// Fetch SVIDs from the Workload API.
    #[command(subcommand)]
    Fetch(FetchCommand),
    /// Validate with the Workload API.
    #[command(subcommand)]
    Validate(ValidateCommand),
    /// Print every X.509-SVID update the Workload API pushes, until interrupted.
    Watch(WorkloadSocket),
}

#[derive(Subcommand)]
pub(crate) enum FetchCommand {
    /// This process's X.509-SVIDs and bundles.
    X509(FetchX509),
    /// JWT-SVIDs for an audience, and the JWT bundles.
    Jwt(FetchJwt),
}

#[derive(Args)]
pub(crate) struct FetchX509 {
    /// Write svid.N.pem, svid.N.key and bundle.N.pem into this directory.
    #[arg(long)]
    pub(crate) write: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) socket: WorkloadSocket,
}

#[derive(Args)]
pub(crate) struct FetchJwt {
    /// The audience (repeatable).
    #[arg(long, required = true)]
    pub(crate) audience: Vec<String>,
    /// Only this SPIFFE ID (SPIRE: -spiffeID).
    #[arg(long)]
    pub(crate) spiffe_id: Option<String>,
    #[command(flatten)]
    pub(crate) socket: WorkloadSocket,
}

#[derive(Subcommand)]
pub(crate) enum ValidateCommand {
    /// Validate a JWT-SVID for an audience.
    Jwt(ValidateJwt),
}

#[derive(Args)]
pub(crate) struct ValidateJwt {
    /// The audience the token must be for.
    #[arg(long)]
    pub(crate) audience: String,
    /// The token.
    #[arg(long)]
    pub(crate) svid: String,
    #[command(flatten)]
    pub(crate) socket: WorkloadSocket,
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(args: AgentRun) -> anyhow::Result<ExitCode> {
    let bundle_path = args.trust_bundle.context("--trust-bundle is required")?;
    let bytes = super::read_input("--trust-bundle", &bundle_path)?;
    let trust_bundle =
        Bundle::parse(&bytes, None).with_context(|| format!("--trust-bundle {}", bundle_path.display()))?;
    if args.join_token.is_none() && args.join_token_file.is_none() {
        // Without a token the agent can still resume with the SVID in its data dir.
        eprintln!("zt: note: no --join-token or --join-token-file: resuming from --data-dir only");
    }
    super::init_logging("info");
    let runtime = super::runtime()?;
    let server = runtime
        .block_on(tokio::net::lookup_host(&args.server))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .with_context(|| format!("--server {}: not a reachable HOST:PORT", args.server))?;
    let config = AgentConfig {
        node: NodeConfig {
            server,
            server_id: zt_agent::server_id(&trust_bundle)?,
            join_token: args.join_token,
            join_token_file: args.join_token_file,
            data_dir: args.data_dir.unwrap_or_else(zt_agent::default_data_dir),
        },
        trust_bundle,
        socket: args.socket.unwrap_or_else(zt_agent::default_socket),
    };
    runtime.block_on(zt_agent::run(config, super::shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// `zt agent api fetch x509`.
pub fn fetch_x509(args: FetchX509) -> anyhow::Result<ExitCode> {
    let (client, socket) = connect(&args.socket)?;
    let started = Instant::now();
    let response = block_on(&socket, client.fetch_x509_svids())?;
    let elapsed = started.elapsed();
    let svids = decode_svids(&response)?;
    if let Some(dir) = &args.write {
        write_svids(dir, &response, &svids)?;
    }
    match socket.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&svids_json(&svids))?),
        Output::Text => {
            println!("Received {} svid after {elapsed:?}\n", svids.len());
            for svid in &svids {
                println!("SPIFFE ID:\t\t{}", svid.spiffe_id);
                println!(
                    "SVID Serial:\t\t{}",
                    zt_identity::x509::hex_compact(&svid.summary.serial)
                );
                if !svid.hint.is_empty() {
                    println!("Hint:\t\t\t{}", svid.hint);
                }
                println!("SVID Valid After:\t{}", super::timestamp(svid.summary.not_before));
                println!("SVID Valid Until:\t{}", super::timestamp(svid.summary.not_after));
                for (i, ca) in svid.bundle.iter().enumerate() {
                    let ca = zt_identity::x509::summarize(ca)?;
                    println!("CA #{} Valid After:\t{}", i + 1, super::timestamp(ca.not_before));
                    println!("CA #{} Valid Until:\t{}", i + 1, super::timestamp(ca.not_after));
                }
                println!();
            }
            if !response.crl.is_empty() {
                println!("Revocation lists:\t{}", response.crl.len());
            }
            if let Some(dir) = &args.write {
                println!("Writing SVIDs and bundles to {}", dir.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt agent api fetch jwt`.
pub fn fetch_jwt(args: FetchJwt) -> anyhow::Result<ExitCode> {
    let (client, socket) = connect(&args.socket)?;
    let svids = block_on(
        &socket,
        client.fetch_jwt_svids(args.audience.clone(), args.spiffe_id.clone()),
    )?;
    let bundles = block_on(&socket, client.fetch_jwt_bundles())?;
    match socket.output {
        Output::Json => {
            let bundles: serde_json::Map<String, serde_json::Value> = bundles
                .bundles
                .iter()
                .map(|(td, jwks)| {
                    let jwks = serde_json::from_slice(jwks).unwrap_or(serde_json::Value::Null);
                    (td.clone(), jwks)
                })
                .collect();
            let svids: Vec<_> = svids
                .svids
                .iter()
                .map(|s| serde_json::json!({"spiffe_id": s.spiffe_id, "svid": s.svid}))
                .collect();
            let json = serde_json::json!({"svids": svids, "bundles": bundles});
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Output::Text => {
            for svid in &svids.svids {
                println!("token({}):\n\t{}\n", svid.spiffe_id, svid.svid);
            }
            for (td, jwks) in &bundles.bundles {
                println!("bundle({td}):\n\t{}\n", String::from_utf8_lossy(jwks));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt agent api validate jwt`: exit 1 if the token is not valid.
pub fn validate_jwt(args: ValidateJwt) -> anyhow::Result<ExitCode> {
    let (client, socket) = connect(&args.socket)?;
    let answer = socket.runtime.block_on(async {
        tokio::time::timeout(
            socket.timeout,
            client.validate_jwt_svid(&args.audience, &args.svid),
        )
        .await
    });
    let answer = match answer {
        Err(_) => bail!("{}: no answer within {:?}", socket.path.display(), socket.timeout),
        Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
            eprintln!("zt: SVID is not valid: {}", status.message());
            return Ok(ExitCode::FAILURE);
        }
        Ok(Err(status)) => return Err(status_error(&socket.path, status)),
        Ok(Ok(answer)) => answer,
    };
    let claims = answer.claims.map(|c| from_proto_struct(&c)).unwrap_or_default();
    match socket.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"spiffe_id": answer.spiffe_id, "claims": claims})
            )?
        ),
        Output::Text => {
            println!("SVID is valid.");
            println!("SPIFFE ID : {}", answer.spiffe_id);
            println!("Claims    : {}", serde_json::Value::Object(claims));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt agent api watch`: one block (or JSON line) per update, until interrupted
/// or the agent ends the stream.
pub fn watch(args: WorkloadSocket) -> anyhow::Result<ExitCode> {
    let (client, socket) = connect(&args)?;
    socket.runtime.block_on(async {
        let mut stream = client
            .x509_svids()
            .await
            .map_err(|status| status_error(&socket.path, status))?;
        let mut last = Instant::now();
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                () = super::shutdown_signal() => return Ok(ExitCode::SUCCESS),
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => bail!("{}: the agent ended the stream", socket.path.display()),
                Err(status) => return Err(status_error(&socket.path, status)),
            };
            let svids = decode_svids(&response)?;
            match socket.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"svids": svids_json(&svids), "crls": response.crl.len()})
                ),
                Output::Text => {
                    println!("Received {} svid after {:?}", svids.len(), last.elapsed());
                    for svid in &svids {
                        println!(
                            "  {} serial {} until {}",
                            svid.spiffe_id,
                            zt_identity::x509::hex_compact(&svid.summary.serial),
                            super::timestamp(svid.summary.not_after)
                        );
                    }
                    if !response.crl.is_empty() {
                        println!("  {} revocation list(s)", response.crl.len());
                    }
                }
            }
            last = Instant::now();
        }
    })
}

/// The socket a command talks to, and how.
struct Socket {
    path: PathBuf,
    output: Output,
    timeout: std::time::Duration,
    runtime: tokio::runtime::Runtime,
}

fn connect(args: &WorkloadSocket) -> anyhow::Result<(WorkloadClient, Socket)> {
    let path = zt_workload::client::endpoint(args.socket.clone()).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = {
        let _entered = runtime.enter();
        WorkloadClient::new(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    Ok((
        client,
        Socket {
            path,
            output: args.output,
            timeout: args.timeout,
            runtime,
        },
    ))
}

/// Runs one call with the command's timeout; errors name the socket.
fn block_on<T>(
    socket: &Socket,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> anyhow::Result<T> {
    socket.runtime.block_on(async {
        match tokio::time::timeout(socket.timeout, call).await {
            Ok(result) => result.map_err(|status| status_error(&socket.path, status)),
            Err(_) => bail!("{}: no answer within {:?}", socket.path.display(), socket.timeout),
        }
    })
}

fn status_error(path: &std::path::Path, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {:?}: {}", path.display(), status.code(), status.message())
}

/// One X.509-SVID of a response, decoded.
struct DecodedSvid {
    spiffe_id: String,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    bundle: Vec<CertificateDer<'static>>,
    summary: zt_identity::x509::CertificateSummary,
    hint: String,
}

fn decode_svids(response: &X509svidResponse) -> anyhow::Result<Vec<DecodedSvid>> {
    zt_workload::svid::decode(response)?
        .svids
        .into_iter()
        .map(|svid| {
            let leaf = svid
                .chain
                .first()
                .with_context(|| format!("x509_svid of {}: empty", svid.spiffe_id))?;
            let summary = zt_identity::x509::summarize(leaf)?;
            Ok(DecodedSvid {
                summary,
                key: svid.key.secret_der().to_vec(),
                spiffe_id: svid.spiffe_id,
                chain: svid.chain,
                bundle: svid.bundle,
                hint: svid.hint,
            })
        })
        .collect()
}

/// Splits concatenated DER certificates, as the Workload API carries them.
fn split_der(bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(zt_identity::x509::split_der_certificates(bytes)?)
}

/// `spire-agent api fetch x509 -write`'s files: svid.N.pem (chain), svid.N.key,
/// bundle.N.pem, federated_bundle.N.M.pem.
fn write_svids(
    dir: &std::path::Path,
    response: &X509svidResponse,
    svids: &[DecodedSvid],
) -> anyhow::Result<()> {
    zt_fs::private_dir(dir).with_context(|| format!("--write {}", dir.display()))?;
    let mut files = Vec::new();
    for (i, svid) in svids.iter().enumerate() {
        let chain: String = svid.chain.iter().map(zt_identity::x509::to_pem).collect();
        let bundle: String = svid.bundle.iter().map(zt_identity::x509::to_pem).collect();
        let key = zt_identity::x509::pem_encode("PRIVATE KEY", &svid.key);
        files.push((dir.join(format!("svid.{i}.pem")), chain.into_bytes(), PUBLIC_MODE));
        files.push((dir.join(format!("svid.{i}.key")), key.into_bytes(), PRIVATE_MODE));
        files.push((
            dir.join(format!("bundle.{i}.pem")),
            bundle.into_bytes(),
            PUBLIC_MODE,
        ));
        for (j, federated) in response.federated_bundles.values().enumerate() {
            let pem: String = split_der(federated)?
                .iter()
                .map(zt_identity::x509::to_pem)
                .collect();
            files.push((
                dir.join(format!("federated_bundle.{i}.{j}.pem")),
                pem.into_bytes(),
                PUBLIC_MODE,
            ));
        }
    }
    write_atomically(&files).with_context(|| format!("--write {}", dir.display()))
}

fn svids_json(svids: &[DecodedSvid]) -> serde_json::Value {
    svids
        .iter()
        .map(|svid| {
            serde_json::json!({
                "spiffe_id": svid.spiffe_id,
                "serial": zt_identity::x509::hex_compact(&svid.summary.serial),
                "not_before": svid.summary.not_before,
                "not_after": svid.summary.not_after,
                "chain_length": svid.chain.len(),
                "bundle_authorities": svid.bundle.len(),
                "hint": svid.hint,
            })
        })
        .collect()
}

/// A protobuf `Struct` as a JSON object.
fn from_proto_struct(s: &prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto_value(v)))
        .collect()
}

fn from_proto_value(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        // Protobuf numbers are doubles; whole ones (exp, iat) print as integers.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => (*n as i64).into(),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into)
        }
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(list)) => list.values.iter().map(from_proto_value).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(from_proto_struct(s)),
    }
}
