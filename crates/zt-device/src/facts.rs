//! Posture facts, collected on the device. Each fact carries when it was
//! observed; a fact that could not be read is reported with no value
//! (unknown), and unknown never satisfies a compliance rule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One observed fact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// The value; `None` when it could not be read (unknown).
    pub value: Option<serde_json::Value>,
    /// When it was observed, Unix seconds.
    pub observed_at: u64,
}

/// Facts by name ([`names`]).
pub type Facts = BTreeMap<String, Observed>;

/// The facts the device agent reports, by name.
pub mod names {
    /// `ID` from `/etc/os-release` (`debian`), string.
    pub const OS_ID: &str = "os.id";
    /// `VERSION_ID` from `/etc/os-release` (`12`), string.
    pub const OS_VERSION_ID: &str = "os.version_id";
    /// `PRETTY_NAME` from `/etc/os-release`, string.
    pub const OS_NAME: &str = "os.name";
    /// The running kernel's release (`uname -r`), string.
    pub const KERNEL: &str = "kernel.release";
    /// How many security updates are pending, integer.
    pub const SECURITY_UPDATES: &str = "updates.security_pending";
    /// Whether the root file system is on dm-crypt (LUKS), bool.
    pub const ROOT_ENCRYPTED: &str = "disk.root_encrypted";
    /// Whether `/home` is on dm-crypt (LUKS), bool (the root's when not separate).
    pub const HOME_ENCRYPTED: &str = "disk.home_encrypted";
    /// Whether a firewall ruleset (nftables or iptables) is loaded and not empty, bool.
    pub const FIREWALL: &str = "firewall.active";
    /// Whether UEFI Secure Boot is on, bool.
    pub const SECURE_BOOT: &str = "secure_boot.enabled";
    /// Whether a screen lock is configured, bool; unknown without a desktop session.
    pub const SCREEN_LOCK: &str = "screen_lock.enabled";
    /// Whether every required process is running, bool.
    pub const PROCESSES: &str = "processes.required_running";
    /// The device agent's version, string.
    pub const AGENT_VERSION: &str = "agent.version";
}
