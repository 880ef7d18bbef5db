//! `zt session`: people's sign-in sessions; revoking one revokes the refresh
//! tokens issued in it.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use zt_server::client::AdminClient;
use zt_store::Session;

use super::args::{AdminArgs, Output};
use super::timestamp;

#[derive(Subcommand)]
pub(crate) enum SessionCommand {
    /// List sessions, newest first.
    List(SessionList),
    /// Revoke one session, or every session of a user, with their refresh tokens.
    Revoke(SessionRevoke),
}

#[derive(Args)]
pub(crate) struct SessionList {
    /// Only this user's sessions.
    #[arg(long)]
    pub(crate) user: Option<String>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["user", "session"])))]
pub(crate) struct SessionRevoke {
    /// Every session of this user.
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// The session ID.
    pub(crate) session: Option<String>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

fn client(admin: &AdminArgs) -> AdminClient {
    AdminClient::new(&admin.socket)
}

/// `zt session list`.
pub fn list(args: SessionList) -> anyhow::Result<ExitCode> {
    let sessions = super::admin_call(client(&args.admin).sessions(args.user.as_deref()))?;
    match args.admin.output {
        Output::Json => {
            let doc = serde_json::json!({ "sessions": sessions });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text if sessions.is_empty() => println!("no sessions"),
        Output::Text => {
            for (i, session) in sessions.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_session_text(session);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt session revoke`.
pub fn revoke(args: SessionRevoke) -> anyhow::Result<ExitCode> {
    let client = client(&args.admin);
    match (&args.user, &args.session) {
        (Some(user), _) => {
            let revoked = super::admin_call(client.revoke_user_sessions(user))?;
            match args.admin.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&revoked)?),
                Output::Text => println!("Revoked {} session(s) of {}", revoked.revoked, revoked.user),
            }
        }
        (None, Some(id)) => {
            let session = super::admin_call(client.revoke_session(id))?;
            match args.admin.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&session)?),
                Output::Text => print_session_text(&session),
            }
        }
        (None, None) => anyhow::bail!("give --user USER or a SESSION id"),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_session_text(session: &Session) {
    println!("Session ID : {}", session.id);
    println!("User       : {}", session.user);
    println!("Created    : {}", timestamp(session.created_at));
    println!("Expires    : {}", timestamp(session.expires_at));
    if !session.amr.is_empty() {
        println!(
            "Signed in  : {} ({}, {})",
            session.amr.join(" "),
            session.acr,
            session.source_ip
        );
    }
    if let Some(at) = session.revoked_at {
        println!(
            "Revoked    : {} ({})",
            timestamp(at),
            session.revoke_reason.as_deref().unwrap_or("no reason")
        );
    }
}
