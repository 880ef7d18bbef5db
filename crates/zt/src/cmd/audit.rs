//! `zt audit`: the decision log's chain verified, and its records queried —
//! a proxy's file, or the copies proxies shipped to zt server.

use std::process::ExitCode;

use zt_audit::{Chain, Head, Record};
use zt_policy::matching::StringMatch;

use crate::{AuditQueryArgs, AuditSource, AuditVerifyArgs};

/// Verifies every chain of `source`, showing each verified record to `visit`;
/// returns each chain's name and head.
fn verified(source: &AuditSource, mut visit: impl FnMut(&Record)) -> anyhow::Result<Vec<(String, Head)>> {
    if let Some(log) = &source.log {
        let head = zt_audit::verify(log, &mut visit)?;
        return Ok(vec![(log.display().to_string(), head)]);
    }
    let client = zt_server::client::AdminClient::new(&source.socket);
    let mut chains: Vec<(String, Chain)> = Vec::new();
    let mut after = (String::new(), 0u64);
    loop {
        let page = super::admin_call(client.decisions((&after.0, after.1)))?;
        if page.is_empty() {
            break;
        }
        for shipped in page {
            let record: Record = serde_json::from_str(&shipped.record)
                .map_err(|e| anyhow::anyhow!("zt server, {}: not a record: {e}", shipped.source))?;
            if chains.last().is_none_or(|(name, _)| *name != shipped.source) {
                chains.push((shipped.source.clone(), Chain::default()));
            }
            if let Some((name, chain)) = chains.last_mut() {
                chain
                    .extend(&record)
                    .map_err(|e| anyhow::anyhow!("zt server, {name}, record {}: {e}", record.seq))?;
            }
            visit(&record);
            after = (shipped.source, record.seq);
        }
    }
    Ok(chains
        .into_iter()
        .map(|(name, chain)| (name, chain.head().clone()))
        .collect())
}

/// `zt audit verify LOG | --server`: each chain's record count and head hash,
/// or the first broken record.
pub fn verify(args: AuditVerifyArgs) -> anyhow::Result<ExitCode> {
    let chains = verified(&args.source, |_| {})?;
    if chains.is_empty() {
        println!("zt server: no decisions shipped yet");
    }
    for (name, head) in chains {
        println!(
            "{name}: {} records, chain intact, head {}",
            head.records, head.hash
        );
    }
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

/// `zt audit query LOG | --server [filters]`: matching records, one JSON line
/// each; the chain is verified on the way.
pub fn query(args: AuditQueryArgs) -> anyhow::Result<ExitCode> {
    let since = args.since.as_deref().map(|t| moment("--since", t)).transpose()?;
    let until = args.until.as_deref().map(|t| moment("--until", t)).transpose()?;
    let principal = args.principal.as_deref().map(|p| StringMatch::parse(p, false));
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut written: std::io::Result<()> = Ok(());
    verified(&args.source, |record| {
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
