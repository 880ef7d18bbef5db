//! The gateway's own paths, under one prefix no route may claim.

/// Every path of the gateway itself starts with this.
pub const PREFIX: &str = "/.zt/";
/// Where the provider sends the browser back with a code.
pub const CALLBACK: &str = "/.zt/callback";
/// Starts a sign-in: `?return=/path` (a local path only).
pub const SIGN_IN: &str = "/.zt/sign-in";
/// Ends the session (POST).
pub const SIGN_OUT: &str = "/.zt/sign-out";
/// OpenID Connect Back-Channel Logout: the provider's logout tokens.
pub const BACKCHANNEL_LOGOUT: &str = "/.zt/backchannel-logout";
/// The gateway's session, as JSON (who is signed in, until when).
pub const WHOAMI: &str = "/.zt/whoami";
