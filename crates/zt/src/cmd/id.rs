//! `zt id`.

use std::process::ExitCode;

use clap::Subcommand;

use zt_identity::SpiffeId;

#[derive(Subcommand)]
pub(crate) enum IdCommand {
    /// Print the trust domain and path of a SPIFFE ID, or why it is invalid (exit 1).
    Check {
        /// The SPIFFE ID, e.g. spiffe://example.org/service-one.
        id: String,
    },
}

/// `zt id check ID`: the parsed parts, or the reason it is invalid and exit 1.
pub fn check(input: &str) -> anyhow::Result<ExitCode> {
    match SpiffeId::parse(input) {
        Ok(id) => {
            println!("trust domain: {}", id.trust_domain());
            println!("path: {}", if id.is_root() { "(none)" } else { id.path() });
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => {
            eprintln!("zt: invalid SPIFFE ID {input:?}: {reason}");
            Ok(ExitCode::FAILURE)
        }
    }
}
