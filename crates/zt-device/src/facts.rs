//! Posture facts, collected on the device. Each fact carries when it was
//! observed; a fact that could not be read is reported with no value
//! (unknown), and unknown never satisfies a compliance rule.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Whether UEFI Secure Boot is on, bool; `false` on a machine booted by a
    /// BIOS (no `/sys/firmware/efi`), which has no Secure Boot.
    pub const SECURE_BOOT: &str = "secure_boot.enabled";
    /// Whether a screen lock is configured, bool; unknown without a desktop
    /// session (not applicable), and unknown unless the agent can read the
    /// session's own settings (GNOME, same user).
    pub const SCREEN_LOCK: &str = "screen_lock.enabled";
    /// Whether every required process is running, bool; names are compared
    /// as the kernel keeps them, cut at 15 bytes.
    pub const PROCESSES: &str = "processes.required_running";
    /// The required processes that are not running, list of strings.
    pub const PROCESSES_MISSING: &str = "processes.missing";
    /// The device agent's version, string.
    pub const AGENT_VERSION: &str = "agent.version";

    /// Every fact [`Collector::collect`](super::Collector::collect) reports.
    pub const ALL: &[&str] = &[
        OS_ID,
        OS_VERSION_ID,
        OS_NAME,
        KERNEL,
        SECURITY_UPDATES,
        ROOT_ENCRYPTED,
        HOME_ENCRYPTED,
        FIREWALL,
        SECURE_BOOT,
        SCREEN_LOCK,
        PROCESSES,
        PROCESSES_MISSING,
        AGENT_VERSION,
    ];
}

/// The JSON type of a fact's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string.
    Text,
    /// A non-negative integer.
    Count,
    /// `true` or `false`.
    Flag,
    /// A list of strings.
    TextList,
}

impl Kind {
    /// The kind of the fact named `name`; `None` for a name not in [`names`].
    pub fn of(name: &str) -> Option<Self> {
        use names::*;
        Some(match name {
            OS_ID | OS_VERSION_ID | OS_NAME | KERNEL | AGENT_VERSION => Self::Text,
            SECURITY_UPDATES => Self::Count,
            ROOT_ENCRYPTED | HOME_ENCRYPTED | FIREWALL | SECURE_BOOT | SCREEN_LOCK | PROCESSES => Self::Flag,
            PROCESSES_MISSING => Self::TextList,
            _ => return None,
        })
    }

    /// Whether `value` is of this kind.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            Self::Text => value.is_string(),
            Self::Count => value.is_u64(),
            Self::Flag => value.is_boolean(),
            Self::TextList => value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string)),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Text => "a string",
            Self::Count => "a non-negative integer",
            Self::Flag => "true or false",
            Self::TextList => "a list of strings",
        }
    }
}

/// Why a facts-override file could not be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is larger than an override file may be.
    #[error("{path}: larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit, bytes.
        limit: u64,
    },
    /// Not a JSON or YAML map of fact names to values.
    #[error("{path}: line {line}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line, from 1 (0 when the parser could not tell).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A name this agent does not report, or a value of the wrong type.
    #[error("{path}: line {line}: fact {fact}: {message}")]
    Fact {
        /// The file.
        path: PathBuf,
        /// The line the fact is on, from 1 (0 when it could not be found).
        line: usize,
        /// The fact's name.
        fact: String,
        /// What is wrong.
        message: String,
    },
}

/// Files read by the collectors are cut at this size.
const FILE_CAP: u64 = 64 * 1024;
/// `mountinfo` may be longer than other files; past this it is unknown.
const MOUNTS_CAP: u64 = 1024 * 1024;
/// A command's standard output past this is dropped (and the result marked truncated).
const OUTPUT_CAP: u64 = 1024 * 1024;
/// A command still running after this is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a running command is checked on.
const POLL: Duration = Duration::from_millis(10);
/// At most this many processes are looked at in `/proc`.
const PROCESS_CAP: usize = 65_536;
/// At most this many entries of a sysfs directory are looked at.
const ENTRY_CAP: usize = 4096;
/// At most this many device-mapper layers are followed under a file system.
const DM_DEPTH: usize = 16;
/// Commands are looked up here only: the agent's `PATH` is not trusted to
/// name the programs whose output decides compliance.
const PROGRAM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
/// UEFI's global variable holding whether Secure Boot is enforced.
const SECURE_BOOT_VAR: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Processes that mean a graphical session is running on the device.
const DESKTOPS: &[&str] = &[
    "gnome-shell",
    "plasmashell",
    "kwin_wayland",
    "kwin_x11",
    "xfce4-session",
    "cinnamon",
    "mate-session",
    "lxqt-session",
    "lxsession",
    "budgie-wm",
    "sway",
    "Hyprland",
];
/// The kernel keeps this many bytes of a process's name (`comm`).
const COMM_LEN: usize = 15;

/// What to collect and from where.
#[derive(Debug, Clone)]
pub struct Collector {
    /// `/` normally; a fake root in tests.
    root: PathBuf,
    /// Processes that must be running ([`names::PROCESSES`]).
    required_processes: Vec<String>,
    /// Reported as [`names::AGENT_VERSION`].
    agent_version: String,
    /// Whether to run `nft`, `iptables-save`, `apt-get` and `gsettings`;
    /// without them their facts are unknown.
    commands: bool,
}

impl Collector {
    /// Collects from this machine (`/`), running commands where a fact needs one.
    pub fn new(required_processes: Vec<String>, agent_version: &str) -> Self {
        Self {
            root: PathBuf::from("/"),
            required_processes,
            agent_version: agent_version.to_owned(),
            commands: true,
        }
    }

    /// Reads files under `root` instead of `/`; `commands` false leaves the
    /// facts that need a command unknown (the commands see the real machine,
    /// not `root`).
    pub fn with_root(self, root: PathBuf, commands: bool) -> Self {
        Self {
            root,
            commands,
            ..self
        }
    }

    /// Collects every fact in [`names::ALL`], each stamped with `now` (Unix
    /// seconds); a fact that could not be read has no value (unknown). Never
    /// fails as a whole.
    pub fn collect(&self, now: u64) -> Facts {
        use names::*;
        let os = self.os_release();
        let field = |key: &str| {
            os.as_ref()
                .and_then(|fields| fields.get(key))
                .map(|value| Value::String(value.clone()))
        };
        let flag = |value: Option<bool>| value.map(Value::Bool);
        let (root, home) = self.disk_encryption();
        let processes = self.processes();
        let (running, missing) = self.required(processes.as_ref());
        let values = [
            (OS_ID, field("ID")),
            (OS_VERSION_ID, field("VERSION_ID")),
            (OS_NAME, field("PRETTY_NAME")),
            (KERNEL, self.kernel().map(Value::String)),
            (
                SECURITY_UPDATES,
                self.security_updates(os.as_ref()).map(Value::from),
            ),
            (ROOT_ENCRYPTED, flag(root)),
            (HOME_ENCRYPTED, flag(home)),
            (FIREWALL, flag(self.firewall())),
            (SECURE_BOOT, flag(self.secure_boot())),
            (SCREEN_LOCK, flag(self.screen_lock(processes.as_ref()))),
            (PROCESSES, flag(running)),
            (PROCESSES_MISSING, missing.map(Value::from)),
            (AGENT_VERSION, Some(Value::String(self.agent_version.clone()))),
        ];
        values
            .into_iter()
            .map(|(name, value)| {
                if value.is_none() {
                    tracing::debug!(fact = name, "unknown");
                }
                let observed = Observed {
                    value,
                    observed_at: now,
                };
                (name.to_owned(), observed)
            })
            .collect()
    }

    /// What the device is, for the inventory: `hostname`, `sys_vendor`,
    /// `product_name`, `arch` and `cpu_model`, each only when it could be read.
    pub fn hardware(&self) -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        for (key, path) in [
            ("hostname", "/proc/sys/kernel/hostname"),
            ("sys_vendor", "/sys/class/dmi/id/sys_vendor"),
            ("product_name", "/sys/class/dmi/id/product_name"),
        ] {
            if let Some(value) = read_small(&self.path(path)).ok().and_then(non_empty) {
                found.insert(key.to_owned(), value);
            }
        }
        found.insert("arch".to_owned(), std::env::consts::ARCH.to_owned());
        // A machine with many cores has a long cpuinfo; the first core's lines suffice.
        if let Ok((cpuinfo, _)) = read_capped(&self.path("/proc/cpuinfo"), FILE_CAP)
            && let Some(model) = cpu_model(&cpuinfo)
        {
            found.insert("cpu_model".to_owned(), model);
        }
        found
    }

    /// `absolute` under the root.
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// The fields of `os-release`; `None` when neither file could be read.
    fn os_release(&self) -> Option<BTreeMap<String, String>> {
        let text = read_small(&self.path("/etc/os-release"))
            .or_else(|_| read_small(&self.path("/usr/lib/os-release")))
            .ok()?;
        Some(parse_os_release(&text))
    }

    fn kernel(&self) -> Option<String> {
        non_empty(read_small(&self.path("/proc/sys/kernel/osrelease")).ok()?)
    }

    /// Pending upgrades from a security archive, as apt would install them
    /// now; only as fresh as the last `apt-get update`.
    fn security_updates(&self, os: Option<&BTreeMap<String, String>>) -> Option<u64> {
        if !self.commands {
            return None;
        }
        let os = os?;
        let debian_like = ["ID", "ID_LIKE"]
            .iter()
            .filter_map(|key| os.get(*key))
            .any(|ids| ids.split_whitespace().any(|id| id == "debian"));
        if !debian_like {
            return None;
        }
        let plan = run("apt-get", &["-s", "-o", "Debug::NoLocking=1", "upgrade"]).complete()?;
        Some(count_security_upgrades(&plan))
    }

    /// Whether `/` and `/home` are on dm-crypt.
    fn disk_encryption(&self) -> (Option<bool>, Option<bool>) {
        let Some(mounts) = self.mounts() else {
            return (None, None);
        };
        let root = mount_for(&mounts, "/");
        let home = mount_for(&mounts, "/home");
        let encrypted = |index: Option<usize>| {
            let mount = mounts.get(index?)?;
            self.mount_encrypted(mount)
        };
        let root_answer = encrypted(root);
        let home_answer = if home == root {
            root_answer
        } else {
            encrypted(home)
        };
        (root_answer, home_answer)
    }

    /// The mount table, from `mountinfo` or else `/proc/mounts`; `None` when
    /// neither is readable, whole and well formed.
    fn mounts(&self) -> Option<Vec<Mount>> {
        if let Ok((text, false)) = read_capped(&self.path("/proc/self/mountinfo"), MOUNTS_CAP)
            && let Some(mounts) = parse_mountinfo(&text)
        {
            return Some(mounts);
        }
        match read_capped(&self.path("/proc/mounts"), MOUNTS_CAP) {
            Ok((text, false)) => parse_mounts(&text),
            _ => None,
        }
    }

    /// Whether the file system `mount` is on a dm-crypt layer. A block device
    /// that is not device-mapper is a plain one (`false`); a file system with
    /// no block device under it (overlay, tmpfs, NFS, a ZFS dataset) is unknown.
    fn mount_encrypted(&self, mount: &Mount) -> Option<bool> {
        let device = mount.source.strip_prefix("/dev/")?;
        let dm = match device.strip_prefix("mapper/") {
            Some(name) => self.dm_by_name(name)?,
            None if is_dm(device) => device.to_owned(),
            // `/dev/root`, `/dev/disk/by-…`: ask sysfs which device the numbers are.
            None => match mount.dev.as_deref().and_then(|dev| self.block_by_dev(dev)) {
                Some(name) if is_dm(&name) => name,
                _ => return Some(false),
            },
        };
        self.dm_encrypted(&dm, 0, &mut BTreeSet::new())
    }

    /// The `dm-N` whose device-mapper name is `name`.
    fn dm_by_name(&self, name: &str) -> Option<String> {
        let entries = std::fs::read_dir(self.path("/sys/block")).ok()?;
        entries
            .take(ENTRY_CAP)
            .filter_map(Result::ok)
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|block| is_dm(block))
            .find(|block| {
                let path = self.path("/sys/block").join(block).join("dm/name");
                read_small(&path).is_ok_and(|found| found.trim() == name)
            })
    }

    /// The kernel's name for the block device `major:minor`.
    fn block_by_dev(&self, dev: &str) -> Option<String> {
        let target = std::fs::read_link(self.path("/sys/dev/block").join(dev)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Whether `dm` or a device-mapper layer under it is dm-crypt: its uuid
    /// starts with `CRYPT-` (`CRYPT-LUKS2-…`, `CRYPT-PLAIN-…`).
    fn dm_encrypted(&self, dm: &str, depth: usize, seen: &mut BTreeSet<String>) -> Option<bool> {
        if depth > DM_DEPTH {
            return None;
        }
        if !seen.insert(dm.to_owned()) {
            return Some(false);
        }
        let base = self.path("/sys/block").join(dm);
        let uuid = read_small(&base.join("dm/uuid")).ok();
        if uuid
            .as_deref()
            .is_some_and(|uuid| uuid.trim().starts_with("CRYPT-"))
        {
            return Some(true);
        }
        let mut known = uuid.is_some();
        match std::fs::read_dir(base.join("slaves")) {
            Err(_) => known = false,
            Ok(entries) => {
                for entry in entries.take(ENTRY_CAP) {
                    let Ok(entry) = entry else {
                        known = false;
                        continue;
                    };
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !is_dm(&name) {
                        continue;
                    }
                    match self.dm_encrypted(&name, depth + 1, seen) {
                        Some(true) => return Some(true),
                        Some(false) => {}
                        None => known = false,
                    }
                }
            }
        }
        known.then_some(false)
    }

    /// Whether nftables or iptables holds a ruleset.
    fn firewall(&self) -> Option<bool> {
        if !self.commands {
            return None;
        }
        let nft = Ruleset::from_run(&run("nft", &["list", "ruleset"]), nft_has_rules);
        if nft == Ruleset::Rules {
            return Some(true);
        }
        let iptables = Ruleset::from_run(&run("iptables-save", &[]), iptables_has_rules);
        firewall_verdict(nft, iptables)
    }

    /// Secure Boot. A machine without UEFI (no `/sys/firmware/efi`) boots
    /// through a BIOS and so has no Secure Boot: `false`, not unknown.
    fn secure_boot(&self) -> Option<bool> {
        // Without /sys/firmware at all (not mounted, a fake root), nothing is known.
        if !std::fs::metadata(self.path("/sys/firmware")).is_ok_and(|meta| meta.is_dir()) {
            return None;
        }
        match std::fs::metadata(self.path("/sys/firmware/efi")) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(false),
            Ok(meta) if meta.is_dir() => {}
            _ => return None,
        }
        // Four bytes of attributes, then the value.
        let (bytes, _) = read_capped_bytes(&self.path(SECURE_BOOT_VAR), 64).ok()?;
        match bytes.get(4) {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        }
    }

    /// Whether the desktop session locks its screen: GNOME's `lock-enabled`
    /// with a non-zero idle delay. Unknown without a desktop session (not
    /// applicable), on desktops other than GNOME, and when the session is
    /// another user's: `gsettings` reads the settings of whoever runs it.
    fn screen_lock(&self, processes: Option<&Processes>) -> Option<bool> {
        let processes = processes?;
        let desktop = DESKTOPS.iter().any(|name| processes.running(name));
        if !desktop || !self.commands {
            return None;
        }
        let me = zt_fs::euid().ok()?;
        if !processes
            .owners("gnome-shell")
            .is_some_and(|uids| uids.contains(&me))
        {
            return None;
        }
        let lock = run(
            "gsettings",
            &["get", "org.gnome.desktop.screensaver", "lock-enabled"],
        )
        .complete()?;
        match lock.trim() {
            "true" => {}
            "false" => return Some(false),
            _ => return None,
        }
        let idle = run("gsettings", &["get", "org.gnome.desktop.session", "idle-delay"]).complete()?;
        let seconds: u64 = idle.trim().trim_start_matches("uint32").trim().parse().ok()?;
        Some(seconds > 0)
    }

    /// The processes running, by name; `None` when `/proc` cannot be listed
    /// or lists none (not mounted).
    fn processes(&self) -> Option<Processes> {
        use std::os::unix::fs::MetadataExt;
        let entries = std::fs::read_dir(self.path("/proc")).ok()?;
        let mut processes = Processes {
            owners: BTreeMap::new(),
            complete: true,
        };
        let mut count = 0;
        for entry in entries {
            let Ok(entry) = entry else {
                processes.complete = false;
                continue;
            };
            let pid = entry.file_name();
            if !pid
                .to_str()
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            if count == PROCESS_CAP {
                processes.complete = false;
                break;
            }
            count += 1;
            let comm = match read_capped(&entry.path().join("comm"), 64) {
                Ok((comm, _)) => comm,
                // A process that exits between the listing and this read is
                // simply gone (ENOENT, or ESRCH: 3 on Linux).
                Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
                    continue;
                }
                Err(_) => {
                    processes.complete = false;
                    continue;
                }
            };
            let owners = processes
                .owners
                .entry(comm.trim_end_matches('\n').to_owned())
                .or_default();
            if let Ok(meta) = entry.metadata() {
                owners.insert(meta.uid());
            }
        }
        (count > 0).then_some(processes)
    }

    /// [`names::PROCESSES`] and [`names::PROCESSES_MISSING`].
    fn required(&self, processes: Option<&Processes>) -> (Option<bool>, Option<Vec<String>>) {
        let Some(processes) = processes else {
            return (None, None);
        };
        let missing: Vec<String> = self
            .required_processes
            .iter()
            .filter(|name| !processes.running(name))
            .cloned()
            .collect();
        // Past the cap, a process not seen may still be running.
        if !missing.is_empty() && !processes.complete {
            return (None, None);
        }
        (Some(missing.is_empty()), Some(missing))
    }
}

/// Reads a facts-override file, for tests only: a JSON or YAML map of fact
/// name to value, `null` for unknown. Each name must be in [`names`] and each
/// value of its [`Kind`]; errors name the file, the line and the fact.
pub fn read_override(path: &Path) -> Result<BTreeMap<String, Option<Value>>, FactsError> {
    let (text, truncated) = read_capped(path, FILE_CAP).map_err(|source| FactsError::Read {
        path: path.to_owned(),
        source,
    })?;
    if truncated {
        return Err(FactsError::TooLarge {
            path: path.to_owned(),
            limit: FILE_CAP,
        });
    }
    // By extension; without one, a file opening with `{` is taken for JSON.
    let json = match path.extension().and_then(|ext| ext.to_str()) {
        Some("json") => true,
        Some("yaml" | "yml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let parsed: BTreeMap<String, Option<Value>> = if json {
        serde_json::from_str(&text).map_err(|e| {
            let message = e.to_string();
            // serde_json appends the position, which the error already carries.
            let message = message.split(" at line ").next().unwrap_or_default().to_owned();
            FactsError::Syntax {
                path: path.to_owned(),
                line: e.line(),
                message,
            }
        })?
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| FactsError::Syntax {
            path: path.to_owned(),
            line: e.location().map_or(0, |at| at.line()),
            message: e.to_string(),
        })?
    };
    for (fact, value) in &parsed {
        let fact_error = |message: String| FactsError::Fact {
            path: path.to_owned(),
            line: line_of(&text, fact),
            fact: fact.clone(),
            message,
        };
        let Some(kind) = Kind::of(fact) else {
            return Err(fact_error("not a fact the agent reports".to_owned()));
        };
        if let Some(value) = value
            && !kind.accepts(value)
        {
            return Err(fact_error(format!(
                "expected {} or null, found {value}",
                kind.describe()
            )));
        }
    }
    Ok(parsed)
}

/// The first line (from 1) where `key` stands as a map key, else the first
/// where it appears quoted (several keys on a line); 0 if none.
fn line_of(text: &str, key: &str) -> usize {
    let as_key = |line: &str| {
        let line = line.trim_start().trim_start_matches(['{', ',', ' ']);
        ["\"", "'", ""].iter().any(|quote| {
            line.strip_prefix(quote)
                .and_then(|rest| rest.strip_prefix(key))
                .and_then(|rest| rest.strip_prefix(quote))
                .is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
    };
    let quoted = |line: &str| line.contains(&format!("\"{key}\"")) || line.contains(&format!("'{key}'"));
    text.lines()
        .position(as_key)
        .or_else(|| text.lines().position(quoted))
        .map_or(0, |index| index + 1)
}

/// Processes by name (`comm`), with the uids they run as.
struct Processes {
    owners: BTreeMap<String, BTreeSet<u32>>,
    /// False when the scan stopped at [`PROCESS_CAP`] or a name was unreadable.
    complete: bool,
}

impl Processes {
    /// The uids running a process named `name` (cut as the kernel cuts `comm`).
    fn owners(&self, name: &str) -> Option<&BTreeSet<u32>> {
        self.owners.get(comm_of(name))
    }

    fn running(&self, name: &str) -> bool {
        self.owners(name).is_some()
    }
}

/// `name` as `/proc/PID/comm` shows it: at most [`COMM_LEN`] bytes.
fn comm_of(name: &str) -> &str {
    let mut end = name.len().min(COMM_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or(name)
}

/// One mounted file system.
#[derive(Debug, PartialEq)]
struct Mount {
    mount_point: String,
    /// What was mounted: `/dev/…`, or `overlay`, `tmpfs`, `server:/path`, a dataset.
    source: String,
    /// `major:minor` (from `mountinfo` only).
    dev: Option<String>,
}

/// `/proc/PID/mountinfo`: `id parent major:minor root mount-point options
/// [optional…] - type source super-options`. `None` if any line is malformed:
/// a missed line could be the mount that decides the answer.
fn parse_mountinfo(text: &str) -> Option<Vec<Mount>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().skip(6).position(|field| *field == "-")? + 6;
            Some(Mount {
                mount_point: unescape_octal(fields.get(4)?),
                source: unescape_octal(fields.get(separator + 2)?),
                dev: Some((*fields.get(2)?).to_owned()),
            })
        })
        .collect()
}

/// `/proc/mounts`: `source mount-point type options dump pass`.
fn parse_mounts(text: &str) -> Option<Vec<Mount>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            let source = unescape_octal(fields.next()?);
            let mount_point = unescape_octal(fields.next()?);
            fields.next()?;
            Some(Mount {
                mount_point,
                source,
                dev: None,
            })
        })
        .collect()
}

/// The kernel writes space, tab, newline and backslash in mount fields as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| byte == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let digits = std::str::from_utf8(digits).ok()?;
                u8::from_str_radix(digits, 8).ok()
            });
        match octal {
            Some(decoded) => {
                out.push(decoded);
                i += 4;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The index of the mount `path` is on: the longest mount point that is a
/// prefix of it, the latest one when a mount point was mounted over.
fn mount_for(mounts: &[Mount], path: &str) -> Option<usize> {
    let mut best: Option<(usize, usize)> = None;
    for (index, mount) in mounts.iter().enumerate() {
        let point = mount.mount_point.trim_end_matches('/');
        let contains = point.is_empty()
            || path == point
            || path.strip_prefix(point).is_some_and(|rest| rest.starts_with('/'));
        if contains && best.is_none_or(|(_, len)| point.len() >= len) {
            best = Some((index, point.len()));
        }
    }
    best.map(|(index, _)| index)
}

/// `dm-N`.
fn is_dm(name: &str) -> bool {
    name.strip_prefix("dm-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The fields of an `os-release` file. Values are shell words: bare, `'…'`
/// (literal) or `"…"` (with `\"`, `\\`, `\$`, `` \` `` escapes); a line that
/// is not one is skipped.
fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return None;
            }
            Some((key.to_owned(), unquote(value)?))
        })
        .collect()
}

/// One shell word without its quoting; `None` if a quote is not closed or
/// the word is several (unquoted blank).
fn unquote(word: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        c @ ('"' | '\\' | '$' | '`') => out.push(c),
                        c => {
                            out.push('\\');
                            out.push(c);
                        }
                    },
                    c => out.push(c),
                }
            },
            '\\' => out.push(chars.next()?),
            c if c.is_whitespace() => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Upgrades in `apt-get -s upgrade`'s plan that come from a security archive:
/// `Inst pkg [old] (new Debian-Security:12/stable-security [amd64])`.
fn count_security_upgrades(plan: &str) -> u64 {
    let count = plan
        .lines()
        .filter(|line| line.starts_with("Inst "))
        .filter(|line| {
            let origin = line.split_once('(').map_or("", |(_, origin)| origin);
            origin.contains("-security") || origin.contains("Debian-Security")
        })
        .count();
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// What one firewall tool showed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ruleset {
    /// At least one rule, or a default policy that is not accept.
    Rules,
    /// Nothing loaded.
    Empty,
    /// The tool is not installed.
    Absent,
    /// It failed: not root, timed out, killed.
    Unreadable,
}

impl Ruleset {
    fn from_run(ran: &Ran, has_rules: fn(&str) -> bool) -> Self {
        match ran {
            Ran::Missing => Self::Absent,
            Ran::Output {
                success: true,
                stdout,
                truncated,
            } => {
                if has_rules(stdout) {
                    Self::Rules
                } else if *truncated {
                    Self::Unreadable
                } else {
                    Self::Empty
                }
            }
            Ran::Output { .. } | Ran::Failed => Self::Unreadable,
        }
    }
}

/// Active if either tool shows rules; inactive only if one showed nothing and
/// the other showed nothing too or is not installed (iptables-nft writes into
/// nftables; legacy iptables cannot be loaded without its tool).
fn firewall_verdict(nft: Ruleset, iptables: Ruleset) -> Option<bool> {
    use Ruleset::*;
    match (nft, iptables) {
        (Rules, _) | (_, Rules) => Some(true),
        (Empty, Empty | Absent) | (Absent, Empty) => Some(false),
        _ => None,
    }
}

/// Whether `nft list ruleset` shows a chain with a rule in it, or a base
/// chain whose policy is drop.
fn nft_has_rules(ruleset: &str) -> bool {
    let mut depth = 0usize;
    // The brace depth of the body of the chain being read.
    let mut chain_body: Option<usize> = None;
    for line in ruleset.lines() {
        let line = line.trim();
        if chain_body == Some(depth) {
            if line.contains("policy drop") {
                return true;
            }
            let header = ["type ", "policy ", "comment ", "devices "]
                .iter()
                .any(|prefix| line.starts_with(prefix));
            if !line.is_empty() && !line.starts_with(['#', '}']) && !header {
                return true;
            }
        }
        if chain_body.is_none() && line.starts_with("chain ") && line.ends_with('{') {
            chain_body = Some(depth + 1);
        }
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        depth = (depth + opens).saturating_sub(closes);
        if chain_body.is_some_and(|body| depth < body) {
            chain_body = None;
        }
    }
    false
}

/// Whether `iptables-save` shows a rule (`-A`) or a built-in chain whose
/// policy is not ACCEPT (`:INPUT DROP [0:0]`).
fn iptables_has_rules(save: &str) -> bool {
    save.lines().any(|line| {
        line.starts_with("-A ")
            || (line.starts_with(':')
                && line
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|policy| policy != "ACCEPT" && policy != "-"))
    })
}

/// The CPU's model name from `/proc/cpuinfo` (x86's `model name`, or what
/// other architectures call it).
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Model", "Hardware", "cpu model", "uarch"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                let value = value.trim();
                (name.trim() == *key && !value.is_empty()).then(|| value.to_owned())
            })
        })
}

/// A trimmed string, `None` when nothing is left.
fn non_empty(text: String) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// At most `cap` bytes of `path`, and whether there was more.
fn read_capped_bytes(path: &Path, cap: u64) -> io::Result<(Vec<u8>, bool)> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    let truncated = u64::try_from(bytes.len()).unwrap_or(u64::MAX) > cap;
    bytes.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    Ok((bytes, truncated))
}

/// [`read_capped_bytes`] as text (invalid UTF-8 replaced).
fn read_capped(path: &Path, cap: u64) -> io::Result<(String, bool)> {
    let (bytes, truncated) = read_capped_bytes(path, cap)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), truncated))
}

/// A small file whole; an error when it is longer than [`FILE_CAP`].
fn read_small(path: &Path) -> io::Result<String> {
    match read_capped(path, FILE_CAP)? {
        (text, false) => Ok(text),
        (_, true) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than {FILE_CAP} bytes"),
        )),
    }
}

/// How a command ended.
#[derive(Debug)]
enum Ran {
    /// It exited; `stdout` cut at [`OUTPUT_CAP`] (then `truncated`).
    Output {
        success: bool,
        stdout: String,
        truncated: bool,
    },
    /// Not installed.
    Missing,
    /// It could not be started, or was killed at the deadline.
    Failed,
}

impl Ran {
    /// The whole output of a successful run.
    fn complete(self) -> Option<String> {
        match self {
            Self::Output {
                success: true,
                stdout,
                truncated: false,
            } => Some(stdout),
            _ => None,
        }
    }
}

/// Runs `program` (looked up in [`PROGRAM_DIRS`]) with [`COMMAND_TIMEOUT`].
fn run(program: &str, args: &[&str]) -> Ran {
    run_for(program, args, COMMAND_TIMEOUT)
}

/// Runs `program` in the C locale with no input, reading at most
/// [`OUTPUT_CAP`] bytes of its output, and kills it after `timeout`.
fn run_for(program: &str, args: &[&str], timeout: Duration) -> Ran {
    let Some(path) = PROGRAM_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
    else {
        return Ran::Missing;
    };
    let spawned = Command::new(&path)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ran::Missing,
        Err(error) => {
            tracing::debug!(program, %error, "could not start");
            return Ran::Failed;
        }
    };
    // Read on another thread so that a child writing more than a pipe holds
    // is not blocked while this one waits for it to exit.
    let (sender, receiver) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            // The receiver may be gone (timed out): nothing to do then.
            let _ = sender.send(read_output(stdout));
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            waited => {
                if let Err(error) = waited {
                    tracing::debug!(program, %error, "could not wait");
                } else {
                    tracing::warn!(program, ?timeout, "killed: still running at the deadline");
                }
                // Already exited or not ours to kill any more: either way it is gone.
                let _ = child.kill();
                let _ = child.wait();
                return Ran::Failed;
            }
        }
    };
    // The output is complete unless a child of the command still holds the pipe.
    match receiver.recv_timeout(Duration::from_secs(1)) {
        Ok(Ok((stdout, truncated))) => Ran::Output {
            success: status.success(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            truncated,
        },
        _ => Ran::Failed,
    }
}

/// At most [`OUTPUT_CAP`] bytes of `stdout`; the rest is read and dropped
/// so that the command can finish.
fn read_output(mut stdout: impl Read) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    (&mut stdout).take(OUTPUT_CAP).read_to_end(&mut kept)?;
    let dropped = io::copy(&mut stdout, &mut io::sink())?;
    Ok((kept, dropped > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use names::*;

    /// A fake root: files written under a temporary directory.
    struct Root(tempfile::TempDir);

    impl Root {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn file(&self, path: &str, content: &[u8]) -> &Self {
            let path = self.0.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
            self
        }

        fn dir(&self, path: &str) -> &Self {
            std::fs::create_dir_all(self.0.path().join(path.trim_start_matches('/'))).unwrap();
            self
        }

        /// A device-mapper device `dm-N` with its name, uuid and dm slaves.
        fn dm(&self, n: u32, name: &str, uuid: &str, slaves: &[&str]) -> &Self {
            self.file(
                &format!("/sys/block/dm-{n}/dm/name"),
                format!("{name}\n").as_bytes(),
            );
            self.file(
                &format!("/sys/block/dm-{n}/dm/uuid"),
                format!("{uuid}\n").as_bytes(),
            );
            self.dir(&format!("/sys/block/dm-{n}/slaves"));
            for slave in slaves {
                self.file(&format!("/sys/block/dm-{n}/slaves/{slave}"), b"");
            }
            self
        }

        fn mountinfo(&self, mounts: &[(&str, &str, &str)]) -> &Self {
            let lines: String = mounts
                .iter()
                .enumerate()
                .map(|(i, (point, fs, source))| {
                    format!(
                        "{} 1 254:{i} / {point} rw,relatime shared:1 - {fs} {source} rw\n",
                        20 + i
                    )
                })
                .collect();
            self.file("/proc/self/mountinfo", lines.as_bytes())
        }

        fn collector(&self, required: &[&str]) -> Collector {
            let required = required.iter().map(|name| (*name).to_owned()).collect();
            Collector::new(required, "1.2.3").with_root(self.0.path().to_owned(), false)
        }

        fn facts(&self) -> Facts {
            self.collector(&[]).collect(1_700_000_000)
        }
    }

    fn value(facts: &Facts, name: &str) -> Option<Value> {
        facts.get(name).unwrap().value.clone()
    }

    fn flag(facts: &Facts, name: &str) -> Option<bool> {
        value(facts, name).map(|value| value.as_bool().unwrap())
    }

    const LUKS: &str = "CRYPT-LUKS2-0c1e5a7f9b2d4e6f8a0b1c2d3e4f5a6b-root";

    #[test]
    fn os_release_is_read_with_shell_quoting() {
        let root = Root::new();
        root.file(
            "/etc/os-release",
            b"# comment\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm) \\\"x\\\"\"\nNAME='Debian GNU/Linux'\nVERSION_ID=\"12\"\nID=debian\nBROKEN=\"unclosed\n",
        );
        let facts = root.facts();
        assert_eq!(value(&facts, OS_ID), Some(Value::from("debian")));
        assert_eq!(value(&facts, OS_VERSION_ID), Some(Value::from("12")));
        assert_eq!(
            value(&facts, OS_NAME),
            Some(Value::from("Debian GNU/Linux 12 (bookworm) \"x\""))
        );
        assert_eq!(unquote("'a b'\"c\"d"), Some("a bcd".to_owned()));
        assert_eq!(unquote("a b"), None);
        assert_eq!(unquote("\"open"), None);
    }

    #[test]
    fn os_release_falls_back_to_usr_lib_and_missing_keys_are_unknown() {
        let root = Root::new();
        root.file("/usr/lib/os-release", b"ID=fedora\n");
        let facts = root.facts();
        assert_eq!(value(&facts, OS_ID), Some(Value::from("fedora")));
        assert_eq!(value(&facts, OS_VERSION_ID), None);
        let empty = Root::new().facts();
        assert_eq!(value(&empty, OS_ID), None);
        assert_eq!(value(&empty, OS_NAME), None);
    }

    #[test]
    fn kernel_release_and_agent_version() {
        let root = Root::new();
        root.file("/proc/sys/kernel/osrelease", b"6.1.0-18-amd64\n");
        let facts = root.facts();
        assert_eq!(value(&facts, KERNEL), Some(Value::from("6.1.0-18-amd64")));
        assert_eq!(value(&facts, AGENT_VERSION), Some(Value::from("1.2.3")));
        assert!(facts.values().all(|fact| fact.observed_at == 1_700_000_000));
    }

    #[test]
    fn root_on_luks_is_encrypted_and_so_is_home_on_it() {
        let root = Root::new();
        root.mountinfo(&[("/", "ext4", "/dev/mapper/root"), ("/proc", "proc", "proc")])
            .dm(0, "root", LUKS, &["nvme0n1p3"]);
        let facts = root.facts();
        assert_eq!(flag(&facts, ROOT_ENCRYPTED), Some(true));
        assert_eq!(flag(&facts, HOME_ENCRYPTED), Some(true));
    }

    #[test]
    fn lvm_on_luks_is_encrypted_through_the_slaves() {
        let root = Root::new();
        root.mountinfo(&[
            ("/", "ext4", "/dev/mapper/vg-root"),
            ("/home", "ext4", "/dev/dm-2"),
        ])
        .dm(0, "luks-abc", LUKS, &["sda3"])
        .dm(1, "vg-root", "LVM-aaaa", &["dm-0"])
        .dm(2, "vg-home", "LVM-bbbb", &["dm-0"]);
        let facts = root.facts();
        assert_eq!(flag(&facts, ROOT_ENCRYPTED), Some(true));
        assert_eq!(flag(&facts, HOME_ENCRYPTED), Some(true));
    }

    #[test]
    fn plain_partitions_and_lvm_without_crypt_are_not_encrypted() {
        let root = Root::new();
        root.mountinfo(&[("/", "ext4", "/dev/sda2")]);
        assert_eq!(flag(&root.facts(), ROOT_ENCRYPTED), Some(false));
        assert_eq!(flag(&root.facts(), HOME_ENCRYPTED), Some(false));

        let lvm = Root::new();
        lvm.mountinfo(&[("/", "ext4", "/dev/mapper/vg-root")])
            .dm(0, "vg-root", "LVM-aaaa", &["sda2"]);
        assert_eq!(flag(&lvm.facts(), ROOT_ENCRYPTED), Some(false));
    }

    #[test]
    fn separate_plain_home_under_an_encrypted_root_is_not_encrypted() {
        let root = Root::new();
        root.mountinfo(&[
            ("/", "ext4", "/dev/mapper/root"),
            ("/home", "ext4", "/dev/sdb1"),
            ("/home/user/mnt", "ext4", "/dev/mapper/root"),
        ])
        .dm(0, "root", LUKS, &[]);
        let facts = root.facts();
        assert_eq!(flag(&facts, ROOT_ENCRYPTED), Some(true));
        assert_eq!(flag(&facts, HOME_ENCRYPTED), Some(false));
    }

    #[test]
    fn the_last_mount_over_a_mount_point_wins() {
        let root = Root::new();
        root.mountinfo(&[("/", "ext4", "/dev/sda1"), ("/", "ext4", "/dev/mapper/root")])
            .dm(0, "root", LUKS, &[]);
        assert_eq!(flag(&root.facts(), ROOT_ENCRYPTED), Some(true));
    }

    #[test]
    fn disks_without_a_readable_block_device_are_unknown() {
        // No mount table at all.
        let facts = Root::new().facts();
        assert_eq!(flag(&facts, ROOT_ENCRYPTED), None);
        assert_eq!(flag(&facts, HOME_ENCRYPTED), None);

        // A container's overlay root.
        let overlay = Root::new();
        overlay.mountinfo(&[("/", "overlay", "overlay")]);
        assert_eq!(flag(&overlay.facts(), ROOT_ENCRYPTED), None);

        // A mapper name sysfs does not know, and a dm device whose uuid is unreadable.
        let unnamed = Root::new();
        unnamed.mountinfo(&[("/", "ext4", "/dev/mapper/ghost"), ("/home", "ext4", "/dev/dm-0")]);
        unnamed
            .dir("/sys/block/dm-0/dm/uuid")
            .dir("/sys/block/dm-0/slaves");
        let facts = unnamed.facts();
        assert_eq!(flag(&facts, ROOT_ENCRYPTED), None);
        assert_eq!(flag(&facts, HOME_ENCRYPTED), None);

        // A malformed mount table is unknown, not a guess from what parsed.
        let garbled = Root::new();
        garbled.file(
            "/proc/self/mountinfo",
            b"20 1 8:1 / / rw - ext4 /dev/sda1 rw\nnonsense\n",
        );
        assert_eq!(flag(&garbled.facts(), ROOT_ENCRYPTED), None);
    }

    #[test]
    fn proc_mounts_is_the_fallback_and_octal_escapes_are_decoded() {
        let root = Root::new();
        root.file(
            "/proc/mounts",
            b"/dev/mapper/root / ext4 rw 0 0\n/dev/sdb1 /home ext4 rw 0 0\n",
        )
        .dm(0, "root", LUKS, &[]);
        let facts = root.facts();
        assert_eq!(flag(&facts, ROOT_ENCRYPTED), Some(true));
        assert_eq!(flag(&facts, HOME_ENCRYPTED), Some(false));
        assert_eq!(unescape_octal("/mnt/a\\040b\\\\"), "/mnt/a b\\\\");
    }

    #[test]
    fn secure_boot_from_the_efi_variable() {
        let var = SECURE_BOOT_VAR;
        let on = Root::new();
        on.file(var, &[6, 0, 0, 0, 1]);
        assert_eq!(flag(&on.facts(), SECURE_BOOT), Some(true));

        let off = Root::new();
        off.file(var, &[6, 0, 0, 0, 0]);
        assert_eq!(flag(&off.facts(), SECURE_BOOT), Some(false));

        let missing = Root::new();
        missing.dir("/sys/firmware/efi/efivars");
        assert_eq!(flag(&missing.facts(), SECURE_BOOT), None);

        let short = Root::new();
        short.file(var, &[6, 0, 0]);
        assert_eq!(flag(&short.facts(), SECURE_BOOT), None);

        let unreadable = Root::new();
        unreadable.dir(var);
        assert_eq!(flag(&unreadable.facts(), SECURE_BOOT), None);

        // BIOS: firmware but no EFI; no Secure Boot to speak of.
        let bios = Root::new();
        bios.dir("/sys/firmware/acpi");
        assert_eq!(flag(&bios.facts(), SECURE_BOOT), Some(false));

        // No /sys/firmware at all: nothing is known.
        assert_eq!(flag(&Root::new().facts(), SECURE_BOOT), None);
    }

    fn with_processes(names: &[&str]) -> Root {
        let root = Root::new();
        for (pid, name) in names.iter().enumerate() {
            root.file(&format!("/proc/{}/comm", pid + 1), format!("{name}\n").as_bytes());
        }
        root.file("/proc/self/mountinfo", b"").dir("/proc/sys");
        root
    }

    #[test]
    fn required_processes_running_and_missing() {
        // The kernel keeps the first 15 bytes of a name.
        let root = with_processes(&["systemd", "sshd", "zt-device-agent"]);
        let all = root.collector(&["sshd", "zt-device-agent-daemon"]).collect(1);
        assert_eq!(flag(&all, PROCESSES), Some(true));
        assert_eq!(value(&all, PROCESSES_MISSING), Some(serde_json::json!([])));

        let some = root.collector(&["sshd", "auditd", "clamd"]).collect(1);
        assert_eq!(flag(&some, PROCESSES), Some(false));
        assert_eq!(
            value(&some, PROCESSES_MISSING),
            Some(serde_json::json!(["auditd", "clamd"]))
        );

        assert_eq!(flag(&root.facts(), PROCESSES), Some(true));

        // No /proc, or a /proc with no processes in it (not mounted).
        let none = Root::new().collector(&["sshd"]).collect(1);
        assert_eq!(flag(&none, PROCESSES), None);
        assert_eq!(value(&none, PROCESSES_MISSING), None);
        let empty = with_processes(&[]).collector(&[]).collect(1);
        assert_eq!(flag(&empty, PROCESSES), None);
    }

    #[test]
    fn screen_lock_is_unknown_without_a_desktop_or_commands() {
        assert_eq!(flag(&with_processes(&["sshd"]).facts(), SCREEN_LOCK), None);
        // A desktop, but no commands: still unknown, never true.
        assert_eq!(flag(&with_processes(&["gnome-shell"]).facts(), SCREEN_LOCK), None);
    }

    #[test]
    fn facts_needing_commands_are_unknown_without_them() {
        let root = Root::new();
        root.file("/etc/os-release", b"ID=debian\n");
        let facts = root.facts();
        assert_eq!(value(&facts, SECURITY_UPDATES), None);
        assert_eq!(value(&facts, FIREWALL), None);
    }

    #[test]
    fn unreadable_sources_are_unknown_never_true() {
        // Directories where files should be: every read fails.
        let root = Root::new();
        for path in [
            "/etc/os-release",
            "/usr/lib/os-release",
            "/proc/sys/kernel/osrelease",
            "/proc/self/mountinfo",
            "/proc/mounts",
            "/proc/1/comm",
            SECURE_BOOT_VAR,
        ] {
            root.dir(path);
        }
        let facts = root.collector(&["sshd"]).collect(5);
        for name in names::ALL.iter().filter(|name| **name != AGENT_VERSION) {
            assert_eq!(value(&facts, name), None, "{name}");
        }
    }

    #[test]
    fn every_fact_is_reported_with_its_kind() {
        let root = with_processes(&["sshd"]);
        root.file(
            "/etc/os-release",
            b"ID=debian\nVERSION_ID=12\nPRETTY_NAME=Debian\n",
        )
        .file("/proc/sys/kernel/osrelease", b"6.1.0\n");
        let facts = root.collector(&["sshd"]).collect(1);
        assert_eq!(facts.len(), names::ALL.len());
        for name in names::ALL {
            let kind = Kind::of(name).unwrap();
            if let Some(value) = &facts.get(*name).unwrap().value {
                assert!(kind.accepts(value), "{name}: {value}");
            }
        }
    }

    #[test]
    fn apt_plans_count_security_upgrades_only() {
        let plan = "\
Reading package lists...
Inst libssl3 [3.0.11-1~deb12u1] (3.0.11-1~deb12u2 Debian-Security:12/stable-security [amd64])
Inst tzdata [2024a-0+deb12u1] (2024b-0+deb12u1 Debian:12.8/stable [all])
Inst openssh-client [1:8.9p1-3ubuntu0.6] (1:8.9p1-3ubuntu0.10 Ubuntu:22.04/jammy-security [amd64])
Conf libssl3 (3.0.11-1~deb12u2 Debian-Security:12/stable-security [amd64])
";
        assert_eq!(count_security_upgrades(plan), 2);
        assert_eq!(count_security_upgrades(""), 0);
    }

    #[test]
    fn nft_rulesets() {
        let empty_chain = "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n";
        assert!(!nft_has_rules(empty_chain));
        assert!(!nft_has_rules(""));
        assert!(!nft_has_rules("table inet filter {\n}\n"));
        let with_rule = "table inet filter {\n\tset allowed {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1 }\n\t}\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport { 22, 443 } accept\n\t}\n}\n";
        assert!(nft_has_rules(with_rule));
        let drop_policy = empty_chain.replace("policy accept", "policy drop");
        assert!(nft_has_rules(&drop_policy));
        // A set's elements are not rules.
        assert!(!nft_has_rules(
            "table ip t {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { 1.2.3.4 }\n\t}\n}\n"
        ));
    }

    #[test]
    fn iptables_saves() {
        let empty = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
        assert!(!iptables_has_rules(empty));
        assert!(iptables_has_rules(
            &empty.replace(":FORWARD ACCEPT", ":FORWARD DROP")
        ));
        assert!(iptables_has_rules(
            &empty.replace("COMMIT", "-A INPUT -j DROP\nCOMMIT")
        ));
        assert!(!iptables_has_rules(
            &empty.replace("COMMIT", ":DOCKER - [0:0]\nCOMMIT")
        ));
    }

    #[test]
    fn firewall_verdicts() {
        use Ruleset::*;
        let table = [
            (Rules, Unreadable, Some(true)),
            (Unreadable, Rules, Some(true)),
            (Empty, Empty, Some(false)),
            (Empty, Absent, Some(false)),
            (Absent, Empty, Some(false)),
            (Absent, Absent, None),
            (Unreadable, Empty, None),
            (Empty, Unreadable, None),
            (Unreadable, Unreadable, None),
        ];
        for (nft, iptables, expected) in table {
            assert_eq!(firewall_verdict(nft, iptables), expected, "{nft:?} {iptables:?}");
        }
        let truncated = Ran::Output {
            success: true,
            stdout: String::new(),
            truncated: true,
        };
        assert_eq!(Ruleset::from_run(&truncated, nft_has_rules), Unreadable);
        let refused = Ran::Output {
            success: false,
            stdout: String::new(),
            truncated: false,
        };
        assert_eq!(Ruleset::from_run(&refused, nft_has_rules), Unreadable);
        assert_eq!(Ruleset::from_run(&Ran::Missing, nft_has_rules), Absent);
    }

    #[test]
    fn commands_are_bounded_in_time_and_output() {
        let started = Instant::now();
        assert!(matches!(
            run_for("sleep", &["5"], Duration::from_millis(100)),
            Ran::Failed
        ));
        assert!(started.elapsed() < Duration::from_secs(3));

        // Endless output: capped while it runs, then killed.
        assert!(matches!(
            run_for("yes", &[], Duration::from_millis(300)),
            Ran::Failed
        ));
        let long = run_for("head", &["-c", "1100000", "/dev/zero"], Duration::from_secs(5));
        assert!(matches!(
            long,
            Ran::Output { success: true, ref stdout, truncated: true } if stdout.len() == 1024 * 1024
        ));

        assert_eq!(
            run_for("echo", &["hi"], Duration::from_secs(5)).complete(),
            Some("hi\n".to_owned())
        );
        assert!(matches!(
            run_for("false", &[], Duration::from_secs(5)),
            Ran::Output { success: false, .. }
        ));
        assert!(matches!(
            run_for("zt-no-such-program", &[], Duration::from_secs(5)),
            Ran::Missing
        ));
    }

    #[test]
    fn hardware_from_the_fake_root() {
        let root = Root::new();
        root.file("/proc/sys/kernel/hostname", b"laptop-17\n")
            .file("/sys/class/dmi/id/sys_vendor", b"LENOVO\n")
            .file(
                "/proc/cpuinfo",
                b"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i7-1165G7 @ 2.80GHz\n",
            );
        let hardware = root.collector(&[]).hardware();
        assert_eq!(hardware.get("hostname").unwrap(), "laptop-17");
        assert_eq!(hardware.get("sys_vendor").unwrap(), "LENOVO");
        assert!(!hardware.contains_key("product_name"));
        assert_eq!(hardware.get("arch").unwrap(), std::env::consts::ARCH);
        assert_eq!(
            hardware.get("cpu_model").unwrap(),
            "Intel(R) Core(TM) i7-1165G7 @ 2.80GHz"
        );
    }

    #[test]
    fn overrides_in_json_and_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("facts.json");
        std::fs::write(
            &json,
            "{\n  \"os.id\": \"debian\",\n  \"disk.root_encrypted\": true,\n  \"updates.security_pending\": 3,\n  \"firewall.active\": null\n}\n",
        )
        .unwrap();
        let read = read_override(&json).unwrap();
        assert_eq!(read.get(OS_ID).unwrap(), &Some(Value::from("debian")));
        assert_eq!(read.get(ROOT_ENCRYPTED).unwrap(), &Some(Value::Bool(true)));
        assert_eq!(read.get(SECURITY_UPDATES).unwrap(), &Some(Value::from(3)));
        assert_eq!(read.get(FIREWALL).unwrap(), &None);

        let yaml = dir.path().join("facts.yaml");
        std::fs::write(
            &yaml,
            "os.id: debian\nsecure_boot.enabled: false\nprocesses.missing: [auditd]\nscreen_lock.enabled: null\n",
        )
        .unwrap();
        let read = read_override(&yaml).unwrap();
        assert_eq!(read.get(SECURE_BOOT).unwrap(), &Some(Value::Bool(false)));
        assert_eq!(
            read.get(PROCESSES_MISSING).unwrap(),
            &Some(serde_json::json!(["auditd"]))
        );
        assert_eq!(read.get(SCREEN_LOCK).unwrap(), &None);

        // A YAML flow map is YAML, though it opens with a brace.
        let flow = dir.path().join("flow.yml");
        std::fs::write(&flow, "{os.id: debian, agent.version: '1.0'}\n").unwrap();
        let read = read_override(&flow).unwrap();
        assert_eq!(read.get(AGENT_VERSION).unwrap(), &Some(Value::from("1.0")));
    }

    #[test]
    fn override_errors_name_the_file_the_line_and_the_fact() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cases = [
            (
                write(
                    "syntax.json",
                    "{\n  \"os.id\": \"debian\",\n  \"kernel.release\" 6\n}\n",
                ),
                "syntax.json: line 3: ",
            ),
            (
                write("syntax.yaml", "os.id: debian\nkernel.release: [6\n"),
                "syntax.yaml: line ",
            ),
            (
                write("type.yaml", "os.id: debian\ndisk.root_encrypted: \"yes\"\n"),
                "type.yaml: line 2: fact disk.root_encrypted: expected true or false or null, found \"yes\"",
            ),
            (
                write(
                    "count.json",
                    "{\"os.id\": \"debian\",\n\"updates.security_pending\": -1}",
                ),
                "count.json: line 2: fact updates.security_pending: expected a non-negative integer",
            ),
            (
                write("name.yaml", "# header\nos.id: debian\n\nfirewall.enabled: true\n"),
                "name.yaml: line 4: fact firewall.enabled: not a fact the agent reports",
            ),
            (
                write(
                    "one-line.json",
                    "\n{\"os.id\": \"debian\", \"kernel.release\": 6}",
                ),
                "one-line.json: line 2: fact kernel.release: expected a string or null, found 6",
            ),
        ];
        for (path, expected) in cases {
            let error = read_override(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(!error.ends_with('.'), "{error}");
        }
        let error = read_override(&dir.path().join("absent.json")).unwrap_err();
        assert!(error.to_string().contains("absent.json"), "{error}");
        let big = write("big.yaml", &"# padding\n".repeat(10_000));
        assert!(matches!(read_override(&big), Err(FactsError::TooLarge { .. })));
    }
}
