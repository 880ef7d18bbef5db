//! End-to-end tests of the `zt` binary: each runs the real executable in a
//! temporary directory and checks its exit code, its output and the files it
//! leaves behind.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;
use zt_testkit::describe;

type TestResult = Result<(), Box<dyn Error>>;

/// Runs `zt ARGS` in `cwd` with `stdin` as its standard input.
fn zt_with_stdin(args: &[&str], cwd: &Path, stdin: &[u8]) -> io::Result<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin)?;
    }
    child.wait_with_output()
}

/// Runs `zt ARGS` in `cwd` with nothing on standard input.
fn zt(args: &[&str], cwd: &Path) -> io::Result<Output> {
    zt_with_stdin(args, cwd, b"")
}

/// Runs `zt ARGS`, asserts it succeeds quietly on stderr, and returns its stdout.
fn succeed(args: &[&str], cwd: &Path) -> Result<String, Box<dyn Error>> {
    let out = zt(args, cwd)?;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "zt {args:?}: {}",
        describe(&out)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// See [`zt_testkit::assert_cli_failure`].
fn assert_failure(out: &Output, code: i32, needles: &[&str]) {
    zt_testkit::assert_cli_failure(out, code, needles);
}

/// Every directory (as `None`) and file (with its bytes) under `dir`.
fn snapshot(dir: &Path) -> io::Result<BTreeMap<PathBuf, Option<Vec<u8>>>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current)? {
            let path = entry?.path();
            if path.is_dir() {
                found.insert(path.clone(), None);
                pending.push(path);
            } else {
                found.insert(path.clone(), Some(fs::read(&path)?));
            }
        }
    }
    Ok(found)
}

/// Runs `zt ARGS` in `dir`, asserts the failure, and that no file under `dir`
/// was created, changed or removed.
fn fails_cleanly(dir: &Path, args: &[&str], code: i32, needles: &[&str]) -> TestResult {
    let before = snapshot(dir)?;
    let out = zt(args, dir)?;
    assert_failure(&out, code, needles);
    let after = snapshot(dir)?;
    let changed: Vec<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .collect();
    assert!(changed.is_empty(), "zt {args:?} touched {changed:?}");
    Ok(())
}

/// `zt ca init` for example.org in `dir`.
fn init_args(dir: &str) -> [&str; 6] {
    ["ca", "init", "--trust-domain", "example.org", "--dir", dir]
}

/// `zt ca issue` from the CA in `ca` for `id` to `out`.crt/.key, with `extra` flags.
fn issue_args<'a>(ca: &'a str, id: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["ca", "issue", "--ca", ca, "--spiffe-id", id, "--out", out];
    args.extend_from_slice(extra);
    args
}

/// A directory with a CA in `ca`, an SVID for service-one in `svc.crt`/`svc.key`,
/// and the CA's bundle in `b.pem` and `b.jwks`.
fn ca_with_svid() -> Result<TempDir, Box<dyn Error>> {
    let tmp = tempfile::tempdir()?;
    let issue = issue_args(
        "ca",
        "spiffe://example.org/service-one",
        "svc",
        &["--dns", "localhost", "--ip", "127.0.0.1"],
    );
    for args in [
        &init_args("ca")[..],
        &issue,
        &["ca", "bundle", "--ca", "ca", "--out", "b.pem"],
        &[
            "ca", "bundle", "--ca", "ca", "--format", "jwks", "--out", "b.jwks",
        ],
    ] {
        succeed(args, tmp.path())?;
    }
    Ok(tmp)
}

fn mode(path: &Path) -> io::Result<u32> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn id_check_prints_the_parts_of_valid_ids() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for (id, path) in [
        ("spiffe://example.org/service-one", "/service-one"),
        ("spiffe://example.org", "(none)"),
    ] {
        let stdout = succeed(&["id", "check", id], tmp.path())?;
        assert_eq!(stdout, format!("trust domain: example.org\npath: {path}\n"));
    }
    Ok(())
}

#[test]
fn id_check_explains_invalid_ids() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for (id, reason) in [
        ("spiffe://Example.org/a", "trust domain must be lowercase"),
        ("spiffe://example.org:8080/a", "must not contain a port"),
        ("spiffe://example.org/a/", "path must not end with '/'"),
        ("spiffe://example.org/a/./b", "path has a \".\" segment"),
        ("spiffe://example.org/a?x=1", "must not contain a query"),
        ("spiffe://example.org/a%20b", "percent-encoding is not allowed"),
        ("http://example.org/a", "scheme must be \"spiffe\""),
    ] {
        let out = zt(&["id", "check", id], tmp.path())?;
        assert_failure(&out, 1, &[&format!("{id:?}"), reason]);
    }
    Ok(())
}

#[test]
fn ca_issues_svids_and_bundles_that_verify() -> TestResult {
    let tmp = ca_with_svid()?;
    let dir = tmp.path();

    for name in ["svc.crt", "svc.key"] {
        assert!(dir.join(name).is_file(), "{name} is missing");
    }
    for (path, expected) in [
        ("svc.key", 0o600),
        ("ca/ca.key", 0o600),
        ("ca/jwt.key", 0o600),
        ("ca", 0o700),
    ] {
        assert_eq!(mode(&dir.join(path))?, expected, "mode of {path}");
    }

    let pem = succeed(&["ca", "bundle", "--ca", "ca"], dir)?;
    assert!(
        pem.starts_with("-----BEGIN CERTIFICATE-----\n")
            && pem.ends_with("-----END CERTIFICATE-----\n")
            && pem.matches("BEGIN").count() == 1,
        "{pem}"
    );
    assert_eq!(fs::read_to_string(dir.join("b.pem"))?, pem);

    let jwks_text = succeed(&["ca", "bundle", "--ca", "ca", "--format", "jwks"], dir)?;
    assert_eq!(fs::read_to_string(dir.join("b.jwks"))?, jwks_text);
    let jwks: Value = serde_json::from_str(&jwks_text)?;
    let mut uses: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|key| key["use"].as_str()).collect())
        .unwrap_or_default();
    uses.sort_unstable();
    assert_eq!(uses, ["jwt-svid", "x509-svid"], "{jwks_text}");
    assert!(jwks["spiffe_sequence"].is_u64(), "{jwks_text}");
    assert_eq!(jwks["spiffe_refresh_hint"], 300, "{jwks_text}");

    let text = succeed(
        &[
            "svid", "inspect", "svc.crt", "--bundle", "b.pem", "--key", "svc.key",
        ],
        dir,
    )?;
    for needle in [
        "SPIFFE ID:    spiffe://example.org/service-one\n",
        "DNS names:    localhost\n",
        "IP addresses: 127.0.0.1\n",
        "Key:          svc.key matches the certificate\n",
        "Verified:     yes",
    ] {
        assert!(text.contains(needle), "lacks {needle:?}:\n{text}");
    }

    for bundle in ["b.pem", "b.jwks"] {
        let json = succeed(
            &[
                "svid", "inspect", "svc.crt", "--bundle", bundle, "--key", "svc.key", "--output", "json",
            ],
            dir,
        )?;
        let doc: Value = serde_json::from_str(&json)?;
        assert_eq!(doc["spiffe_id"], "spiffe://example.org/service-one", "{json}");
        assert_eq!(doc["verified"], true, "{json}");
        assert_eq!(doc["verification_error"], Value::Null, "{json}");
        assert_eq!(doc["key_matches"], true, "{json}");
        assert_eq!(doc["dns_names"], serde_json::json!(["localhost"]), "{json}");
        assert_eq!(doc["ip_addresses"], serde_json::json!(["127.0.0.1"]), "{json}");
    }
    Ok(())
}

#[test]
fn jwt_svids_verify_only_for_their_audience() -> TestResult {
    let tmp = ca_with_svid()?;
    let dir = tmp.path();
    let token = succeed(
        &[
            "ca",
            "issue-jwt",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/client",
            "--audience",
            "db",
        ],
        dir,
    )?;
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "not a compact JWS: {token}");

    let verify = |token: &str, bundle: &str, audience: &str, stdin: &str| {
        let args = [
            "svid",
            "verify-jwt",
            token,
            "--bundle",
            bundle,
            "--audience",
            audience,
        ];
        zt_with_stdin(&args, dir, stdin.as_bytes())
    };
    for out in [
        verify(token, "b.jwks", "db", "")?,
        verify("-", "b.jwks", "db", &format!("{token}\n"))?,
    ] {
        assert!(out.status.success(), "{}", describe(&out));
        let stdout = String::from_utf8(out.stdout)?;
        assert!(stdout.contains("spiffe://example.org/client"), "{stdout}");
    }
    assert_failure(&verify(token, "b.jwks", "other", "")?, 1, &["audience \"other\""]);
    // A PEM bundle holds no JWT authority.
    assert_failure(&verify(token, "b.pem", "db", "")?, 1, &["no JWT authority"]);

    // A token that lives longer than a day (a week here) is refused, though
    // correctly signed; --max-lifetime sets the bound.
    let long_lived = succeed(
        &[
            "ca",
            "issue-jwt",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/client",
            "--audience",
            "db",
            "--ttl",
            "168h",
        ],
        dir,
    )?;
    assert_failure(
        &verify(long_lived.trim(), "b.jwks", "db", "")?,
        1,
        &["lifetime", "over the maximum of 86400s"],
    );
    let args = [
        "svid",
        "verify-jwt",
        token,
        "--bundle",
        "b.jwks",
        "--audience",
        "db",
        "--max-lifetime",
        "1m",
    ];
    assert_failure(&zt_with_stdin(&args, dir, b"")?, 1, &["over the maximum of 60s"]);
    Ok(())
}

#[test]
fn ca_init_replaces_a_ca_only_with_force() -> TestResult {
    let tmp = ca_with_svid()?;
    let dir = tmp.path();
    fails_cleanly(dir, &init_args("ca"), 1, &["ca/ca.crt", "--force"])?;

    let before = snapshot(&dir.join("ca"))?;
    succeed(&[&init_args("ca")[..], &["--force"]].concat(), dir)?;
    let after = snapshot(&dir.join("ca"))?;
    for name in ["ca.crt", "ca.key", "jwt.key"] {
        let path = dir.join("ca").join(name);
        assert!(
            after.contains_key(&path) && before.get(&path) != after.get(&path),
            "{name} was not replaced"
        );
    }
    Ok(())
}

#[test]
fn ca_init_rejects_an_uppercase_trust_domain() -> TestResult {
    let tmp = tempfile::tempdir()?;
    fails_cleanly(
        tmp.path(),
        &["ca", "init", "--trust-domain", "Example.org", "--dir", "ca"],
        2,
        &["'Example.org'", "lowercase"],
    )
}

#[test]
fn ca_issue_rejects_bad_requests_without_writing() -> TestResult {
    let tmp = ca_with_svid()?;
    let id = "spiffe://example.org/new";
    let cases: [(Vec<&str>, i32, &[&str]); 10] = [
        (
            issue_args("ca", "spiffe://example.org/a//b", "new", &[]),
            2,
            &["'spiffe://example.org/a//b'", "empty segment"],
        ),
        (
            issue_args("ca", "spiffe://other.org/a", "new", &[]),
            1,
            &["spiffe://other.org/a", "trust domain example.org"],
        ),
        (
            issue_args("ca", "spiffe://example.org", "new", &[]),
            1,
            &["spiffe://example.org", "no path"],
        ),
        (
            issue_args("ca", id, "new", &["--ttl", "0s"]),
            1,
            &["ttl must be greater than zero"],
        ),
        (
            issue_args("ca", id, "new", &["--ttl", "0"]),
            1,
            &["ttl must be greater than zero"],
        ),
        (
            issue_args("ca", id, "new", &["--ttl", "400d"]),
            1,
            &["--ttl 400d", "after the CA expires"],
        ),
        (issue_args("ca", id, "new", &["--ttl", "1x"]), 2, &["\"1x\""]),
        (
            issue_args("ca", id, "new", &["--dns", "bad name"]),
            1,
            &["\"bad name\""],
        ),
        (
            issue_args("missing-dir", id, "new", &[]),
            1,
            &["missing-dir/ca.crt", "No such file"],
        ),
        (
            issue_args("ca", id, "no-such-dir/new", &[]),
            1,
            &["no-such-dir", "No such file"],
        ),
    ];
    for (args, code, needles) in cases {
        fails_cleanly(tmp.path(), &args, code, needles)?;
    }
    Ok(())
}

#[test]
fn a_broken_ca_is_refused_naming_the_file() -> TestResult {
    let tmp = ca_with_svid()?;
    let dir = tmp.path();
    succeed(&init_args("other"), dir)?;
    let commands: [Vec<&str>; 3] = [
        issue_args("ca", "spiffe://example.org/new", "new", &[]),
        vec![
            "ca",
            "issue-jwt",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/new",
            "--audience",
            "db",
        ],
        vec!["ca", "bundle", "--ca", "ca", "--out", "new.pem"],
    ];

    fs::copy(dir.join("other/ca.key"), dir.join("ca/ca.key"))?;
    for args in &commands {
        fails_cleanly(dir, args, 1, &["ca/ca.key", "does not match"])?;
    }

    fs::write(dir.join("ca/ca.crt"), "garbage\n")?;
    for args in &commands {
        fails_cleanly(dir, args, 1, &["ca/ca.crt"])?;
    }
    Ok(())
}

#[test]
fn svid_inspect_rejects_unreadable_files() -> TestResult {
    let tmp = ca_with_svid()?;
    let dir = tmp.path();
    fs::write(
        dir.join("garbage.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )?;
    let cases: [(&[&str], &[&str]); 6] = [
        (&["missing.crt"], &["missing.crt", "No such file"]),
        (&["garbage.pem"], &["garbage.pem"]),
        (&["svc.key"], &["svc.key", "no CERTIFICATE block"]),
        (&["svc.crt", "--bundle", "garbage.pem"], &["--bundle garbage.pem"]),
        (
            &["svc.crt", "--bundle", "missing.pem"],
            &["missing.pem", "No such file"],
        ),
        (&["svc.crt", "--key", "garbage.pem"], &["--key garbage.pem"]),
    ];
    for (args, needles) in cases {
        fails_cleanly(dir, &[&["svid", "inspect"][..], args].concat(), 1, needles)?;
    }
    Ok(())
}

#[test]
fn svid_inspect_fails_on_a_foreign_key_or_bundle() -> TestResult {
    let tmp = ca_with_svid()?;
    let dir = tmp.path();
    // A second CA for the same trust domain, with an SVID of its own.
    for args in [
        &init_args("other")[..],
        &issue_args("other", "spiffe://example.org/service-one", "other", &[]),
        &["ca", "bundle", "--ca", "other", "--out", "other.pem"],
    ] {
        succeed(args, dir)?;
    }
    for (flags, needles) in [
        (
            ["--key", "other.key"],
            [
                "Key:          other.key does NOT match the certificate",
                "Verified:     not checked",
            ],
        ),
        (
            ["--bundle", "other.pem"],
            ["Verified:     no, against other.pem", "trust domain example.org"],
        ),
    ] {
        let out = zt(&[&["svid", "inspect", "svc.crt"][..], &flags].concat(), dir)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        for needle in needles {
            assert!(stdout.contains(needle), "lacks {needle:?}: {}", describe(&out));
        }
    }
    Ok(())
}

#[test]
fn help_succeeds_and_a_missing_command_is_a_usage_error() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    for (args, needle) in [
        (&["--help"][..], "Usage: zt"),
        (&["ca", "--help"], "issue-jwt"),
        (&["--version"], env!("CARGO_PKG_VERSION")),
    ] {
        let stdout = succeed(args, dir)?;
        assert!(stdout.contains(needle), "zt {args:?} lacks {needle:?}:\n{stdout}");
    }
    // Without a subcommand: the help, on stderr, and a usage error.
    for (args, needle) in [
        (&[][..], "Usage: zt <COMMAND>"),
        (&["ca"], "Usage: zt ca <COMMAND>"),
    ] {
        let out = zt(args, dir)?;
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(out.stdout.is_empty(), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{}",
            describe(&out)
        );
    }
    Ok(())
}

/// `zt ca init` under `umask 000` into a directory that exists with mode 0755:
/// the directory is tightened to 0700, the keys are 0600.
#[test]
fn ca_init_keeps_keys_private_under_umask_000() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ca = tmp.path().join("ca");
    fs::create_dir(&ca)?;
    fs::set_permissions(&ca, fs::Permissions::from_mode(0o755))?;
    let out = zt_testkit::under_umask_000(Path::new(env!("CARGO_BIN_EXE_zt")))
        .args(init_args(ca.to_str().ok_or("path")?))
        .stdin(Stdio::null())
        .output()?;
    assert!(out.status.success(), "{}", describe(&out));
    use zt_testkit::mode_of;
    assert_eq!(mode_of(&ca), 0o700);
    assert_eq!(mode_of(&ca.join("ca.key")), 0o600);
    assert_eq!(mode_of(&ca.join("jwt.key")), 0o600);
    assert_eq!(mode_of(&ca.join("ca.crt")), 0o644);
    Ok(())
}

/// Every flag of SPIRE's `entry create` either works as in SPIRE or fails with
/// exit 2 naming it: none is misread as a bundle of short flags (`-hint` as
/// `-h`, which printed the help, exited 0 and created nothing).
#[test]
fn spire_flags_zt_lacks_fail_loudly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let create = [
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/web",
        "-parentID",
        "spiffe://example.org/node",
        "-selector",
        "unix:uid:1000",
    ];
    for (flag, value) in [
        ("-federatesWith", Some("spiffe://other.org")),
        ("-downstream", None),
        ("-storeSVID", None),
        ("-data", Some("entries.json")),
        ("-instance", Some("a")),
        ("-hnt", Some("web")),
        ("-spiffeId", Some("spiffe://example.org/web")),
    ] {
        let args: Vec<&str> = create.iter().copied().chain([flag]).chain(value).collect();
        assert_failure(&zt(&args, tmp.path())?, 2, &[&format!("zt: {flag}: ")]);
    }
    // The flags zt has reach the admin API (here: no server at the socket, exit 1).
    let supported = [
        "-x509SVIDTTL",
        "3600",
        "-jwtSVIDTTL",
        "300",
        "-ttl",
        "3600",
        "-dns",
        "web.example.org",
        "-admin",
        "-entryExpiry",
        "4102444800",
        "-socketPath",
        "nowhere/admin.sock",
        "-output",
        "json",
        "-hint",
        "web",
    ];
    let args: Vec<&str> = create.iter().chain(&supported[2..]).copied().collect();
    let out = zt(&args, tmp.path())?;
    assert_failure(&out, 1, &["nowhere/admin.sock"]);
    let args: Vec<&str> = create
        .iter()
        .chain(&supported[..2])
        .chain(&supported[6..])
        .copied()
        .collect();
    assert_failure(&zt(&args, tmp.path())?, 1, &["nowhere/admin.sock"]);

    // A misspelt flag gets clap's hint.
    assert_failure(
        &zt(&["up", "--port-bas", "7000"], tmp.path())?,
        2,
        &["--port-bas", "'--port-base'"],
    );
    Ok(())
}

#[test]
fn a_device_state_reader_must_be_a_workload_of_the_trust_domain() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for (reader, why) in [
        ("not-an-id", "--device-state-reader not-an-id: "),
        (
            "spiffe://other.org/gateway",
            "--device-state-reader spiffe://other.org/gateway: not in the trust domain example.org",
        ),
        (
            "spiffe://example.org/device/0a1b",
            "--device-state-reader spiffe://example.org/device/0a1b: a device may not read device states",
        ),
    ] {
        fails_cleanly(
            tmp.path(),
            &[
                "server",
                "--trust-domain",
                "example.org",
                "--data-dir",
                "data",
                "--devices",
                "127.0.0.1:0",
                "--device-state-reader",
                reader,
            ],
            1,
            &[why],
        )?;
    }
    Ok(())
}
