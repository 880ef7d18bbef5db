//! Workload identity as the SPIFFE standards define it: IDs and trust domains,
//! X.509-SVID and JWT-SVID verification, and trust bundles.
//!
//! Pure code with no I/O: callers hand in bytes and the current time. Every
//! verified value ([`VerifiedX509Svid`], [`VerifiedJwtSvid`]) can only be made by
//! the verifier, so a function that takes one knows the check happened.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod clock;
pub mod jwk;
pub mod jwt;
pub mod spiffe_id;
pub mod x509;

pub use bundle::{Bundle, BundleError, BundleSet, BundleSource};
pub use jwt::{Algorithm, JwtSigner, JwtSvidError, VerifiedJwtSvid, mint_jwt_svid, verify_jwt_svid};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use x509::{Purpose, VerifiedX509Svid, X509SvidError, verify_x509_svid};
