//! Authorization policies: Istio's `AuthorizationPolicy` with Istio's semantics,
//! the request normalization that closes the path and host bypasses Istio and
//! Envoy have had, and evaluation fast enough to run on every request.
//!
//! - [`model`]: the YAML, read strictly, every value checked as it is read;
//! - [`load`]: a directory of policy files, every problem as `file:line: field`;
//! - [`policy`]: one policy compiled for evaluation;
//! - [`peer_authentication`]: Istio's `PeerAuthentication`, the mTLS mode of
//!   a workload's ports, resolved mesh → namespace → workload → port;
//! - [`request_authentication`]: Istio's `RequestAuthentication`, the issuers
//!   whose JWTs a workload accepts and what of them its app receives;
//! - [`evaluate`]: the decision, in Istio's order (DENY, then ALLOW, default);
//! - [`normalize`]: paths, methods and hosts before any policy sees them;
//! - [`matching`]: exact/prefix/suffix/presence patterns, path templates, CIDRs;
//! - [`request`]: a request as policies see it, and its public JSON form;
//! - [`cases`]: table tests of requests and expected decisions.

#![forbid(unsafe_code)]

pub mod cases;
pub mod evaluate;
pub mod load;
pub mod matching;
pub mod model;
pub mod normalize;
pub mod peer_authentication;
pub mod policy;
pub mod rego;
pub mod request;
pub mod request_authentication;

pub use evaluate::{
    DEFAULT_ROOT_NAMESPACE, Decision, ExternalAuthorizer, PolicySet, Verdict, WorkloadPolicies,
};
pub use load::{LoadError, load_dir};
pub use peer_authentication::{MtlsMode, PeerAuthentications, WorkloadMtls};
pub use policy::Policy;
pub use request::Request;
pub use request_authentication::{RequestAuthentications, WorkloadAuthentication};
