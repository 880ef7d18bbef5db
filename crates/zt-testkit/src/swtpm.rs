//! A software TPM for tests: Debian's `swtpm` on free loopback ports, with
//! a state directory of its own; killed on drop.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One swtpm process with its state directory; killed on drop.
pub struct Swtpm {
    child: Child,
    port: u16,
    _state: tempfile::TempDir,
}

impl Swtpm {
    /// Starts swtpm and waits until its TPM port accepts connections.
    pub fn start() -> Self {
        let state = tempfile::tempdir().unwrap_or_else(|e| panic!("a state directory for swtpm: {e}"));
        let port = free_port_pair();
        let spawned = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.path().display()))
            .arg("--flags")
            .arg("not-need-init,startup-clear")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => panic!(
                "starting swtpm failed ({e}): the TPM tests need swtpm, install it with scripts/setup-test-env (Debian: apt-get install swtpm swtpm-tools)"
            ),
        };
        let mut swtpm = Self {
            child,
            port,
            _state: state,
        };
        swtpm.wait_ready();
        swtpm
    }

    /// Waits until the TPM port accepts a connection (or swtpm has died).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for swtpm: {e}"))
            {
                panic!("swtpm on port {} exited before it was ready: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "swtpm on port {} not accepting connections after 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCTI string that reaches it (`swtpm:host=…,port=…`).
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port P such that P and P + 1 are free on loopback (swtpm's TPM and
/// control ports).
pub fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding a loopback port: {e}"));
        let port = first.local_addr().map_or(0, |addr| addr.port());
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports in 100 tries");
}
