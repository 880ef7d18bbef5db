//! One module per command group; each function returns the exit code or an error
//! whose text names the file, flag or value at fault.

pub mod bench;
pub mod ca;
pub mod entry;
pub mod id;
pub mod server;
pub mod svid;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use zt_identity::Bundle;

use crate::BundleArgs;

/// Largest file any command reads, in bytes; SVIDs, keys and bundles are far smaller.
const MAX_INPUT_BYTES: u64 = 1 << 20;

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads a whole input file, bounded; errors name the flag (if any) and the path.
pub fn read_input(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let name = format!("{flag} {}", path.display()).trim_start().to_owned();
    let file = std::fs::File::open(path).with_context(|| name.clone())?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| name.clone())?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        anyhow::bail!("{name}: larger than {MAX_INPUT_BYTES} bytes");
    }
    Ok(bytes)
}

/// Loads the bundle named by `--bundle`, if any.
pub fn load_bundle(args: &BundleArgs) -> anyhow::Result<Option<Bundle>> {
    let Some(path) = &args.bundle else {
        return Ok(None);
    };
    let bytes = read_input("--bundle", path)?;
    let bundle = Bundle::parse(&bytes, args.trust_domain.clone())
        .with_context(|| format!("--bundle {}", path.display()))?;
    Ok(Some(bundle))
}

/// RFC 3339 UTC, e.g. `2026-11-22T13:00:00Z`.
pub use zt_ca::rfc3339 as timestamp;
