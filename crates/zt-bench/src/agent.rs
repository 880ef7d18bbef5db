//! zt agent, with zt server, in this process, and this process as the
//! workload on the Workload API socket.

use std::time::{Duration, Instant};

use zt_identity::{SpiffeId, TrustDomain};
use zt_server::api::{BundleFormat, CreateJoinToken};
use zt_workload::client::WorkloadClient;

use crate::server::InProcessServer;
use crate::{Error, Figure, Samples, workload_entry};

/// What [`run`] measures.
#[derive(Debug, Clone, Copy)]
pub struct AgentBench {
    /// Entries created and timed to the workload's X.509-SVID stream.
    pub changes: usize,
    /// Workload API calls timed.
    pub calls: usize,
}

/// Reports [`Figure::Delays`] from an entry created on the server to its SVID
/// on a watching workload's stream, and from a policy version applied to the
/// proxies' policy stream; then [`Figure::Latency`] of Workload API calls
/// (attestation included).
pub async fn run(bench: AgentBench, mut report: impl FnMut(Figure)) -> Result<(), Error> {
    let td = TrustDomain::parse("example.org")?;
    let agent_id = SpiffeId::parse("spiffe://example.org/agent/bench")?;
    let dir = tempfile::tempdir()?;
    let location = dir
        .path()
        .join(zt_server::SQLITE_FILE)
        .to_string_lossy()
        .into_owned();
    let server = InProcessServer::start(dir.path().join("data"), location, &td).await?;
    let token = server
        .admin
        .create_join_token(&CreateJoinToken {
            spiffe_id: Some(agent_id.to_string()),
            ttl_secs: 600,
        })
        .await?
        .token;
    let trust_bundle =
        zt_identity::Bundle::parse(server.admin.bundle(BundleFormat::Pem).await?.as_bytes(), None)?;
    let socket = dir.path().join("api.sock");
    let (stop_agent, agent_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(zt_agent::run(
        zt_agent::AgentConfig {
            node: zt_agent::NodeConfig {
                server: server.agent_addr,
                server_id: zt_agent::server_id(&trust_bundle)?,
                join_token: Some(token),
                join_token_file: None,
                data_dir: dir.path().join("agent"),
            },
            trust_bundle,
            socket: socket.clone(),
        },
        async {
            let _ = agent_stopped.await;
        },
    ));

    // This process is the workload: entries select it by uid.
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        .ok_or_else(|| Error::Failed("no Uid in /proc/self/status".into()))?;
    let selector = format!("unix:uid:{uid}");
    let spec = |id: String| workload_entry(&id, &agent_id, &selector);
    server
        .admin
        .create_entry(&spec("spiffe://example.org/bench/first".into())?)
        .await?;
    let client = WorkloadClient::new(&socket).map_err(Error::Failed)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match client.x509_svids().await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(Error::Failed(format!(
                    "the agent never served the first SVID: {e}"
                )));
            }
        }
    };
    let svid_stream_ended = || Error::Failed("the X.509-SVID stream ended".into());
    stream.message().await?.ok_or_else(svid_stream_ended)?;

    let mut delays = Vec::new();
    for i in 0..bench.changes {
        let id = format!("spiffe://example.org/bench/new/{i}");
        let t = Instant::now();
        server.admin.create_entry(&spec(id.clone())?).await?;
        loop {
            let update = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .map_err(Error::timeout("no Workload API update within 10 s"))??
                .ok_or_else(svid_stream_ended)?;
            if update.svids.iter().any(|s| s.spiffe_id == id) {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    report(Figure::Delays {
        name: "entry created → SVID on the workload stream".into(),
        samples: Samples::new(delays),
        what: "entries".into(),
    });

    // Policy propagation: a version applied on the server → on zt agent's policy
    // stream, which proxies follow (compiling it there takes microseconds).
    let mut policies = client.policies().await?;
    let mut delays = Vec::new();
    for i in 0..bench.changes.min(100) {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: bench}}\nspec:\n  rules:\n  - to:\n    - operation:\n        paths: [\"/v{i}\"]\n"
        );
        let files = vec![zt_store::PolicyFile {
            name: "bench.yaml".into(),
            text,
        }];
        let t = Instant::now();
        let applied = server
            .admin
            .apply_policies(&zt_server::api::ApplyPolicies { files })
            .await?;
        loop {
            let set = tokio::time::timeout(Duration::from_secs(10), policies.message())
                .await
                .map_err(Error::timeout("no policy update within 10 s"))??
                .ok_or_else(|| Error::Failed("the policy stream ended".into()))?;
            if set.version == applied.version {
                break;
            }
        }
        delays.push(t.elapsed());
    }
    report(Figure::Delays {
        name: "policy applied → on the proxies' policy stream".into(),
        samples: Samples::new(delays),
        what: "versions".into(),
    });

    // Call latency with one SVID (a fresh client per measure would add the connect).
    let one = WorkloadClient::new(&socket).map_err(Error::Failed)?;
    let mut fetches = Vec::new();
    let mut jwts = Vec::new();
    for _ in 0..bench.calls {
        let t = Instant::now();
        one.fetch_x509_svids().await?;
        fetches.push(t.elapsed());
        let t = Instant::now();
        one.fetch_jwt_svids(
            vec!["bench".into()],
            Some("spiffe://example.org/bench/first".into()),
        )
        .await?;
        jwts.push(t.elapsed());
    }
    for (name, latencies) in [
        ("FetchX509SVID (attest + all SVIDs)", fetches),
        ("FetchJWTSVID (attest + one cached token)", jwts),
    ] {
        report(Figure::Latency {
            name: name.into(),
            samples: Samples::new(latencies),
            entries: bench.changes + 1,
        });
    }
    let _ = stop_agent.send(());
    agent.await??;
    server.stop().await?;
    Ok(())
}
