//! The client side of the SPIFFE Workload API, as zt's own components and
//! commands use it (`zt proxy`, `zt agent api`), without the agent itself:
//!
//! - [`client`]: a Workload API client over a Unix socket whose whole path is
//!   checked before every connection, and zt agent's extra services on it;
//! - [`svid`]: an X.509-SVID response decoded once into typed parts;
//! - [`location`]: where zt agent's socket is when nobody says.

#![forbid(unsafe_code)]

pub mod client;
pub mod location;
pub mod svid;

pub use client::WorkloadClient;

/// The metadata key every Workload API call must carry (with the value
/// `true`), so that a browser or a confused deputy cannot make the call.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
