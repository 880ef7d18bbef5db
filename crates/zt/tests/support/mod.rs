//! Helpers of the `zt server` end-to-end tests: real server processes, the CLI
//! against them, raw HTTP on their sockets.

#![allow(dead_code, unused_imports, reason = "each test file uses a different part")]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
pub use zt_testkit::assert_cli_failure as assert_failure;
use zt_testkit::describe;

/// How long a server may take to become ready, or to stop.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Interval between readiness polls.
pub const POLL: Duration = Duration::from_millis(20);

/// The trust domain every test server is the authority of.
pub const TRUST_DOMAIN: &str = "example.org";

/// This process's effective uid, as the kernel reports it (for `unix:uid:` selectors).
pub fn my_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A fresh PostgreSQL database (`None`: skipped, loudly, by the testkit).
pub fn postgres_database(test: &str) -> Option<String> {
    block_on(zt_testkit::postgres_database(test))
}

/// Runs `future` to completion on a runtime of its own (for synchronous tests).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The value of the Prometheus sample `sample` (name and labels, as exposed) on
/// `addr`'s `/metrics`; `None` when there is no such sample.
pub fn sample(addr: SocketAddr, sample: &str) -> Option<f64> {
    let (status, text) = http_get(addr, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running `zt server`; SIGKILLed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    /// The agent API (gRPC over TLS).
    pub agent_api: SocketAddr,
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `zt server` on `data_dir` (and `datastore`, if any) and waits until it is ready.
    pub fn start(data_dir: &Path, datastore: Option<&str>) -> Self {
        let mut server = Self::spawn(data_dir, datastore);
        server.wait_ready();
        server
    }

    /// Starts `zt server` without waiting; its stderr goes to a log file next to `data_dir`.
    pub fn spawn(data_dir: &Path, datastore: Option<&str>) -> Self {
        Self::spawn_with(data_dir, datastore, &[])
    }

    /// Like [`ServerProcess::spawn`], with extra `zt server` flags.
    pub fn spawn_with(data_dir: &Path, datastore: Option<&str>, extra: &[&str]) -> Self {
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let agent_api: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self::spawn_on(data_dir, datastore, extra, http, agent_api)
    }

    /// Starts this server's successor on the same data dir and ports, and waits
    /// until it is ready (the previous one must have stopped).
    pub fn restart(&self) -> Self {
        let mut next = Self::spawn_on(&self.data_dir, None, &[], self.http, self.agent_api);
        next.wait_ready();
        next
    }

    fn spawn_on(
        data_dir: &Path,
        datastore: Option<&str>,
        extra: &[&str],
        http: SocketAddr,
        agent_api: SocketAddr,
    ) -> Self {
        let log = data_dir.with_extension(format!("{}.{}.log", http.port(), now_nanos()));
        let stderr = fs::File::create(&log).unwrap();
        let http_arg = http.to_string();
        let agent_arg = agent_api.to_string();
        let mut args = vec![
            "server",
            "--trust-domain",
            TRUST_DOMAIN,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--http",
            &http_arg,
            "--agent-api",
            &agent_arg,
        ];
        if let Some(url) = datastore {
            args.extend(["--datastore", url]);
        }
        args.extend(extra);
        let child = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(&args)
            .env_remove("ZT_ADMIN_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Self {
            child,
            data_dir: data_dir.to_owned(),
            http,
            agent_api,
            log,
        }
    }

    /// Polls until the admin socket exists and `/readyz` answers 200; fails the test
    /// if the server exits first or the deadline passes.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "zt server exited before it was ready: {status}\n{}",
                    self.stderr()
                );
            }
            if self.socket().exists() && matches!(http_get(self.http, "/readyz"), Ok((200, _))) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "zt server not ready after {DEADLINE:?}\n{}",
                self.stderr()
            );
            thread::sleep(POLL);
        }
    }

    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
    }

    /// What the server wrote on stderr so far.
    pub fn stderr(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!("server stderr ({}):\n{text}", self.log.display())
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {}: {sent}", self.child.id());
        match wait_with_deadline(&mut self.child) {
            Some(status) => status,
            None => panic!(
                "zt server still running {DEADLINE:?} after SIGTERM\n{}",
                self.stderr()
            ),
        }
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{}", self.stderr());
        }
    }
}

/// Waits up to [`DEADLINE`] for `child` to exit; kills it and returns `None` if it does not.
pub fn wait_with_deadline(child: &mut Child) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        thread::sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// One HTTP/1.1 exchange on `stream`: sends `request`, reads the whole answer
/// (the request asks the server to close), returns the status and the body.
pub fn exchange(mut stream: impl Read + Write, request: &[u8]) -> std::io::Result<(u16, String)> {
    // The server may answer (and close) before reading all of a large request;
    // what it answered is still there to read.
    let _ = stream.write_all(request);
    let _ = stream.flush();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))?;
    Ok((status, body.to_owned()))
}

/// `GET path` on the health and metrics port.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    exchange(stream, request.as_bytes())
}

/// One HTTP/1.1 exchange on `addr`: `method path` with extra `headers` and a
/// JSON `body`; the status and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(stream, request.as_bytes())
}

/// `POST path` with `body` straight onto the admin socket, bypassing the CLI.
pub fn admin_post(socket: &Path, path: &str, body: &[u8]) -> (u16, String) {
    let stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: zt-admin\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    exchange(stream, &request).unwrap()
}

/// Runs `zt ARGS --socket SOCKET`.
pub fn zt_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .env_remove("ZT_ADMIN_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs `zt ARGS --socket <data-dir>/admin.sock` against `server`.
pub fn zt(server: &ServerProcess, args: &[&str]) -> Output {
    zt_at(&server.socket(), args)
}

/// The records `zt audit query ARGS…` prints, one JSON value per line; the
/// command must succeed.
pub fn audit_query(args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(["audit", "query"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zt audit query {args:?}: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// Asserts success with nothing on stderr; returns stdout.
pub fn succeed(out: &Output, what: &str) -> String {
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{what}: {}",
        describe(out)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Runs `zt ARGS` against `server` and asserts it succeeds; returns stdout.
pub fn ok(server: &ServerProcess, args: &[&str]) -> String {
    succeed(&zt(server, args), &format!("zt {args:?}"))
}

/// `zt entry count`, checked to be `N registration entries`.
pub fn count(server: &ServerProcess) -> u64 {
    let text = ok(server, &["entry", "count"]);
    let n = text.trim_end().strip_suffix(" registration entries");
    n.and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("zt entry count printed {text:?}"))
}

/// `zt entry show ARGS --output json`: the entries.
pub fn show_json(server: &ServerProcess, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["entry", "show"];
    all.extend_from_slice(args);
    all.extend(["--output", "json"]);
    let doc: Value = serde_json::from_str(&ok(server, &all)).unwrap();
    doc["entries"].as_array().unwrap().clone()
}

/// Runs `zt ARGS --output json` (a create or update) and returns the one entry it printed.
pub fn one_entry_json(server: &ServerProcess, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let doc: Value = serde_json::from_str(&ok(server, &all)).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "zt {all:?}: {doc}");
    entries[0].clone()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// A running `zt agent` joined to a server; SIGKILLed on drop.
pub struct AgentProcess {
    pub child: Child,
    /// Holds the socket directory, the data dir, the token file and the log.
    pub dir: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// The file the agent reads join tokens from.
    pub token_file: PathBuf,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `zt agent` in `dir` with a fresh join token granting `agent_id`, and
    /// waits until its socket accepts connections. `dir` and the socket's directory
    /// are world-readable, so that workloads of any uid can reach the socket.
    pub fn start(server: &ServerProcess, dir: &Path, agent_id: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        let bundle = dir.join("bundle.pem");
        fs::write(&bundle, ok(server, &["bundle", "show"])).unwrap();
        let token_file = dir.join("join-token");
        fs::write(&token_file, join_token(server, agent_id)).unwrap();
        fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();
        let public = dir.join("public");
        fs::create_dir_all(&public).unwrap();
        fs::set_permissions(&public, fs::Permissions::from_mode(0o755)).unwrap();
        let socket = public.join("api.sock");
        Self::spawn(server, dir, socket, token_file)
    }

    /// Stops this agent (SIGKILL) and starts another on the same directory,
    /// token file and socket, whatever the token file holds now; waits until
    /// its socket accepts connections.
    pub fn restart(&mut self, server: &ServerProcess) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
        let next = Self::spawn(server, &self.dir, self.socket.clone(), self.token_file.clone());
        *self = next;
    }

    fn spawn(server: &ServerProcess, dir: &Path, socket: PathBuf, token_file: PathBuf) -> Self {
        let log = dir.join(format!("agent.{}.log", now_nanos()));
        let child = Command::new(env!("CARGO_BIN_EXE_zt"))
            .args(["agent", "--server", &server.agent_api.to_string()])
            .arg("--join-token-file")
            .arg(&token_file)
            .arg("--trust-bundle")
            .arg(dir.join("bundle.pem"))
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("RUST_LOG", "info,zt_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut agent = Self {
            child,
            dir: dir.to_owned(),
            socket,
            token_file,
            log,
        };
        let start = Instant::now();
        while UnixStream::connect(&agent.socket).is_err() {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("zt agent exited: {status}\n{}", agent.stderr());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "zt agent socket not up\n{}",
                agent.stderr()
            );
            thread::sleep(POLL);
        }
        agent
    }

    /// `unix:///path/to/api.sock`, as `SPIFFE_ENDPOINT_SOCKET` wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `zt agent api ARGS --socket <socket>` as this test process.
    pub fn api(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zt"));
        command
            .args(["agent", "api"])
            .args(args)
            .arg("--socket")
            .arg(&self.socket);
        command.stdin(Stdio::null()).output().unwrap()
    }

    /// Polls `zt agent api fetch x509 --output json` until it lists exactly
    /// `ids` (sorted), and returns the SVIDs it printed.
    pub fn wait_for_x509(&self, ids: &[&str]) -> Vec<Value> {
        self.wait_for_x509_within(ids, DEADLINE)
    }

    /// Like [`AgentProcess::wait_for_x509`], failing after `deadline`.
    pub fn wait_for_x509_within(&self, ids: &[&str], deadline: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let out = self.api(&["fetch", "x509", "--output", "json"]);
            if out.status.success() {
                let svids: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
                let mut got: Vec<&str> = svids.iter().map(|s| s["spiffe_id"].as_str().unwrap()).collect();
                got.sort_unstable();
                if got == ids {
                    return svids;
                }
            }
            assert!(
                start.elapsed() < deadline,
                "the agent did not serve {ids:?} within {deadline:?}; last answer: {}\n{}",
                describe(&out),
                self.stderr()
            );
            thread::sleep(POLL);
        }
    }

    /// What the agent wrote on stderr so far.
    pub fn stderr(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        format!("agent stderr ({}):\n{text}", self.log.display())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("{}", self.stderr());
        }
    }
}

/// A fresh join token (from `zt agent token create`) granting `agent_id`.
pub fn join_token(server: &ServerProcess, agent_id: &str) -> String {
    let out = ok(server, &["agent", "token", "create", "--spiffe-id", agent_id]);
    out.lines()
        .find_map(|line| line.strip_prefix("Token: "))
        .unwrap_or_else(|| panic!("no token in {out:?}"))
        .to_owned()
}

/// Polls `attempt` until it returns `Some`, failing after [`DEADLINE`] with `what`.
pub fn eventually<T>(what: &str, mut attempt: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = attempt() {
            return found;
        }
        assert!(start.elapsed() < DEADLINE, "{what} within {DEADLINE:?}");
        std::thread::sleep(POLL);
    }
}

/// Runs a `tests/interop/browser.mjs` script (headless Chromium with a
/// virtual authenticator) written to `dir`; its results.
pub fn browse(node: &Path, dir: &Path, script: &Value) -> Vec<Value> {
    let path = dir.join("script.json");
    std::fs::write(&path, script.to_string()).unwrap();
    let out = Command::new(node)
        .arg(zt_testkit::interop_dir().join("browser.mjs"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "browser.mjs: {}", describe(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["results"].as_array().unwrap().clone()
}
