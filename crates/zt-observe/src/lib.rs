//! From observed traffic to enforced policy.
//!
//! - [`traffic`]: verified decision records, kept to a window, folded into
//!   distinct flows with counts;
//! - [`paths`]: which path segments are identifiers, and path templates that
//!   cover what was observed and no more;
//! - [`generate`]: Istio AuthorizationPolicies (ALLOW, dry-run first) from the
//!   flows, one file per destination workload, and the report of what was
//!   left out and why;
//! - [`promote`]: shadow decisions weighed, and the dry-run annotation
//!   removed from the policies that would have denied none of the traffic.

#![forbid(unsafe_code)]

pub mod generate;
pub mod paths;
pub mod promote;
pub mod traffic;

pub use traffic::{Caller, Flow, Outcome, Seen, Shadow, Traffic, Window};
