//! zt's gRPC APIs, generated from `proto/` at build time.

#![forbid(unsafe_code)]

/// The agent API of `zt server` (`zt.agent.v1`).
pub mod agent {
    #![allow(missing_docs, clippy::all, reason = "generated code")]
    tonic::include_proto!("zt.agent.v1");
}
