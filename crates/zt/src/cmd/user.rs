//! `zt user`: people in zt server's datastore, through its admin API — add,
//! show, list, disable (which revokes their sessions), enable, delete, invite
//! (a one-time enrollment token, printed once), and their credentials.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use zt_server::client::AdminClient;
use zt_store::{Credential, NewUser, User};

use super::args::{AdminArgs, Output};
use super::timestamp;

#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user (a random, permanent `sub` is made for them).
    Add(UserAdd),
    /// Show one user.
    Show(UserTarget),
    /// List every user.
    List(AdminArgs),
    /// Disable a user: no sign-in, and every session and refresh token of theirs revoked at once.
    Disable(UserTarget),
    /// Enable a disabled user (their revoked sessions stay revoked).
    Enable(UserTarget),
    /// Delete a user with their memberships, credentials, sessions and invites.
    Delete(UserTarget),
    /// Make a one-time enrollment token for a user's first passkey (printed once,
    /// stored only as a hash).
    Invite(UserInvite),
    /// Set a user's password, read from standard input (one line), for
    /// servers started with --idp-passwords: a weaker factor than a passkey.
    Password(UserPassword),
    /// List a user's credentials (passkeys and security keys).
    Credentials(UserTarget),
    /// Credentials by ID.
    #[command(subcommand)]
    Credential(CredentialCommand),
}

#[derive(Subcommand)]
pub(crate) enum CredentialCommand {
    /// Revoke a credential: it can no longer sign in.
    Revoke(CredentialTarget),
}

#[derive(Args)]
pub(crate) struct UserAdd {
    /// Unique user name: letters, digits, '.', '_', '-'.
    pub(crate) name: String,
    /// Contact address (never used as an identifier).
    #[arg(long)]
    pub(crate) email: String,
    /// The name shown to people [default: NAME].
    #[arg(long)]
    pub(crate) display_name: Option<String>,
    /// An existing group to add the user to (repeatable).
    #[arg(long = "group")]
    pub(crate) groups: Vec<String>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct UserTarget {
    /// The user's name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct UserInvite {
    /// The user's name.
    pub(crate) name: String,
    /// How long the token may be used, at most 24h.
    #[arg(long, default_value = "15m", value_parser = parse_invite_ttl)]
    pub(crate) ttl: Duration,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct UserPassword {
    /// The user's name.
    pub(crate) name: String,
    /// Remove the password instead.
    #[arg(long)]
    pub(crate) remove: bool,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct CredentialTarget {
    /// The credential ID (as `zt user credentials` lists it).
    pub(crate) id: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

/// `--ttl` of an invite: longer than zero, at most [`zt_server::MAX_INVITE_TTL`].
fn parse_invite_ttl(text: &str) -> Result<Duration, String> {
    let ttl = super::args::positive_duration(text)?;
    if ttl.as_secs() > zt_server::MAX_INVITE_TTL {
        return Err(format!(
            "{text:?} is longer than {}h: an invite is a bearer credential, keep it short",
            zt_server::MAX_INVITE_TTL / 3600
        ));
    }
    Ok(ttl)
}

fn client(admin: &AdminArgs) -> AdminClient {
    AdminClient::new(&admin.socket)
}

/// `zt user add`.
pub fn add(args: UserAdd) -> anyhow::Result<ExitCode> {
    let new = NewUser {
        name: args.name,
        email: args.email,
        display_name: args.display_name,
        groups: args.groups,
    };
    let user = super::admin_call(client(&args.admin).create_user(&new))?;
    print_user(&user, args.admin.output)?;
    Ok(ExitCode::SUCCESS)
}

/// `zt user show`.
pub fn show(args: UserTarget) -> anyhow::Result<ExitCode> {
    let user = super::admin_call(client(&args.admin).user(&args.name))?;
    print_user(&user, args.admin.output)?;
    Ok(ExitCode::SUCCESS)
}

/// `zt user list`.
pub fn list(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let users = super::admin_call(client(&args).users())?;
    match args.output {
        Output::Json => {
            let doc = serde_json::json!({ "users": users });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text if users.is_empty() => println!("no users"),
        Output::Text => {
            for (i, user) in users.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_user_text(user);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt user disable` (`disabled`) and `zt user enable`.
pub fn set_disabled(args: UserTarget, disabled: bool) -> anyhow::Result<ExitCode> {
    let user = super::admin_call(client(&args.admin).set_user_disabled(&args.name, disabled))?;
    print_user(&user, args.admin.output)?;
    Ok(ExitCode::SUCCESS)
}

/// `zt user delete`.
pub fn delete(args: UserTarget) -> anyhow::Result<ExitCode> {
    let user = super::admin_call(client(&args.admin).delete_user(&args.name))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&user)?),
        Output::Text => println!("Deleted user {} (sub {})", user.name, user.sub),
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt user invite`: the token, printed this once.
pub fn invite(args: UserInvite) -> anyhow::Result<ExitCode> {
    let invite = super::admin_call(client(&args.admin).create_invite(&args.name, args.ttl))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&invite)?),
        Output::Text => {
            println!("Token: {}", invite.token);
            if let Some(url) = &invite.url {
                println!("Enroll: {url}");
            }
            println!("Expires: {}", timestamp(invite.expires_at));
            println!("One use; shown only now (zt server keeps its SHA-256).");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt user password`: the password is read from standard input, never an argument
/// (arguments are visible to every user of the machine).
pub fn password(args: UserPassword) -> anyhow::Result<ExitCode> {
    let password = if args.remove {
        None
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| anyhow::anyhow!("reading the password from standard input: {e}"))?;
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            anyhow::bail!("no password on standard input (use --remove to remove one)");
        }
        Some(line)
    };
    super::admin_call(client(&args.admin).set_password(&args.name, password.as_deref()))?;
    let what = if args.remove { "removed" } else { "set" };
    println!("Password {what} for {}", args.name);
    Ok(ExitCode::SUCCESS)
}

/// `zt user credentials`.
pub fn credentials(args: UserTarget) -> anyhow::Result<ExitCode> {
    let credentials = super::admin_call(client(&args.admin).credentials(&args.name))?;
    match args.admin.output {
        Output::Json => {
            let doc = serde_json::json!({ "credentials": credentials });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text if credentials.is_empty() => println!("no credentials"),
        Output::Text => {
            for (i, credential) in credentials.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print_credential_text(credential);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt user credential revoke`.
pub fn revoke_credential(args: CredentialTarget) -> anyhow::Result<ExitCode> {
    let credential = super::admin_call(client(&args.admin).revoke_credential(&args.id))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&credential)?),
        Output::Text => print_credential_text(&credential),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_user(user: &User, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(user)?),
        Output::Text => print_user_text(user),
    }
    Ok(())
}

fn print_user_text(user: &User) {
    println!("Name         : {}", user.name);
    println!("Subject      : {}", user.sub);
    println!("Display name : {}", user.display_name);
    println!("E-mail       : {}", user.email);
    println!(
        "Groups       : {}",
        if user.groups.is_empty() {
            "-".to_owned()
        } else {
            user.groups.join(", ")
        }
    );
    println!(
        "Status       : {}",
        if user.disabled { "disabled" } else { "enabled" }
    );
    println!("Created      : {}", timestamp(user.created_at));
    println!("Updated      : {}", timestamp(user.updated_at));
}

fn print_credential_text(credential: &Credential) {
    println!("Credential ID : {}", credential.id);
    println!("User          : {}", credential.user);
    println!("AAGUID        : {}", credential.aaguid);
    println!("Sign count    : {}", credential.sign_count);
    println!(
        "Backup        : {}",
        match (credential.backup_eligible, credential.backed_up) {
            (_, true) => "backed up",
            (true, false) => "eligible, not backed up",
            (false, false) => "device-bound",
        }
    );
    println!("Created       : {}", timestamp(credential.created_at));
    if let Some(at) = credential.last_used_at {
        println!("Last used     : {}", timestamp(at));
    }
    if let Some(at) = credential.revoked_at {
        println!("Revoked       : {}", timestamp(at));
    }
}
