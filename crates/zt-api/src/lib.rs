//! zt's gRPC APIs, generated from `proto/` at build time, and TLS channels to them.

#![forbid(unsafe_code)]

/// The agent API of `zt server` (`zt.agent.v1`).
pub mod agent {
    #![allow(missing_docs, clippy::all, reason = "generated code")]
    tonic::include_proto!("zt.agent.v1");
}

/// The SPIFFE Workload API (service `SpiffeWorkloadAPI`, no proto package).
pub mod workload {
    #![allow(missing_docs, clippy::all, reason = "generated code")]
    tonic::include_proto!("_");
}

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

/// A gRPC channel to `addr` over TLS with `tls` (built by zt-tls, so the server is
/// authenticated by its SPIFFE ID, not by host name). Connects lazily and again
/// after failures, so a server restart needs no new channel.
pub fn channel(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Channel, tonic::transport::Error> {
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let tls = tls.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from("zt-server")
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(Endpoint::from_static("http://zt-server").connect_with_connector_lazy(connector))
}
