//! Device trust: what a laptop or host proves about itself, and what zt
//! concludes from it.
//!
//! - [`key`]: the device key — in a TPM 2.0 when there is one (non-exportable),
//!   otherwise a software key, recorded as weaker;
//! - [`facts`]: posture facts collected on the device, each with when it was
//!   observed; what cannot be read is unknown, never compliant;
//! - [`report`]: posture reports signed with the device key, with a sequence
//!   number and a time so that none can be replayed or re-ordered;
//! - [`compliance`]: the compliance policy (YAML): rules with a maximum fact
//!   age → tiers, and the heartbeat window after which a silent device drops;
//! - [`agent`]: the device's side — enrollment, its certificate, and the
//!   reports `zt device agent` sends.

#![forbid(unsafe_code)]

pub mod agent;
pub mod compliance;
pub mod facts;
pub mod key;
pub mod report;
