//! `zt audit`: the decision log's chain verified, and its records queried.

use std::process::ExitCode;

use zt_policy::matching::StringMatch;

use crate::{AuditQueryArgs, AuditVerifyArgs};

/// `zt audit verify LOG`: the record count and head hash, or the first broken line.
pub fn verify(args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let head = zt_audit::verify(&args.log, |_| {})?;
    println!(
        "{}: {} records, chain intact, head {}",
        args.log.display(),
        head.records,
        head.hash
    );
    Ok(ExitCode::SUCCESS)
}

/// A moment given as RFC 3339 or Unix seconds, in Unix milliseconds.
fn moment(flag: &str, text: &str) -> anyhow::Result<u64> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: neither RFC 3339 nor Unix seconds ({e})"))?;
    u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| anyhow::anyhow!("{flag} {text:?}: before 1970"))
}

/// `zt audit query LOG [filters]`: matching records, one JSON line each.
pub fn query(args: AuditQueryArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(|t| moment("--since", t)).transpose()?;
    let until = args.until.as_deref().map(|t| moment("--until", t)).transpose()?;
    let principal = args.principal.as_deref().map(|p| StringMatch::parse(p, false));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written: std::io::Result<()> = Ok(());
    zt_audit::verify(&args.log, |record| {
        let wanted = principal
            .as_ref()
            .is_none_or(|p| record.source_principal.as_deref().is_some_and(|v| p.matches(v)))
            && args.decision.as_ref().is_none_or(|d| *d == record.decision)
            && args.policy.as_deref().is_none_or(|p| match p {
                "none" => record.policy.is_none(),
                p => record.policy.as_deref() == Some(p),
            })
            && since.is_none_or(|t| record.time_ms >= t)
            && until.is_none_or(|t| record.time_ms < t);
        if wanted && written.is_ok() {
            written = serde_json::to_writer(&mut out, record)
                .map_err(std::io::Error::other)
                .and_then(|()| std::io::Write::write_all(&mut out, b"\n"));
        }
    })?;
    written?;
    std::io::Write::flush(&mut out)?;
    Ok(ExitCode::SUCCESS)
}
