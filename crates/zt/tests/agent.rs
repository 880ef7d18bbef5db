//! End-to-end tests of `zt agent`: real server and agent processes, workloads as
//! real processes attested from the kernel, and SPIFFE clients no one here wrote
//! (py-spiffe, the Rust `spiffe` crate) on the Workload API socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "a test crate: panicking is how a test fails"
)]

mod support;

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tonic::Code;
use zt_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use zt_api::workload::{JwtsvidRequest, WitsvidRequest, X509svidRequest, X509svidResponse};
use zt_identity::{Bundle, BundleSet, Purpose};
use zt_testkit::describe;
use zt_workload::client::WorkloadClient;

const AGENT_ID: &str = "spiffe://example.org/agent/node-1";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A server and an agent joined to it, in one temporary directory.
struct Mesh {
    _dir: tempfile::TempDir,
    server: ServerProcess,
    agent: AgentProcess,
}

impl Mesh {
    fn start() -> Self {
        Self::start_at(|root| {
            let agent_dir = root.join("agent");
            fs::create_dir(&agent_dir).unwrap();
            agent_dir
        })
    }

    /// Like [`Mesh::start`], with the agent in the directory `layout` makes
    /// under the temporary root.
    fn start_at(layout: impl FnOnce(&Path) -> PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start(&dir.path().join("server"), None);
        let agent_dir = layout(dir.path());
        let agent = AgentProcess::start(&server, &agent_dir, AGENT_ID);
        Self {
            _dir: dir,
            server,
            agent,
        }
    }

    /// Registers `spiffe_id` under the agent with `selectors`; returns the entry ID.
    fn entry(&self, spiffe_id: &str, selectors: &[&str], extra: &[&str]) -> String {
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            AGENT_ID,
        ];
        for selector in selectors {
            args.extend(["--selector", selector]);
        }
        args.extend(extra);
        one_entry_json(&self.server, &args)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Registers `spiffe_id` for this test process's uid.
    fn entry_for_me(&self, spiffe_id: &str, extra: &[&str]) -> String {
        self.entry(spiffe_id, &[&format!("unix:uid:{}", my_uid())], extra)
    }

    /// The server's bundle, JWT authorities included.
    fn bundle(&self) -> Bundle {
        let jwks = ok(&self.server, &["bundle", "show", "--format", "jwks"]);
        Bundle::parse(jwks.as_bytes(), None).unwrap()
    }
}

/// Checks an X.509-SVID response the way a workload's TLS stack would: each SVID's
/// chain verifies against the bundle it came with and the key is the leaf's.
fn check_x509_response(response: &X509svidResponse, bundle: &Bundle) -> Vec<(String, String)> {
    let mut set = BundleSet::default();
    set.insert(bundle.clone());
    response
        .svids
        .iter()
        .map(|svid| {
            let chain = split_der(&svid.x509_svid);
            let verified = zt_identity::verify_x509_svid(
                &chain,
                &set,
                rustls_pki_types::UnixTime::now(),
                Purpose::ClientAuth,
            )
            .unwrap();
            assert_eq!(verified.spiffe_id().to_string(), svid.spiffe_id);
            assert_eq!(split_der(&svid.bundle), bundle.x509_authorities());
            let key = rustls_pki_types::PrivateKeyDer::try_from(svid.x509_svid_key.clone()).unwrap();
            assert_eq!(
                zt_ca::public_key_of(&key).unwrap(),
                zt_identity::x509::subject_public_key(&chain[0]).unwrap(),
                "the key is the leaf's"
            );
            (
                svid.spiffe_id.clone(),
                zt_identity::x509::hex_compact(verified.serial()),
            )
        })
        .collect()
}

/// Splits concatenated DER certificates with x509-parser (not zt's own splitter).
fn split_der(mut bytes: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(bytes).unwrap();
        let len = bytes.len() - rest.len();
        certs.push(bytes[..len].to_vec().into());
        bytes = rest;
    }
    certs
}

#[test]
fn workload_api_serves_svids_bundles_and_jwts_per_the_spec() {
    let mesh = Mesh::start();
    let rt = runtime();
    let client = {
        let _entered = rt.enter();
        WorkloadClient::new(&mesh.agent.socket).unwrap()
    };

    // No entry yet for this process: no identity issued.
    let denied = rt.block_on(client.fetch_x509_svids()).unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("no identity issued"), "{denied:?}");

    // SPIRE's -hint reaches the Workload API's hint field, for X.509 and JWT.
    mesh.entry_for_me("spiffe://example.org/tests", &["-hint", "internal"]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/tests"]);
    let bundle = mesh.bundle();
    let response = rt.block_on(client.fetch_x509_svids()).unwrap();
    let svids = check_x509_response(&response, &bundle);
    assert_eq!(svids.len(), 1);
    assert_eq!(response.svids[0].hint, "internal");
    assert!(response.federated_bundles.is_empty() && response.crl.is_empty());

    let bundles = rt.block_on(client.fetch_x509_bundles()).unwrap();
    assert_eq!(
        split_der(&bundles.bundles["spiffe://example.org"]),
        bundle.x509_authorities()
    );
    let jwt_bundles = rt.block_on(client.fetch_jwt_bundles()).unwrap();
    let jwks: Value = serde_json::from_slice(&jwt_bundles.bundles["spiffe://example.org"]).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        !keys.is_empty()
            && keys
                .iter()
                .all(|k| k["kid"].is_string() && k["use"] == "jwt-svid"),
        "{jwks}"
    );

    // JWT-SVIDs: minted for the audience, cached, validated by the agent.
    let jwt = rt
        .block_on(client.fetch_jwt_svids(vec!["billing".into()], None))
        .unwrap();
    assert_eq!(jwt.svids.len(), 1);
    assert_eq!(jwt.svids[0].spiffe_id, "spiffe://example.org/tests");
    assert_eq!(jwt.svids[0].hint, "internal");
    let again = rt
        .block_on(client.fetch_jwt_svids(vec!["billing".into()], None))
        .unwrap();
    assert_eq!(
        again.svids[0].svid, jwt.svids[0].svid,
        "served from the agent's cache"
    );
    let verified = zt_identity::verify_jwt_svid(&jwt.svids[0].svid, &bundle, "billing", now()).unwrap();
    assert_eq!(verified.spiffe_id().to_string(), "spiffe://example.org/tests");
    let valid = rt
        .block_on(client.validate_jwt_svid("billing", &jwt.svids[0].svid))
        .unwrap();
    assert_eq!(valid.spiffe_id, "spiffe://example.org/tests");
    let claims = valid.claims.unwrap();
    assert!(claims.fields.contains_key("exp") && claims.fields.contains_key("aud"));

    // Refusals, each with the code the spec and SPIRE use.
    let wrong_audience = rt
        .block_on(client.validate_jwt_svid("other", &jwt.svids[0].svid))
        .unwrap_err();
    assert_eq!(wrong_audience.code(), Code::InvalidArgument, "{wrong_audience:?}");
    let mut tampered = jwt.svids[0].svid.clone();
    tampered.pop();
    tampered.push(if jwt.svids[0].svid.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let bad = rt
        .block_on(client.validate_jwt_svid("billing", &tampered))
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    for (audience, svid) in [
        ("", jwt.svids[0].svid.as_str()),
        ("billing", ""),
        ("billing", "garbage"),
    ] {
        let e = rt.block_on(client.validate_jwt_svid(audience, svid)).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{audience:?} {svid:?}: {e:?}");
    }
    let no_audience = rt.block_on(client.fetch_jwt_svids(Vec::new(), None)).unwrap_err();
    assert_eq!(no_audience.code(), Code::InvalidArgument, "{no_audience:?}");
    let other_id = rt
        .block_on(client.fetch_jwt_svids(vec!["billing".into()], Some("spiffe://example.org/other".into())))
        .unwrap_err();
    assert_eq!(other_id.code(), Code::PermissionDenied, "{other_id:?}");
    let bad_id = rt
        .block_on(client.fetch_jwt_svids(vec!["billing".into()], Some("not-an-id".into())))
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument, "{bad_id:?}");

    // Without the security header every call is refused; WIT-SVIDs are not offered.
    rt.block_on(async {
        let raw = raw_client(&mesh.agent.socket);
        let e = raw.clone().fetch_x509svid(X509svidRequest {}).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("security header"), "{e:?}");
        let e = raw
            .clone()
            .fetch_jwtsvid(JwtsvidRequest {
                audience: vec!["billing".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut wrong = tonic::Request::new(X509svidRequest {});
        wrong
            .metadata_mut()
            .insert("workload.spiffe.io", "false".parse().unwrap());
        let e = raw.clone().fetch_x509svid(wrong).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut wit = tonic::Request::new(WitsvidRequest::default());
        wit.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        let e = raw.clone().fetch_witsvid(wit).await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    });

    // The CLI writes the files spire-agent writes, and they verify with openssl.
    let out_dir = mesh.agent.dir.join("out");
    let out = mesh
        .agent
        .api(&["fetch", "x509", "--write", out_dir.to_str().unwrap()]);
    let text = succeed(&out, "zt agent api fetch x509 --write");
    assert!(text.contains("spiffe://example.org/tests"), "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        fs::metadata(out_dir.join("svid.0.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    if let Some(openssl) = zt_testkit::openssl("agent fetch x509 --write") {
        let verify = Command::new(openssl)
            .arg("verify")
            .arg("-CAfile")
            .arg(out_dir.join("bundle.0.pem"))
            .arg(out_dir.join("svid.0.pem"))
            .output()
            .unwrap();
        assert!(verify.status.success(), "{}", describe(&verify));
    }
    let token = &jwt.svids[0].svid;
    let out = mesh
        .agent
        .api(&["validate", "jwt", "--audience", "billing", "--svid", token]);
    assert!(succeed(&out, "validate jwt").contains("SVID is valid."));
    let out = mesh
        .agent
        .api(&["validate", "jwt", "--audience", "nope", "--svid", token]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid"),
        "{}",
        describe(&out)
    );
}

/// A Workload API client without the security header.
fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let socket = socket.to_owned();
    let connector = tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    });
    let channel =
        tonic::transport::Endpoint::from_static("http://agent").connect_with_connector_lazy(connector);
    SpiffeWorkloadApiClient::new(channel)
}

/// A copy of the zt binary at `path` (a hard link where possible), runnable by anyone.
fn zt_copy(path: &Path) -> PathBuf {
    let original = Path::new(env!("CARGO_BIN_EXE_zt"));
    if fs::hard_link(original, path).is_err() {
        fs::copy(original, path).unwrap();
    }
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_owned()
}

/// Runs `exe agent api fetch x509 --output json` as a workload, as `uid` if given.
fn workload_fetch(exe: &Path, socket: &Path, uid: Option<u32>) -> Output {
    let mut command = Command::new(exe);
    command
        .args(["agent", "api", "fetch", "x509", "--output", "json", "--socket"])
        .arg(socket)
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.output().unwrap()
}

/// [`workload_fetch`] until it succeeds (the entry may still be on its way to
/// the agent), within [`DEADLINE`].
fn workload_fetch_ok(exe: &Path, socket: &Path, uid: Option<u32>) -> Output {
    let start = Instant::now();
    loop {
        let out = workload_fetch(exe, socket, uid);
        if out.status.success() || start.elapsed() > DEADLINE {
            return out;
        }
        std::thread::sleep(POLL);
    }
}

fn ids_of(out: &Output) -> Vec<String> {
    let svids: Vec<Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", describe(out)));
    svids
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_workload_gets_only_its_own_identity() {
    let mesh = Mesh::start();
    let bin = mesh.agent.dir.join("bin");
    fs::create_dir(&bin).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let billing = zt_copy(&bin.join("billing"));
    let payments = zt_copy(&bin.join("payments"));
    let stranger = zt_copy(&bin.join("stranger"));
    let me = my_uid();

    // By executable path (the kernel's /proc/<pid>/exe), for this uid.
    mesh.entry(
        "spiffe://example.org/billing",
        &[
            &format!("unix:uid:{me}"),
            &format!("unix:path:{}", billing.display()),
        ],
        &[],
    );
    mesh.entry(
        "spiffe://example.org/payments",
        &[
            &format!("unix:uid:{me}"),
            &format!("unix:path:{}", payments.display()),
        ],
        &[],
    );
    let socket = &mesh.agent.socket;
    assert_eq!(
        ids_of(&workload_fetch_ok(&billing, socket, None)),
        ["spiffe://example.org/billing"]
    );
    assert_eq!(
        ids_of(&workload_fetch_ok(&payments, socket, None)),
        ["spiffe://example.org/payments"]
    );
    let denied = workload_fetch(&stranger, socket, None);
    assert_failure(&denied, 1, &["PermissionDenied", "no identity issued"]);

    // By uid: other users' processes, which only root can start.
    if me != 0 {
        eprintln!("SKIPPED: the per-uid half of each_workload_gets_only_its_own_identity needs root");
        assert!(
            std::env::var_os("ZT_REQUIRE_INTEROP").is_none(),
            "ZT_REQUIRE_INTEROP is set but the tests do not run as root"
        );
        return;
    }
    mesh.entry("spiffe://example.org/uid-1001", &["unix:uid:1001"], &[]);
    mesh.entry("spiffe://example.org/uid-1002", &["unix:uid:1002"], &[]);
    assert_eq!(
        ids_of(&workload_fetch_ok(&stranger, socket, Some(1001))),
        ["spiffe://example.org/uid-1001"]
    );
    assert_eq!(
        ids_of(&workload_fetch_ok(&stranger, socket, Some(1002))),
        ["spiffe://example.org/uid-1002"]
    );
    let nobody = workload_fetch(&stranger, socket, Some(1003));
    assert_failure(&nobody, 1, &["PermissionDenied", "no identity issued"]);
}

#[test]
fn stream_delivers_rotations_and_revocations() {
    let mesh = Mesh::start();
    // A 4 s SVID rotates at about 2 s, well before it expires; a 1 h one does not
    // rotate during the test, so only its revocation can replace it.
    mesh.entry_for_me("spiffe://example.org/short", &["--x509-ttl", "4s"]);
    mesh.entry_for_me("spiffe://example.org/long", &[]);
    mesh.agent
        .wait_for_x509(&["spiffe://example.org/long", "spiffe://example.org/short"]);
    let bundle = mesh.bundle();
    let rt = runtime();
    let client = {
        let _entered = rt.enter();
        WorkloadClient::new(&mesh.agent.socket).unwrap()
    };
    let serial_of = |update: &X509svidResponse, id: &str| {
        check_x509_response(update, &bundle)
            .into_iter()
            .find_map(|(spiffe_id, serial)| (spiffe_id == id).then_some(serial))
    };
    rt.block_on(async {
        let mut stream = client.x509_svids().await.unwrap();
        let first = next_update(&mut stream).await;
        let short = "spiffe://example.org/short";
        let long = "spiffe://example.org/long";
        let first_short = serial_of(&first, short).unwrap();
        let short_svid = first.svids.iter().find(|s| s.spiffe_id == short).unwrap();
        let first_expiry = zt_identity::x509::summarize(&split_der(&short_svid.x509_svid)[0])
            .unwrap()
            .not_after;

        // Rotation: a new SVID arrives while the first is still valid.
        let mut latest = first;
        while serial_of(&latest, short).as_ref() == Some(&first_short) {
            latest = next_update(&mut stream).await;
        }
        let arrived = now();
        assert!(arrived < first_expiry, "rotated at {arrived}, the old SVID expires at {first_expiry}");

        // Revocation of the long-lived SVID: its serial reaches the stream in a
        // signed CRL, and the workload gets a new SVID for it.
        let revoked = serial_of(&latest, long).unwrap();
        ok(&mesh.server, &["revoke", "--serial", &revoked, "--reason", "key compromise drill"]);
        let mut saw_crl = false;
        let mut replaced = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(saw_crl && replaced) {
            assert!(Instant::now() < deadline, "revocation: CRL seen {saw_crl}, SVID replaced {replaced}");
            let update = next_update(&mut stream).await;
            for crl in &update.crl {
                let (_, crl) =
                    <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(crl)
                        .unwrap();
                let ca = bundle
                    .x509_authorities()
                    .iter()
                    .map(|c| x509_parser::parse_x509_certificate(c).unwrap().1)
                    .find(|ca| ca.subject() == crl.issuer())
                    .expect("the CRL's issuer is in the bundle");
                crl.verify_signature(ca.public_key()).expect("the CRL is signed by its issuer");
                saw_crl |= crl
                    .iter_revoked_certificates()
                    .any(|r| zt_identity::x509::hex_compact(r.raw_serial()) == revoked);
            }
            replaced |= serial_of(&update, long).is_some_and(|serial| serial != revoked);
        }

        // A CA rotation reaches the stream: the bundle then holds both authorities.
        ok(&mesh.server, &["authority", "rotate"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let update = next_update(&mut stream).await;
            if update.svids.iter().all(|s| split_der(&s.bundle).len() == 2) && !update.svids.is_empty() {
                check_x509_response(&update, &mesh.bundle());
                break;
            }
            assert!(Instant::now() < deadline, "the rotated bundle never reached the stream");
        }
    });
}

/// The next message of a Workload API stream, within 20 s.
async fn next_update(stream: &mut tonic::Streaming<X509svidResponse>) -> X509svidResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an update within 20 s")
        .unwrap()
        .expect("the stream goes on")
}

#[test]
fn workloads_are_served_from_cache_while_the_server_is_down() {
    let mut mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/cached", &[]);
    let before = mesh.agent.wait_for_x509(&["spiffe://example.org/cached"]);
    let jwt_args = ["fetch", "jwt", "--audience", "db", "--output", "json"];
    let jwt_before: Value = serde_json::from_str(&succeed(&mesh.agent.api(&jwt_args), "fetch jwt")).unwrap();

    let status = mesh.server.terminate();
    assert!(status.success(), "{status}");
    // The server is gone: the agent still serves what it holds.
    let during = mesh.agent.wait_for_x509(&["spiffe://example.org/cached"]);
    assert_eq!(during[0]["serial"], before[0]["serial"]);
    let jwt_during: Value = serde_json::from_str(&succeed(&mesh.agent.api(&jwt_args), "fetch jwt")).unwrap();
    assert_eq!(jwt_during["svids"][0]["svid"], jwt_before["svids"][0]["svid"]);
    // A JWT for a new audience needs the server.
    let fresh = mesh.agent.api(&["fetch", "jwt", "--audience", "new"]);
    assert_failure(&fresh, 1, &["Unavailable"]);

    // Back up on the same ports: the agent reconnects and picks up new entries.
    mesh.server = mesh.server.restart();
    mesh.entry_for_me("spiffe://example.org/after", &[]);
    mesh.agent
        .wait_for_x509(&["spiffe://example.org/after", "spiffe://example.org/cached"]);
}

#[test]
fn an_evicted_agent_serves_nothing_until_it_attests_again() {
    let mut mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/web", &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/web"]);

    ok(&mesh.server, &["agent", "evict", "--spiffe-id", AGENT_ID]);
    let start = Instant::now();
    loop {
        let out = mesh.agent.api(&["fetch", "x509"]);
        if !out.status.success() {
            assert_failure(&out, 1, &["PermissionDenied", "not attested"]);
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "still served after eviction\n{}",
            mesh.agent.stderr()
        );
        std::thread::sleep(POLL);
    }
    // A new token in the token file: the same process attests again.
    fs::write(&mesh.agent.token_file, join_token(&mesh.server, AGENT_ID)).unwrap();
    mesh.agent.wait_for_x509(&["spiffe://example.org/web"]);
    assert!(
        mesh.agent.child.try_wait().unwrap().is_none(),
        "the agent did not restart"
    );
}

#[test]
fn the_agent_refuses_bad_configuration_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let zt = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let missing = dir.path().join("missing.pem");
    assert_failure(
        &zt(&[
            "agent",
            "--trust-bundle",
            missing.to_str().unwrap(),
            "--join-token",
            "x",
        ]),
        1,
        &["--trust-bundle", "missing.pem"],
    );
    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "not a bundle").unwrap();
    assert_failure(
        &zt(&[
            "agent",
            "--trust-bundle",
            garbage.to_str().unwrap(),
            "--join-token",
            "x",
        ]),
        1,
        &["--trust-bundle", "garbage.pem"],
    );
    let out = zt(&["agent", "--join-token", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-bundle"));
    // A socket path taken by a regular file is not replaced.
    let bundle = dir.path().join("bundle.pem");
    let ca = dir.path().join("ca");
    succeed(
        &zt(&[
            "ca",
            "init",
            "--trust-domain",
            "example.org",
            "--dir",
            ca.to_str().unwrap(),
        ]),
        "ca init",
    );
    fs::copy(ca.join("ca.crt"), &bundle).unwrap();
    let taken = dir.path().join("taken.sock");
    fs::write(&taken, "precious").unwrap();
    let agent_on = |socket: &Path| {
        zt(&[
            "agent",
            "--trust-bundle",
            bundle.to_str().unwrap(),
            "--join-token",
            "x",
            "--socket",
            socket.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ])
    };
    assert_failure(&agent_on(&taken), 1, &["taken.sock", "not a socket"]);
    assert_eq!(fs::read_to_string(&taken).unwrap(), "precious");
    // A socket directory others may write to is refused (someone could swap the socket).
    let open_dir = dir.path().join("open");
    fs::create_dir(&open_dir).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
    assert_failure(
        &agent_on(&open_dir.join("api.sock")),
        1,
        &["open", "writable by others"],
    );
    // Workload API clients name a bad endpoint.
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["agent", "api", "fetch", "x509"])
        .env("SPIFFE_ENDPOINT_SOCKET", "tcp://127.0.0.1:1")
        .output()
        .unwrap();
    assert_failure(&out, 1, &["SPIFFE_ENDPOINT_SOCKET", "tcp://127.0.0.1:1"]);
}

#[test]
fn py_spiffe_fetches_and_validates_from_zt_agent() {
    let Some(python) = zt_testkit::python("py_spiffe_fetches_and_validates_from_zt_agent") else {
        return;
    };
    let mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/py", &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/py"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/workload_api.py");
    let out = Command::new(python)
        .arg(script)
        .arg("billing")
        .env("SPIFFE_ENDPOINT_SOCKET", mesh.agent.endpoint())
        .output()
        .unwrap();
    let doc: Value = serde_json::from_str(&succeed(&out, "workload_api.py")).unwrap();
    assert_eq!(doc["spiffe_id"], "spiffe://example.org/py");
    assert_eq!(doc["key_matches_leaf"], true);
    assert_eq!(doc["bundle_trust_domain"], "example.org");
    let bundle = mesh.bundle();
    assert_eq!(
        zt_identity::x509::certificates_from_pem(doc["bundle_pem"].as_str().unwrap().as_bytes()).unwrap(),
        bundle.x509_authorities()
    );
    let chain =
        zt_identity::x509::certificates_from_pem(doc["chain_pem"].as_str().unwrap().as_bytes()).unwrap();
    let mut set = BundleSet::default();
    set.insert(bundle.clone());
    zt_identity::verify_x509_svid(
        &chain,
        &set,
        rustls_pki_types::UnixTime::now(),
        Purpose::ServerAuth,
    )
    .unwrap();
    assert_eq!(doc["jwt_spiffe_id"], "spiffe://example.org/py");
    assert_eq!(doc["jwt_audience"], serde_json::json!(["billing"]));
    assert_eq!(doc["validated_spiffe_id"], "spiffe://example.org/py");
    assert_eq!(doc["local_spiffe_id"], "spiffe://example.org/py");
    assert!(doc["jwt_bundle_keys"].as_u64().unwrap() >= 1, "{doc}");
    assert!(doc["wrong_audience_error"].is_string(), "{doc}");
    zt_identity::verify_jwt_svid(doc["jwt_token"].as_str().unwrap(), &bundle, "billing", now()).unwrap();
}

#[test]
fn the_rust_spiffe_crate_fetches_and_validates_from_zt_agent() {
    // The example binary cargo built next to this test's deps directory.
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/spiffe_rs_client");
    assert!(
        example.exists(),
        "{} not built (cargo test builds examples)",
        example.display()
    );
    let mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/rs", &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/rs"]);
    let out = Command::new(&example)
        .arg("orders")
        .env("SPIFFE_ENDPOINT_SOCKET", mesh.agent.endpoint())
        .output()
        .unwrap();
    let doc: Value = serde_json::from_str(&succeed(&out, "spiffe_rs_client")).unwrap();
    assert_eq!(doc["spiffe_id"], "spiffe://example.org/rs");
    assert_eq!(doc["jwt_spiffe_id"], "spiffe://example.org/rs");
    assert_eq!(doc["validated_spiffe_id"], "spiffe://example.org/rs");
    assert_eq!(doc["local_spiffe_id"], "spiffe://example.org/rs");
    assert_eq!(doc["wrong_audience_refused"], true);
    assert!(doc["jwt_bundle_keys"].as_u64().unwrap() >= 1, "{doc}");
    let bundle = mesh.bundle();
    let served: Vec<String> = bundle
        .x509_authorities()
        .iter()
        .map(|c| zt_identity::x509::hex_compact(c))
        .collect();
    assert_eq!(doc["bundle"], serde_json::json!(served));
    zt_identity::verify_jwt_svid(doc["jwt_token"].as_str().unwrap(), &bundle, "orders", now()).unwrap();
}

#[test]
fn sigterm_ends_open_streams_and_the_agent_exits() {
    use std::io::BufRead as _;
    let mut mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/watcher", &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/watcher"]);
    let mut watch = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["agent", "api", "watch", "--output", "json", "--socket"])
        .arg(&mesh.agent.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let update: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(update["svids"][0]["spiffe_id"], "spiffe://example.org/watcher");

    let sent = Command::new("kill")
        .args(["-TERM", &mesh.agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_with_deadline(&mut mesh.agent.child).expect("the agent exits after SIGTERM");
    assert!(status.success(), "{status}\n{}", mesh.agent.stderr());
    // The stream ended with the agent's word, not a hang; the socket is gone.
    let watched = wait_with_deadline(&mut watch).expect("the watcher's stream ended");
    assert!(!watched.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopping"), "{stderr}");
    assert!(!mesh.agent.socket.exists());
}

/// `zt agent api fetch x509` as this process with `SPIFFE_ENDPOINT_SOCKET`
/// set to `endpoint` and no `--socket`.
fn fetch_from_endpoint(endpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["agent", "api", "fetch", "x509", "--output", "json"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The agent refuses a socket whose way from `/` someone else could change (an
/// ancestor, not only the socket's own directory), naming that directory and
/// its mode; a sticky shared directory holding an entry of ours is safe.
#[test]
fn the_agent_refuses_a_socket_path_others_could_swap() {
    let mesh = Mesh::start_at(|root| {
        // A /tmp-like sticky directory with the agent's directory, ours, in it.
        let shared = root.join("shared");
        fs::create_dir_all(shared.join("agent")).unwrap();
        chmod(&shared, 0o1777);
        shared.join("agent")
    });
    let me = "spiffe://example.org/me";
    mesh.entry_for_me(me, &[]);
    mesh.agent.wait_for_x509(&[me]);

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.pem");
    fs::write(&bundle, ok(&mesh.server, &["bundle", "show"])).unwrap();
    let agent_on = |socket: &Path| {
        Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "agent",
                "--server",
                &mesh.server.agent_api.to_string(),
                "--join-token",
                "x",
            ])
            .arg("--trust-bundle")
            .arg(&bundle)
            .arg("--socket")
            .arg(socket)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // An ancestor two levels up, writable by others or by its group, not sticky.
    let ancestor = dir.path().join("ancestor");
    fs::create_dir_all(ancestor.join("zt-agent/public")).unwrap();
    let socket = ancestor.join("zt-agent/public/api.sock");
    for (mode, who) in [(0o777, "others"), (0o775, "its group")] {
        chmod(&ancestor, mode);
        assert_failure(
            &agent_on(&socket),
            1,
            &[&format!(
                "{} is writable by {who} (mode {mode:o}) and not sticky",
                ancestor.display()
            )],
        );
        assert!(!socket.exists(), "nothing was bound");
    }
    // A directory of another user in a sticky shared directory.
    let shared = dir.path().join("tmp");
    fs::create_dir_all(shared.join("zt-agent")).unwrap();
    chmod(&shared, 0o1777);
    std::os::unix::fs::chown(shared.join("zt-agent"), Some(65534), Some(65534)).unwrap();
    assert_failure(
        &agent_on(&shared.join("zt-agent/api.sock")),
        1,
        &[&format!(
            "{} is a directory owned by uid 65534, not root or this user",
            shared.join("zt-agent").display()
        )],
    );
}

/// Clients check the same before they connect: a real agent serves behind
/// each path, and only the layouts no one else could change are used.
#[test]
fn clients_refuse_a_socket_path_others_could_swap() {
    let mesh = Mesh::start_at(|root| {
        let agent_dir = root.join("layout").join("agent");
        fs::create_dir_all(&agent_dir).unwrap();
        agent_dir
    });
    let me = "spiffe://example.org/me";
    mesh.entry_for_me(me, &[]);
    mesh.agent.wait_for_x509(&[me]);
    let socket = mesh.agent.socket.clone();
    let layout = mesh.agent.dir.parent().unwrap().to_owned();

    // The address forms SPIFFE_ENDPOINT_SOCKET takes, on --socket too.
    for form in [
        format!("unix://{}", socket.display()),
        format!("unix:{}", socket.display()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args([
                "agent", "api", "fetch", "x509", "--output", "json", "--socket", &form,
            ])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(ids_of(&out), [me], "--socket {form}: {}", describe(&out));
    }

    // An ancestor of the socket that others may write to: refused, named.
    chmod(&layout, 0o777);
    for out in [
        fetch_from_endpoint(&mesh.agent.endpoint()),
        mesh.agent.api(&["fetch", "x509"]),
    ] {
        assert_failure(
            &out,
            1,
            &[
                &socket.display().to_string(),
                &format!(
                    "{} is writable by others (mode 777) and not sticky",
                    layout.display()
                ),
            ],
        );
    }
    // zt proxy refuses to start on it.
    let proxy = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args([
            "proxy",
            "--inbound",
            "127.0.0.1:0",
            "--app",
            "127.0.0.1:1",
            "--allow-spiffe-id",
            me,
        ])
        .env("SPIFFE_ENDPOINT_SOCKET", mesh.agent.endpoint())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_failure(
        &proxy,
        1,
        &[&format!("{} is writable by others (mode 777)", layout.display())],
    );

    // Sticky, like /tmp, with the agent's directory ours: trusted.
    chmod(&layout, 0o1777);
    assert_eq!(ids_of(&fetch_from_endpoint(&mesh.agent.endpoint())), [me]);

    // A symbolic link in the sticky directory: ours is followed; the same
    // link owned by another user could be theirs, and is refused.
    let link = layout.join("link");
    std::os::unix::fs::symlink(&mesh.agent.dir, &link).unwrap();
    let through_link = format!("unix://{}/public/api.sock", link.display());
    assert_eq!(ids_of(&fetch_from_endpoint(&through_link)), [me]);
    std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
    assert_failure(
        &fetch_from_endpoint(&through_link),
        1,
        &[&format!(
            "{} is a symbolic link owned by uid 65534",
            link.display()
        )],
    );
}

/// `zt agent api fetch x509 --write DIR` under `umask 000`, into a DIR that
/// exists with mode 0755: DIR is tightened to 0700 and the key is 0600.
#[test]
fn fetch_write_keeps_the_key_private_under_umask_000() {
    let mesh = Mesh::start();
    let me = "spiffe://example.org/me";
    mesh.entry_for_me(me, &[]);
    mesh.agent.wait_for_x509(&[me]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    fs::create_dir(&out_dir).unwrap();
    chmod(&out_dir, 0o755);
    let out = zt_testkit::under_umask_000(Path::new(env!("CARGO_BIN_EXE_zt")))
        .args(["agent", "api", "fetch", "x509", "--write"])
        .arg(&out_dir)
        .arg("--socket")
        .arg(&mesh.agent.socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    succeed(&out, "fetch x509 --write");
    use zt_testkit::mode_of;
    assert_eq!(mode_of(&out_dir), 0o700);
    assert_eq!(mode_of(&out_dir.join("svid.0.key")), 0o600);
    assert_eq!(mode_of(&out_dir.join("svid.0.pem")), 0o644);
    assert_eq!(mode_of(&out_dir.join("bundle.0.pem")), 0o644);
}

/// The gaps a review of the suite found: an agent resuming from its data
/// directory, entries reached through a node alias and by `unix:gid`, and a
/// banned agent staying out even with a new join token.
#[test]
fn an_agent_resumes_from_its_data_directory_without_a_new_join_token() {
    let mut mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/web", &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/web"]);
    // The token file still holds the token the agent used: it cannot attest
    // again, so serving after a restart means it resumed from its data dir.
    mesh.agent.restart(&mesh.server);
    mesh.agent.wait_for_x509(&["spiffe://example.org/web"]);
    let log = mesh.agent.stderr();
    assert!(!log.contains("attested to zt server with a join token"), "{log}");
    let agents = ok(&mesh.server, &["agent", "list", "--output", "json"]);
    let agents: Value = serde_json::from_str(&agents).unwrap();
    assert_eq!(agents["agents"].as_array().map(Vec::len), Some(1), "{agents}");
}

#[test]
fn entries_reach_workloads_through_a_node_alias_and_by_gid() {
    let mesh = Mesh::start();
    // A node alias grouping every agent with this agent's ID selector, and a
    // workload entry under the alias rather than under the agent.
    let alias = "spiffe://example.org/nodes/all";
    one_entry_json(
        &mesh.server,
        &[
            "entry",
            "create",
            "-spiffeID",
            alias,
            "-selector",
            &format!("spiffe_id:{AGENT_ID}"),
            "-node",
        ],
    );
    let gid = {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Gid:")).unwrap();
        line.split_whitespace().nth(2).unwrap().to_owned()
    };
    one_entry_json(
        &mesh.server,
        &[
            "entry",
            "create",
            "-spiffeID",
            "spiffe://example.org/by-alias-and-gid",
            "-parentID",
            alias,
            "-selector",
            &format!("unix:gid:{gid}"),
        ],
    );
    // And one for a gid this process does not have: never served to it.
    mesh.entry("spiffe://example.org/other-gid", &["unix:gid:4242424"], &[]);
    let served = mesh
        .agent
        .wait_for_x509(&["spiffe://example.org/by-alias-and-gid"]);
    assert!(
        served
            .iter()
            .all(|s| s["spiffe_id"] != "spiffe://example.org/other-gid"),
        "{served:?}"
    );
}

#[test]
fn a_banned_agent_stays_out_even_with_a_new_join_token() {
    let mut mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/web", &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/web"]);
    ok(&mesh.server, &["agent", "ban", "--spiffe-id", AGENT_ID]);
    let start = Instant::now();
    while mesh.agent.api(&["fetch", "x509"]).status.success() {
        assert!(start.elapsed() < DEADLINE, "still served after the ban");
        std::thread::sleep(POLL);
    }
    // A fresh token for the same ID: the server refuses the banned agent.
    fs::write(&mesh.agent.token_file, join_token(&mesh.server, AGENT_ID)).unwrap();
    let start = Instant::now();
    while !fs::read_to_string(&mesh.server.log)
        .unwrap_or_default()
        .contains("refused: banned agent attested")
    {
        assert!(start.elapsed() < DEADLINE, "the banned agent was not refused");
        std::thread::sleep(POLL);
    }
    let out = mesh.agent.api(&["fetch", "x509"]);
    assert!(
        !out.status.success(),
        "served after a refused attestation: {}",
        describe(&out)
    );
    assert!(mesh.agent.child.try_wait().unwrap().is_none(), "the agent exited");
}

/// Envoy's SDS on the Workload API socket, spoken by a plain gRPC client (the
/// real Envoy is in tests/envoy.rs): SPIRE's secret names, the key that goes
/// with the certificate, no security header needed, a NACK answered by nothing
/// until something changes, and names the caller may not have refused.
#[test]
fn sds_serves_spire_named_secrets_and_does_not_resend_a_nacked_version() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use prost::{Message as _, Name as _};

    let mesh = Mesh::start();
    mesh.entry_for_me("spiffe://example.org/sds", &[]);
    mesh.entry("spiffe://example.org/not-mine", &["unix:uid:4242"], &[]);
    mesh.agent.wait_for_x509(&["spiffe://example.org/sds"]);
    let socket = mesh.agent.socket.clone();
    let connector = tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    });
    let rt = runtime();
    let channel = rt.block_on(async {
        tonic::transport::Endpoint::from_static("http://zt_agent").connect_with_connector_lazy(connector)
    });
    let mut client = SecretDiscoveryServiceClient::new(channel);
    let request = |names: &[&str], nonce: &str, nack: bool| DiscoveryRequest {
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: Secret::type_url(),
        response_nonce: nonce.to_owned(),
        error_detail: nack.then(|| envoy_types::pb::google::rpc::Status {
            code: 3,
            message: "rejected by the test".into(),
            details: Vec::new(),
        }),
        ..Default::default()
    };
    let decode = |any: &envoy_types::pb::google::protobuf::Any| Secret::decode(any.value.as_slice()).unwrap();

    // FetchSecrets: the default SVID, its key, and the bundle under ROOTCA.
    let fetched = rt
        .block_on(client.fetch_secrets(request(&["default", "ROOTCA"], "", false)))
        .unwrap()
        .into_inner();
    let secrets: Vec<Secret> = fetched.resources.iter().map(decode).collect();
    assert_eq!(
        secrets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["ROOTCA", "default"]
    );
    let Some(secret::Type::TlsCertificate(tls)) = &secrets[1].r#type else {
        panic!("not a TLS certificate: {:?}", secrets[1].name);
    };
    let pem = |source: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match source
        .as_ref()
        .and_then(|s| s.specifier.clone())
    {
        Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("not inline bytes: {other:?}"),
    };
    let chain = zt_identity::x509::certificates_from_pem(&pem(&tls.certificate_chain)).unwrap();
    let key = zt_identity::x509::private_key_from_pem(&pem(&tls.private_key)).unwrap();
    let mut set = BundleSet::default();
    set.insert(mesh.bundle());
    let verified = zt_identity::verify_x509_svid(
        &chain,
        &set,
        rustls_pki_types::UnixTime::now(),
        Purpose::ClientAuth,
    )
    .unwrap();
    assert_eq!(verified.spiffe_id().to_string(), "spiffe://example.org/sds");
    // The key is the certificate's: rustls accepts the pair.
    rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    let Some(secret::Type::ValidationContext(_)) = &secrets[0].r#type else {
        panic!("ROOTCA is not a validation context");
    };

    // StreamSecrets: a response, a NACK of it (nothing is sent again), then new
    // names: the next message is their answer, a new version.
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(request(&["spiffe://example.org/sds"], "", false))
            .await
            .unwrap();
        let mut responses = client
            .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = responses.message().await.unwrap().unwrap();
        assert_eq!(first.version_info, "1");
        assert_eq!(decode(&first.resources[0]).name, "spiffe://example.org/sds");
        tx.send(request(&["spiffe://example.org/sds"], &first.nonce, true))
            .await
            .unwrap();
        tx.send(request(&["spiffe://example.org/sds", "ALL"], &first.nonce, false))
            .await
            .unwrap();
        let second = responses.message().await.unwrap().unwrap();
        assert_eq!(second.version_info, "2", "the NACKed version was sent again");
        let names: Vec<String> = second.resources.iter().map(|r| decode(r).name).collect();
        assert_eq!(names, ["ALL", "spiffe://example.org/sds"]);
        // Another workload's identity ends the stream, as in SPIRE.
        tx.send(request(&["spiffe://example.org/not-mine"], &second.nonce, false))
            .await
            .unwrap();
        let refused = responses.message().await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
        assert!(
            refused.message().contains("spiffe://example.org/not-mine"),
            "{refused}"
        );
    });
}
