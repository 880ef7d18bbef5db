//! Where zt agent serves the Workload API and keeps its data when not told:
//! somewhere no other user can have made first (unlike a fixed name under
//! /tmp, which anyone can create before the agent and then swap the socket
//! in). Clients look for the socket in the same places.

use std::path::PathBuf;

/// The Workload API socket of an agent run by root.
pub const SYSTEM_SOCKET: &str = "/run/zt-agent/public/api.sock";
/// The data directory of an agent run by root.
const SYSTEM_DATA_DIR: &str = "/var/lib/zt-agent";

/// Where an agent keeps its socket and data when not told: somewhere no other
/// user can have made first (unlike a fixed name under /tmp, which anyone can
/// create before the agent and then swap the socket in).
enum Home {
    /// root: `/run/zt-agent` and `/var/lib/zt-agent`.
    System,
    /// The user's own runtime directory (`$XDG_RUNTIME_DIR`, made 0700 for
    /// them at login): `$XDG_RUNTIME_DIR/zt-agent`.
    Runtime(PathBuf),
    /// Else `/tmp/zt-agent-$UID`, made by the agent (0700, with the default data
    /// dir in it) and refused if someone else made it first.
    Tmp(PathBuf),
}

fn home() -> Home {
    let uid = zt_fs::euid().unwrap_or(u32::MAX);
    if uid == 0 {
        return Home::System;
    }
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() && dir.is_dir() => Home::Runtime(dir.join("zt-agent")),
        _ => Home::Tmp(PathBuf::from(format!("/tmp/zt-agent-{uid}"))),
    }
}

/// The agent's default Workload API socket: `/run/zt-agent/public/api.sock`
/// for root, else `$XDG_RUNTIME_DIR/zt-agent/public/api.sock`, else
/// `/tmp/zt-agent-$UID/public/api.sock`.
pub fn default_socket() -> PathBuf {
    match home() {
        Home::System => PathBuf::from(SYSTEM_SOCKET),
        Home::Runtime(dir) | Home::Tmp(dir) => dir.join("public").join("api.sock"),
    }
}

/// The agent's default data directory: `/var/lib/zt-agent` for root, else
/// `$XDG_RUNTIME_DIR/zt-agent/data`, else `/tmp/zt-agent-$UID/data`.
pub fn default_data_dir() -> PathBuf {
    match home() {
        Home::System => PathBuf::from(SYSTEM_DATA_DIR),
        Home::Runtime(dir) | Home::Tmp(dir) => dir.join("data"),
    }
}
