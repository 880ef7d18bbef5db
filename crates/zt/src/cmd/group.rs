//! `zt group`: groups of users in zt server's datastore, and their members.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use zt_server::client::AdminClient;

use super::args::{AdminArgs, Output};
use super::timestamp;

#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// Create an empty group.
    Add(GroupTarget),
    /// List every group with its number of members.
    List(AdminArgs),
    /// Delete a group (its members lose only the membership).
    Delete(GroupTarget),
    /// List a group's members.
    Members(GroupTarget),
    /// Add a user to a group.
    AddMember(Membership),
    /// Remove a user from a group.
    RemoveMember(Membership),
}

#[derive(Args)]
pub(crate) struct GroupTarget {
    /// The group's name.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

#[derive(Args)]
pub(crate) struct Membership {
    /// The group's name.
    pub(crate) group: String,
    /// The user's name.
    pub(crate) user: String,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

fn client(admin: &AdminArgs) -> AdminClient {
    AdminClient::new(&admin.socket)
}

/// `zt group add`.
pub fn add(args: GroupTarget) -> anyhow::Result<ExitCode> {
    let group = super::admin_call(client(&args.admin).create_group(&args.name))?;
    match args.admin.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&group)?),
        Output::Text => println!("Created group {}", group.name),
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt group list`.
pub fn list(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let groups = super::admin_call(client(&args).groups())?;
    match args.output {
        Output::Json => {
            let doc = serde_json::json!({ "groups": groups });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text if groups.is_empty() => println!("no groups"),
        Output::Text => {
            for group in &groups {
                println!(
                    "{}\t{} member{}\tcreated {}",
                    group.name,
                    group.members,
                    if group.members == 1 { "" } else { "s" },
                    timestamp(group.created_at)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt group delete`.
pub fn delete(args: GroupTarget) -> anyhow::Result<ExitCode> {
    super::admin_call(client(&args.admin).delete_group(&args.name))?;
    if args.admin.output == Output::Text {
        println!("Deleted group {}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt group members`.
pub fn members(args: GroupTarget) -> anyhow::Result<ExitCode> {
    let members = super::admin_call(client(&args.admin).group_members(&args.name))?;
    match args.admin.output {
        Output::Json => {
            let doc = serde_json::json!({ "group": args.name, "members": members });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Output::Text if members.is_empty() => println!("no members"),
        Output::Text => {
            for member in &members {
                println!("{member}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zt group add-member` (`member`) and `zt group remove-member`.
pub fn set_member(args: Membership, member: bool) -> anyhow::Result<ExitCode> {
    super::admin_call(client(&args.admin).set_member(&args.group, &args.user, member))?;
    if args.admin.output == Output::Text {
        if member {
            println!("{} is a member of {}", args.user, args.group);
        } else {
            println!("{} is no longer a member of {}", args.user, args.group);
        }
    }
    Ok(ExitCode::SUCCESS)
}
