//! Real TLS handshakes over loopback TCP between rustls peers configured by zt-tls,
//! and with Python's `ssl` module as the client.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ServerConnection, StreamOwned};
use zt_ca::{Authority, DEFAULT_CA_TTL, DEFAULT_X509_SVID_TTL, KeyType, SvidRequest};
use zt_identity::x509;
use zt_identity::{BundleSet, SpiffeId, TrustDomain};
use zt_tls::{PeerMatcher, TlsVersions, client_config, peer_spiffe_id, server_config};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn authority(td: &str) -> Result<Authority, Box<dyn std::error::Error>> {
    Ok(Authority::generate(
        TrustDomain::parse(td)?,
        KeyType::EcP256,
        DEFAULT_CA_TTL,
        now(),
    )?)
}

struct Svid {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_pem: String,
}

fn issue(ca: &Authority, id: &str) -> Result<Svid, Box<dyn std::error::Error>> {
    let request = SvidRequest {
        spiffe_id: SpiffeId::parse(id)?,
        dns_names: vec!["localhost".into()],
        ip_addresses: vec![],
        ttl: DEFAULT_X509_SVID_TTL,
    };
    let issued = ca.issue_x509_svid(&request, now())?;
    Ok(Svid {
        key: x509::private_key_from_pem(issued.private_key_pem.as_bytes())?,
        chain: issued.chain,
        key_pem: issued.private_key_pem,
    })
}

fn bundles(ca: &Authority) -> Result<Arc<BundleSet>, Box<dyn std::error::Error>> {
    let mut set = BundleSet::default();
    set.insert(ca.bundle()?);
    Ok(Arc::new(set))
}

/// Accepts one connection, completes the handshake, answers with the verified peer ID.
/// Returns the handshake error text if the handshake fails.
fn serve_once(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> thread::JoinHandle<Result<String, String>> {
    thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let conn = ServerConnection::new(Arc::new(config)).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, tcp);
        let mut hello = [0u8; 6];
        tls.read_exact(&mut hello).map_err(|e| e.to_string())?;
        let id = peer_spiffe_id(&tls.conn)
            .map(|id| id.to_string())
            .unwrap_or_default();
        let version = format!("{:?}", tls.conn.protocol_version());
        tls.write_all(format!("{id}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(format!("{id} {version}"))
    })
}

fn connect(port: u16, config: rustls::ClientConfig) -> Result<(String, String), Box<dyn std::error::Error>> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost")?)?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(b"hello\n")?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer)?;
    let server = peer_spiffe_id(&tls.conn)
        .map(|id| id.to_string())
        .unwrap_or_default();
    Ok((answer.trim().to_owned(), server))
}

#[test]
fn mutual_tls_between_rustls_peers() -> TestResult {
    let ca = authority("example.org")?;
    let server = issue(&ca, "spiffe://example.org/server")?;
    let client = issue(&ca, "spiffe://example.org/client")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = serve_once(
        listener,
        server_config(
            server.chain,
            server.key,
            bundles(&ca)?,
            PeerMatcher::Any,
            TlsVersions::Tls13,
        )?,
    );
    let expect = PeerMatcher::OneOf(vec![SpiffeId::parse("spiffe://example.org/server")?]);
    let (answer, server_id) = connect(
        port,
        client_config(
            client.chain,
            client.key,
            bundles(&ca)?,
            expect,
            TlsVersions::Tls13,
        )?,
    )?;
    assert_eq!(
        answer, "spiffe://example.org/client",
        "server saw the client's verified ID"
    );
    assert_eq!(
        server_id, "spiffe://example.org/server",
        "client saw the server's verified ID"
    );
    let served = handle.join().map_err(|_| "server thread panicked")??;
    assert!(served.ends_with("Some(TLSv1_3)"), "{served}");
    Ok(())
}

#[test]
fn client_from_another_ca_is_refused() -> TestResult {
    let ca = authority("example.org")?;
    let impostor_ca = authority("example.org")?;
    let server = issue(&ca, "spiffe://example.org/server")?;
    let impostor = issue(&impostor_ca, "spiffe://example.org/client")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = serve_once(
        listener,
        server_config(
            server.chain,
            server.key,
            bundles(&ca)?,
            PeerMatcher::Any,
            TlsVersions::Tls13,
        )?,
    );
    let client = client_config(
        impostor.chain,
        impostor.key,
        bundles(&ca)?,
        PeerMatcher::Any,
        TlsVersions::Tls13,
    )?;
    assert!(
        connect(port, client).is_err(),
        "the impostor must not get an answer"
    );
    let served = handle.join().map_err(|_| "server thread panicked")?;
    let err = served.err().unwrap_or_default();
    assert!(err.contains("UnknownIssuer"), "{err}");
    Ok(())
}

#[test]
fn server_with_unexpected_id_is_refused() -> TestResult {
    let ca = authority("example.org")?;
    let server = issue(&ca, "spiffe://example.org/not-the-database")?;
    let client = issue(&ca, "spiffe://example.org/client")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = serve_once(
        listener,
        server_config(
            server.chain,
            server.key,
            bundles(&ca)?,
            PeerMatcher::Any,
            TlsVersions::Tls13,
        )?,
    );
    let expect = PeerMatcher::OneOf(vec![SpiffeId::parse("spiffe://example.org/database")?]);
    let err = connect(
        port,
        client_config(
            client.chain,
            client.key,
            bundles(&ca)?,
            expect,
            TlsVersions::Tls13,
        )?,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        err.contains("UnexpectedPeer") && err.contains("spiffe://example.org/not-the-database"),
        "{err}"
    );
    assert!(handle.join().map_err(|_| "server thread panicked")?.is_err());
    Ok(())
}

#[test]
fn trust_domain_matcher() -> TestResult {
    let td = TrustDomain::parse("example.org")?;
    let m = PeerMatcher::MemberOf(td);
    assert!(m.matches(&SpiffeId::parse("spiffe://example.org/a")?));
    assert!(!m.matches(&SpiffeId::parse("spiffe://example.com/a")?));
    Ok(())
}

/// Python's `ssl` module (OpenSSL underneath) as the client: it verifies our server
/// certificate by CA file and host name, and presents a client SVID from `zt ca`.
#[test]
fn python_ssl_client_handshake() -> TestResult {
    let Some(python) = zt_testkit::python("python_ssl_client_handshake") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let ca = authority("example.org")?;
    let server = issue(&ca, "spiffe://example.org/server")?;
    let client = issue(&ca, "spiffe://example.org/python-client")?;
    let bundle_path = dir.path().join("bundle.pem");
    let cert_path = dir.path().join("client.crt");
    let key_path = dir.path().join("client.key");
    std::fs::write(&bundle_path, ca.bundle()?.to_pem())?;
    std::fs::write(
        &cert_path,
        client.chain.iter().map(|c| x509::to_pem(c)).collect::<String>(),
    )?;
    std::fs::write(&key_path, &client.key_pem)?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = serve_once(
        listener,
        server_config(
            server.chain,
            server.key,
            bundles(&ca)?,
            PeerMatcher::Any,
            TlsVersions::Tls13,
        )?,
    );
    let script = r#"
import socket, ssl, sys
bundle, cert, key, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile=bundle)
ctx.load_cert_chain(certfile=cert, keyfile=key)
with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"hello\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = tls.recv(1024)
            if not chunk:
                break
            answer += chunk
        print(tls.version(), answer.decode().strip())
"#;
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&bundle_path)
        .arg(&cert_path)
        .arg(&key_path)
        .arg(port.to_string())
        .output()?;
    assert!(output.status.success(), "{}", zt_testkit::describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "TLSv1.3 spiffe://example.org/python-client"
    );
    let served = handle.join().map_err(|_| "server thread panicked")??;
    assert_eq!(served, "spiffe://example.org/python-client Some(TLSv1_3)");
    Ok(())
}
