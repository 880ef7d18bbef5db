//! Real TLS handshakes over loopback TCP between rustls peers configured by zt-tls.
//! (Python's `ssl` module as the client: crates/zt/tests/interop.rs.)

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, StreamOwned};
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
    })
}

fn bundles(ca: &Authority) -> Result<Arc<BundleSet>, Box<dyn std::error::Error>> {
    let mut set = BundleSet::default();
    set.insert(ca.bundle()?);
    Ok(Arc::new(set))
}

/// Serves one connection with `svid`, accepting any client SVID of `ca`'s bundle.
fn serve_once(svid: Svid, ca: &Authority) -> Result<(u16, ServerThread), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let config = server_config(
        svid.chain,
        svid.key,
        bundles(ca)?,
        PeerMatcher::Any,
        TlsVersions::Tls13,
    )?;
    Ok((port, zt_testkit::tls_serve_once(listener, config)))
}

type ServerThread = std::thread::JoinHandle<Result<String, String>>;

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
    let (port, handle) = serve_once(server, &ca)?;
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
    let (port, handle) = serve_once(server, &ca)?;
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
    let (port, handle) = serve_once(server, &ca)?;
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
    .and_then(|e| e.downcast::<std::io::Error>().ok())
    .map(|e| zt_tls::handshake_error_text(&e))
    .unwrap_or_default();
    // One readable line, not rustls's debug dump of the reason.
    assert_eq!(
        err,
        "invalid peer certificate: peer spiffe://example.org/not-the-database is not an expected identity"
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
