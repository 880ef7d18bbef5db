//! `zt policy generate`'s pipeline over a large decision log, on one thread:
//! every record read and its chain and the log's checkpoints verified (what
//! `zt audit verify` does), the verified records folded into flows and the
//! policies generated, and both together, as the command runs them.

use std::time::{Duration, Instant};

use zt_audit::Record;

use crate::{Error, Figure};

/// Writes a signed decision log of `records` records of a mesh's traffic
/// then times verifying it, generating policies from its records, and both
/// in one pass ([`Figure::Rate`] each).
/// With `keep`, the log is written there and kept, so that the command itself
/// can be timed on it (`zt policy generate --log FILE`).
pub fn run(
    records: u64,
    keep: Option<&std::path::Path>,
    mut report: impl FnMut(Figure),
) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let log = keep.map_or_else(|| dir.path().join("decisions.log"), std::path::Path::to_owned);
    let started = Instant::now();
    write_log(&log, records)?;
    report(Figure::Rate {
        name: "decision log written (signed checkpoints every 1000)".into(),
        items: records,
        what: "records",
        took: started.elapsed(),
    });

    // Verification alone: what `zt audit verify` does.
    let started = Instant::now();
    zt_audit::signed::verify(&log, None, |_| {})?;
    report(Figure::Rate {
        name: "read and verified (chain, tree, checkpoints)".into(),
        items: records,
        what: "records",
        took: started.elapsed(),
    });
    // Generation alone, from records already verified and in memory.
    let mut verified = Vec::with_capacity(usize::try_from(records).unwrap_or(0));
    zt_audit::signed::verify(&log, None, |record| verified.push(record.clone()))?;
    let started = Instant::now();
    let mut traffic = zt_observe::Traffic::new(zt_observe::Window::default());
    for record in &verified {
        traffic.add(record);
    }
    let generated = zt_observe::generate::generate(&traffic, &zt_observe::generate::Options::default());
    report(Figure::Rate {
        name: format!(
            "folded into {} flows, {} policies generated ({} rules)",
            traffic.len(),
            generated.files.len(),
            generated.rules
        ),
        items: records,
        what: "records",
        took: started.elapsed(),
    });
    drop(verified);
    // The whole pipeline, as the command runs it.
    let started = Instant::now();
    let mut traffic = zt_observe::Traffic::new(zt_observe::Window::default());
    zt_audit::signed::verify(&log, None, |record| traffic.add(record))?;
    zt_observe::generate::generate(&traffic, &zt_observe::generate::Options::default());
    report(Figure::Rate {
        name: "read, verified, folded, generated: in all".into(),
        items: records,
        what: "records",
        took: started.elapsed(),
    });
    Ok(())
}

/// Destinations, callers and routes of the synthetic mesh: 40 workloads in 8
/// namespaces, each called by 4 others on 6 routes, half of them with an ID
/// (a number or a UUID) in the path; one request in 50 in plaintext.
fn record(i: u64) -> Record {
    let destination = i % 40;
    let caller = (destination + 1 + (i / 40) % 4) % 40;
    let route = (i / 160) % 6;
    let path = match route {
        0 => "/healthz".to_owned(),
        1 => format!("/api/v1/items/{}", i % 10_007),
        2 => format!(
            "/api/v1/orders/{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            i,
            i % 65_536,
            i % 4096,
            (i / 7) % 4096,
            i * 31
        ),
        3 => "/api/v1/search".to_owned(),
        4 => format!("/users/{}/profile", i % 997),
        _ => "/api/v1/items".to_owned(),
    };
    let method = if route == 5 { "POST" } else { "GET" };
    let plaintext = i.is_multiple_of(50);
    Record {
        seq: 0,
        time_ms: 1_790_000_000_000 + i,
        id: format!("{i:032x}"),
        source_principal: (!plaintext)
            .then(|| format!("spiffe://example.org/ns/ns-{}/sa/app-{caller}", caller % 8)),
        source_ip: Some(format!("10.0.{}.{}", caller / 256, caller % 256)),
        destination: format!("ns-{}/app-{destination}", destination % 8),
        port: Some(15006),
        protocol: "http".into(),
        method: Some(method.into()),
        host: Some(format!("app-{destination}")),
        path: Some(path),
        decision: "ALLOW".into(),
        mode: "permissive".into(),
        policy: None,
        reason: "no ALLOW policy applies to the workload".into(),
        policy_version: "v1".into(),
        eval_ns: 900,
        dry_run: None,
        audit: None,
        query: None,
        input: None,
        result: None,
        revision: None,
        request_principal: None,
        prev: String::new(),
        hash: String::new(),
    }
}

fn write_log(path: &std::path::Path, records: u64) -> Result<(), Error> {
    let key = zt_audit::note::SigningKey::generate("example.org/decisions/bench")
        .map_err(|e| Error::Failed(e.to_string()))?;
    let policy = zt_audit::CheckpointPolicy {
        every: 1000,
        interval: Duration::from_secs(3600),
    };
    let mut writer = zt_audit::Writer::open_signed(path, key, policy)?;
    let mut next = 0;
    while next < records {
        let end = (next + 10_000).min(records);
        writer.append((next..end).map(record))?;
        next = end;
    }
    writer.checkpoint()?;
    Ok(())
}
