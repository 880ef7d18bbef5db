//! A workload using the Rust `spiffe` crate (not written here) against the
//! Workload API named by `SPIFFE_ENDPOINT_SOCKET`: it fetches its X.509-SVID,
//! the bundles and a JWT-SVID, has the agent validate the JWT and validates it
//! itself with the JWT bundle, and prints what it got as one JSON document.
//! The agent tests run it; usage: `spiffe_rs_client AUDIENCE`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test client: any failure should abort it loudly"
)]

use spiffe::{JwtSvid, WorkloadApiClient};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let audience = std::env::args().nth(1).expect("usage: spiffe_rs_client AUDIENCE");
    let client = WorkloadApiClient::connect_env()
        .await
        .expect("connect to SPIFFE_ENDPOINT_SOCKET");
    let svid = client.fetch_x509_svid().await.expect("fetch_x509_svid");
    let trust_domain = svid.spiffe_id().trust_domain().clone();
    let bundles = client.fetch_x509_bundles().await.expect("fetch_x509_bundles");
    let bundle = bundles
        .get(&trust_domain)
        .expect("a bundle for the SVID's trust domain");
    let jwt = client
        .fetch_jwt_svid([audience.as_str()], None)
        .await
        .expect("fetch_jwt_svid");
    let validated = client
        .validate_jwt_token(&audience, jwt.token())
        .await
        .expect("validate_jwt_token");
    let jwt_bundles = client.fetch_jwt_bundles().await.expect("fetch_jwt_bundles");
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &[audience.as_str()])
        .expect("the JWT-SVID verifies with the served JWT bundle");
    let wrong = client
        .validate_jwt_token(&format!("{audience}-other"), jwt.token())
        .await;
    let doc = serde_json::json!({
        "spiffe_id": svid.spiffe_id().to_string(),
        "chain": svid.cert_chain().iter().map(|c| zt_identity::x509::hex_compact(c.as_bytes())).collect::<Vec<_>>(),
        "bundle": bundle.authorities().iter().map(|c| zt_identity::x509::hex_compact(c.as_bytes())).collect::<Vec<_>>(),
        "jwt_spiffe_id": jwt.spiffe_id().to_string(),
        "jwt_token": jwt.token(),
        "validated_spiffe_id": validated.spiffe_id().to_string(),
        "local_spiffe_id": local.spiffe_id().to_string(),
        "jwt_bundle_keys": jwt_bundles.get(&trust_domain).map_or(0, |b| b.jwt_authorities().count()),
        "wrong_audience_refused": wrong.is_err(),
    });
    println!("{doc}");
}
