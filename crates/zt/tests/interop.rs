//! SVIDs and bundles from `zt ca` read and verified by tools no one here wrote:
//! the `openssl` command, Python's `cryptography` and Python's `ssl`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use zt_identity::x509;
use zt_identity::{Bundle, BundleSet};
use zt_tls::{PeerMatcher, TlsVersions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn zt(dir: &Path, args: &[&str]) -> Result<Output, Box<dyn std::error::Error>> {
    let output = Command::new(env!("CARGO_BIN_EXE_zt"))
        .args(args)
        .current_dir(dir)
        .output()?;
    assert!(
        output.status.success(),
        "zt {args:?}: {}",
        zt_testkit::describe(&output)
    );
    Ok(output)
}

/// A CA, an SVID for spiffe://example.org/service-one and the PEM and JWKS bundles.
fn issue_fixture(dir: &Path) -> TestResult {
    zt(
        dir,
        &["ca", "init", "--trust-domain", "example.org", "--dir", "ca"],
    )?;
    zt(
        dir,
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/service-one",
            "--dns",
            "localhost",
            "--ip",
            "127.0.0.1",
            "--out",
            "svc",
        ],
    )?;
    zt(dir, &["ca", "bundle", "--ca", "ca", "--out", "bundle.pem"])?;
    zt(
        dir,
        &[
            "ca",
            "bundle",
            "--ca",
            "ca",
            "--format",
            "jwks",
            "--out",
            "bundle.jwks",
        ],
    )?;
    Ok(())
}

#[test]
fn openssl_verifies_svids_for_client_and_server_use() -> TestResult {
    let Some(openssl) = zt_testkit::openssl("openssl_verifies_svids_for_client_and_server_use") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    issue_fixture(dir.path())?;
    for purpose in ["sslclient", "sslserver"] {
        let output = Command::new(&openssl)
            .args(["verify", "-CAfile", "bundle.pem", "-purpose", purpose, "svc.crt"])
            .current_dir(dir.path())
            .output()?;
        assert!(
            output.status.success(),
            "{purpose}: {}",
            zt_testkit::describe(&output)
        );
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "svc.crt: OK");
    }
    // And openssl refuses it against another CA of the same trust domain.
    zt(
        dir.path(),
        &["ca", "init", "--trust-domain", "example.org", "--dir", "other"],
    )?;
    zt(
        dir.path(),
        &["ca", "bundle", "--ca", "other", "--out", "other.pem"],
    )?;
    let output = Command::new(&openssl)
        .args(["verify", "-CAfile", "other.pem", "svc.crt"])
        .current_dir(dir.path())
        .output()?;
    assert!(!output.status.success(), "{}", zt_testkit::describe(&output));
    Ok(())
}

#[test]
fn openssl_reads_the_svid_profile() -> TestResult {
    let Some(openssl) = zt_testkit::openssl("openssl_reads_the_svid_profile") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    issue_fixture(dir.path())?;
    let output = Command::new(&openssl)
        .args(["x509", "-in", "svc.crt", "-noout", "-text"])
        .current_dir(dir.path())
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "URI:spiffe://example.org/service-one, DNS:localhost, IP Address:127.0.0.1",
        "X509v3 Key Usage: critical\n                Digital Signature\n",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "X509v3 Basic Constraints: critical\n                CA:FALSE",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The key matches the certificate, as openssl computes it.
    let cert_key = Command::new(&openssl)
        .args(["x509", "-in", "svc.crt", "-noout", "-pubkey"])
        .current_dir(dir.path())
        .output()?;
    let key_pub = Command::new(&openssl)
        .args(["pkey", "-in", "svc.key", "-pubout"])
        .current_dir(dir.path())
        .output()?;
    assert!(key_pub.status.success(), "{}", zt_testkit::describe(&key_pub));
    assert_eq!(cert_key.stdout, key_pub.stdout);
    Ok(())
}

/// Python's `cryptography` parses the SVID's extensions and verifies its signature
/// with the CA's key; it also verifies a JWT-SVID with the key from the JWKS bundle.
#[test]
fn python_cryptography_reads_svids_and_verifies_jwt_svids() -> TestResult {
    let Some(python) = zt_testkit::python("python_cryptography_reads_svids_and_verifies_jwt_svids") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    issue_fixture(dir.path())?;
    let token = zt(
        dir.path(),
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
    )?;
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let script = r#"
import base64, json, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

cert = x509.load_pem_x509_certificate(open("svc.crt", "rb").read())
ca = x509.load_pem_x509_certificate(open("bundle.pem", "rb").read())
ext = cert.extensions
san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
ku = ext.get_extension_for_class(x509.KeyUsage)
bc = ext.get_extension_for_class(x509.BasicConstraints).value
eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
cert.verify_directly_issued_by(ca)
print("uri", ",".join(san.get_values_for_type(x509.UniformResourceIdentifier)))
print("ku", ku.critical, ku.value.digital_signature, ku.value.key_cert_sign, ku.value.crl_sign)
print("ca", bc.ca)
print("eku", x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku)

def b64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

token = sys.argv[1]
header_b64, claims_b64, sig_b64 = token.split(".")
header, claims = json.loads(b64(header_b64)), json.loads(b64(claims_b64))
jwks = json.load(open("bundle.jwks"))
key = next(k for k in jwks["keys"] if k["use"] == "jwt-svid" and k["kid"] == header["kid"])
public = ec.EllipticCurvePublicNumbers(
    int.from_bytes(b64(key["x"]), "big"), int.from_bytes(b64(key["y"]), "big"), ec.SECP256R1()
).public_key()
sig = b64(sig_b64)
der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
public.verify(der, (header_b64 + "." + claims_b64).encode(), ec.ECDSA(hashes.SHA256()))
print("jwt", header["alg"], header["typ"], claims["sub"], claims["aud"], claims["exp"] - claims["iat"])
"#;
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&token)
        .current_dir(dir.path())
        .output()?;
    assert!(output.status.success(), "{}", zt_testkit::describe(&output));
    assert_eq!(
        String::from_utf8(output.stdout)?,
        "uri spiffe://example.org/service-one\n\
         ku True True False False\n\
         ca False\n\
         eku True True\n\
         jwt ES256 JWT spiffe://example.org/client db 300\n"
    );
    Ok(())
}

/// Python's `ssl` module (OpenSSL underneath) as a TLS 1.3 client with a client SVID
/// from `zt ca issue`, against a rustls server presenting another `zt ca issue` SVID.
/// Python verifies the server by CA file and host name; the server verifies the client
/// as an X.509-SVID and answers with the SPIFFE ID it saw.
#[test]
fn python_ssl_client_handshakes_with_a_rustls_server() -> TestResult {
    let Some(python) = zt_testkit::python("python_ssl_client_handshakes_with_a_rustls_server") else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    issue_fixture(dir.path())?;
    zt(
        dir.path(),
        &[
            "ca",
            "issue",
            "--ca",
            "ca",
            "--spiffe-id",
            "spiffe://example.org/python-client",
            "--out",
            "client",
        ],
    )?;

    let read = |name: &str| std::fs::read(dir.path().join(name));
    let chain = x509::certificates_from_pem(&read("svc.crt")?)?;
    let key = x509::private_key_from_pem(&read("svc.key")?)?;
    let mut bundles = BundleSet::default();
    bundles.insert(Bundle::parse(&read("bundle.pem")?, None)?);
    let config = zt_tls::server_config(
        chain,
        key,
        Arc::new(bundles),
        PeerMatcher::Any,
        TlsVersions::Tls13,
    )?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = zt_testkit::tls_serve_once(listener, config);

    let script = r#"
import socket, ssl, sys
port = int(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(cafile="bundle.pem")
ctx.load_cert_chain(certfile="client.crt", keyfile="client.key")
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
        .arg(port.to_string())
        .current_dir(dir.path())
        .output()?;
    assert!(output.status.success(), "{}", zt_testkit::describe(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "TLSv1.3 spiffe://example.org/python-client"
    );
    let served = server.join().map_err(|_| "server thread panicked")??;
    assert_eq!(served, "spiffe://example.org/python-client Some(TLSv1_3)");
    Ok(())
}
