//! `zt client`: OAuth clients of zt server — how each authenticates, where it
//! may be redirected, which grants it may use. A client secret is made by the
//! server and printed once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use zt_server::client::AdminClient;
use zt_store::{BackchannelLogoutUri, Client, ClientKind, GrantType, NewClient, RedirectUri, StoreError};

use super::args::{AdminArgs, Output};
use super::timestamp;

#[derive(Subcommand)]
pub(crate) enum ClientCommand {
    /// Register a client: confidential with a secret (the default; printed once),
    /// confidential with private_key_jwt (--jwks), a mesh workload by its SPIFFE ID
    /// authenticating with its JWT-SVID (--spiffe), or public with PKCE (--public).
    Add(ClientAdd),
    /// List every client.
    List(AdminArgs),
    /// Show one client.
    Show(ClientTarget),
    /// Delete a client; refresh tokens issued to it are revoked.
    Delete(ClientTarget),
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("kind").args(["public", "secret", "jwks", "spiffe"])))]
pub(crate) struct ClientAdd {
    /// The client ID.
    pub(crate) client_id: String,
    /// A redirect URI, matched exactly (repeatable): https, or http to 127.0.0.1 or [::1].
    #[arg(long = "redirect-uri", value_name = "URI", value_parser = parse_redirect_uri)]
    pub(crate) redirect_uris: Vec<RedirectUri>,
    /// A public client (a browser app, a CLI): no secret, PKCE required.
    #[arg(long)]
    pub(crate) public: bool,
    /// A confidential client with a secret made by the server (the default).
    #[arg(long)]
    pub(crate) secret: bool,
    /// A confidential client authenticating with private_key_jwt, its public keys
    /// in this JWK Set file.
    #[arg(long, value_name = "FILE")]
    pub(crate) jwks: Option<PathBuf>,
    /// A mesh workload authenticating with a JWT-SVID (RFC 7523), no secret: the
    /// client ID is its SPIFFE ID, in this server's trust domain.
    #[arg(long)]
    pub(crate) spiffe: bool,
    /// A grant type it may use (repeatable) [default: authorization_code and refresh_token;
    /// client_credentials with --spiffe].
    #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant)]
    pub(crate) grants: Vec<GrantType>,
    /// Where the OpenID Provider posts a logout token (OpenID Connect Back-Channel
    /// Logout) when a session this client holds tokens from ends: https, or http to
    /// localhost, 127.0.0.1 or [::1] for development.
    #[arg(long, value_name = "URL", value_parser = parse_backchannel_logout_uri)]
    pub(crate) backchannel_logout_uri: Option<BackchannelLogoutUri>,
    /// The client requires `sid` in logout tokens (zt always sends it).
    #[arg(long, requires = "backchannel_logout_uri")]
    pub(crate) backchannel_logout_session_required: bool,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct ClientTarget {
    /// The client ID.
    pub(crate) client_id: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `--redirect-uri`: checked here as the server checks it, the reason alone
/// (clap's message already names the flag and the value).
fn parse_redirect_uri(text: &str) -> Result<RedirectUri, String> {
    RedirectUri::parse(text).map_err(|e| match e {
        StoreError::InvalidValue { reason, .. } => reason,
        other => other.to_string(),
    })
}

/// `--backchannel-logout-uri`: checked here as the server checks it.
fn parse_backchannel_logout_uri(text: &str) -> Result<BackchannelLogoutUri, String> {
    BackchannelLogoutUri::parse(text).map_err(|e| match e {
        StoreError::InvalidValue { reason, .. } => reason,
        other => other.to_string(),
    })
}

fn parse_grant(text: &str) -> Result<GrantType, String> {
    GrantType::parse(text).ok_or_else(|| {
        let names: Vec<_> = GrantType::ALL.iter().map(|g| g.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn client(admin: &AdminArgs) -> AdminClient {
    AdminClient::new(&admin.socket)
}

/// `zt client add`: prints the secret of a confidential client this once.
pub fn add(args: ClientAdd) -> anyhow::Result<ExitCode> {
    let (kind, jwks) = match (&args.jwks, args.public) {
        _ if args.spiffe => (ClientKind::Spiffe, None),
        (Some(path), _) => {
            let bytes = super::read_input("--jwks", path)?;
            let text = String::from_utf8(bytes).with_context(|| format!("--jwks {}", path.display()))?;
            (ClientKind::PrivateKeyJwt, Some(text))
        }
        (None, true) => (ClientKind::Public, None),
        (None, false) => (ClientKind::Secret, None),
    };
    let new = NewClient {
        client_id: args.client_id,
        kind,
        jwks,
        redirect_uris: args.redirect_uris,
        grant_types: args.grants,
        backchannel_logout_uri: args.backchannel_logout_uri,
        backchannel_logout_session_required: args.backchannel_logout_session_required,
    };
    let created =
        super::admin_call(client(&args.admin).create_client(&new)).map_err(|e| match &args.jwks {
            Some(path) if e.to_string().starts_with("jwks") => {
                e.context(format!("--jwks {}", path.display()))
            }
            _ => e,
        })?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&created)?),
        Output::Text => {
            print_client_text(&created.client);
            if let Some(secret) = &created.secret {
                println!("Secret        : {secret}");
                println!("Shown only now: zt server keeps only its argon2id hash.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt client list`.
pub fn list(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let clients = super::admin_call(client(&args).clients())?;
    match args.output {
        Output::Json => {
            let doc = serde_json::json!({ "clients": clients });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text if clients.is_empty() => println!("no clients"),
        Output::Text => {
            for (i, client) in clients.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_client_text(client);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt client show`.
pub fn show(args: ClientTarget) -> anyhow::Result<ExitCode> {
    let found = super::admin_call(client(&args.admin).client(&args.client_id))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&found)?),
        Output::Text => print_client_text(&found),
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt client delete`.
pub fn delete(args: ClientTarget) -> anyhow::Result<ExitCode> {
    let deleted = super::admin_call(client(&args.admin).delete_client(&args.client_id))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&deleted)?),
        Output::Text => println!("Deleted client {}", deleted.client_id),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_client_text(client: &Client) {
    println!("Client ID     : {}", client.client_id);
    println!(
        "Kind          : {}",
        match client.kind {
            ClientKind::Secret => "confidential (client secret)",
            ClientKind::PrivateKeyJwt => "confidential (private_key_jwt)",
            ClientKind::Public => "public (PKCE)",
            ClientKind::Spiffe => "confidential (JWT-SVID of the workload)",
        }
    );
    for uri in &client.redirect_uris {
        println!("Redirect URI  : {uri}");
    }
    let grants: Vec<_> = client.grant_types.iter().map(|g| g.as_str()).collect();
    println!("Grant types   : {}", grants.join(", "));
    if let Some(uri) = &client.backchannel_logout_uri {
        let sid = if client.backchannel_logout_session_required {
            ", sid required"
        } else {
            ""
        };
        println!("Logout URI    : {uri} (back-channel{sid})");
    }
    println!("Created       : {}", timestamp(client.created_at));
}
