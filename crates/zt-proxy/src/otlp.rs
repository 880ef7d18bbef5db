//! The export of request spans ([`crate::request::trace`]) with OpenTelemetry's
//! OTLP over gRPC (`--otlp-endpoint`), off unless asked for: one tracer provider
//! whose batch processor sends spans from a thread of its own, so that a request
//! only queues its span; shut down (and so flushed) when the proxy stops.
//!
//! The OpenTelemetry API is used directly rather than through
//! `tracing-opentelemetry`: a request's span is then made only when a tracer is
//! configured, and with none the request path pays one branch on an `Option`,
//! where a `tracing` layer would see every span of every request.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use zt_identity::SpiffeId;

/// The `service.name` of the proxy's spans.
pub const SERVICE_NAME: &str = "zt-proxy";

/// How long a clean stop waits for the last spans to be sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go: an OTLP/gRPC receiver, `http://HOST:PORT` (a collector's port
/// 4317, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(http::Uri);

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("{s:?}: not a URL ({e})"))?;
        if uri.scheme() != Some(&http::uri::Scheme::HTTP) {
            return Err(format!(
                "{s:?}: expected http://HOST:PORT (OTLP over gRPC in plaintext, to a collector on this host or network)"
            ));
        }
        if uri.authority().is_none_or(|a| a.host().is_empty()) {
            return Err(format!("{s:?}: no host"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(format!("{s:?}: a gRPC endpoint has no path or query"));
        }
        Ok(Self(uri))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint {endpoint}: {reason}")]
pub struct OtlpError {
    /// The endpoint.
    pub endpoint: String,
    /// Why.
    pub reason: String,
}

/// The running export: the provider whose batch processor sends the spans.
pub(crate) struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Starts exporting to `endpoint`; spans carry `service.name` [`SERVICE_NAME`]
    /// and the proxy's SPIFFE ID (`zt.spiffe_id`) when it is known at start. Must
    /// run inside the Tokio runtime, which the gRPC channel lives on.
    pub(crate) fn start(endpoint: &Endpoint, own: Option<&SpiffeId>) -> Result<(Self, SdkTracer), OtlpError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.0.to_string())
            .build()
            .map_err(|e| OtlpError {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            })?;
        let mut resource = Resource::builder().with_service_name(SERVICE_NAME);
        if let Some(id) = own {
            resource = resource.with_attribute(KeyValue::new("zt.spiffe_id", id.to_string()));
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("zt-proxy");
        Ok((Self { provider }, tracer))
    }

    /// Sends what is queued and stops; spans ended later are dropped.
    pub(crate) async fn shutdown(self) {
        let provider = self.provider;
        // The processor's thread exports on this runtime: wait for it off the
        // runtime's threads.
        let stopped =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT)).await;
        match stopped {
            Ok(Ok(())) => tracing::debug!("OTLP export flushed and stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "OTLP export did not stop cleanly: spans may be lost"),
            Err(e) => tracing::warn!(error = %e, "OTLP export did not stop cleanly: spans may be lost"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_grpc_endpoints_parse() {
        for good in [
            "http://127.0.0.1:4317",
            "http://collector:4317/",
            "http://[::1]:4317",
        ] {
            assert!(good.parse::<Endpoint>().is_ok(), "{good}");
        }
        for bad in [
            "127.0.0.1:4317",
            "https://collector:4317",
            "grpc://collector:4317",
            "http://collector:4317/v1/traces",
            "http://collector:4317/?token=x",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?}");
        }
    }
}
