//! `zt login` and `zt logout`: a person at a terminal signs in with the
//! device flow (RFC 8628), or in a local browser (`--loopback`: code flow with PKCE), and hands access tokens to other programs
//! (`--print-token`), refreshed on demand; the tokens stay in the user's
//! config directory.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use zt_login::{ClientCertificate, DEFAULT_CLIENT_ID, DEFAULT_SCOPE, DeviceCode, Login};

/// Which provider and client.
#[derive(Args)]
pub(crate) struct IssuerArgs {
    /// The OpenID Provider's issuer URL (https://localhost:8443 for zt server --idp).
    #[arg(long, env = "ZT_LOGIN_ISSUER", value_name = "URL")]
    pub(crate) issuer: String,
    /// The public OAuth client to log in as (device_code and refresh_token grants).
    #[arg(long, default_value = DEFAULT_CLIENT_ID, value_name = "ID")]
    pub(crate) client_id: String,
    /// Trust this CA (PEM) for the provider's HTTPS instead of the system's anchors.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Present this enrolled device's certificate to the provider (the
    /// `--dir` of `zt device enroll`): tokens then carry the device's live
    /// tier and are bound to its certificate, which must go with them.
    #[arg(long, env = "ZT_DEVICE_DIR", value_name = "DIR")]
    pub(crate) device_dir: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    pub(crate) issuer: IssuerArgs,
    /// The scope to ask for.
    #[arg(long, default_value = DEFAULT_SCOPE)]
    pub(crate) scope: String,
    /// Print a valid access token to stdout (refreshed when it has less than a
    /// minute left) instead of logging in.
    #[arg(long, conflicts_with = "loopback")]
    pub(crate) print_token: bool,
    /// Sign in with the authorization code flow and PKCE in a browser on this
    /// machine, which brings the code back to http://127.0.0.1:PORT/callback
    /// (a redirect URI the client must have registered), instead of the device flow.
    #[arg(long)]
    pub(crate) loopback: bool,
    /// The port of --loopback's redirect URI.
    #[arg(long, default_value_t = 8400, value_name = "PORT", requires = "loopback")]
    pub(crate) redirect_port: u16,
}

#[derive(Args)]
pub(crate) struct LogoutArgs {
    #[command(flatten)]
    pub(crate) issuer: IssuerArgs,
}

fn login(args: &IssuerArgs) -> anyhow::Result<Login> {
    let login = Login::new(&args.issuer, &args.client_id, args.ca.as_deref())?;
    let Some(dir) = &args.device_dir else {
        return Ok(login);
    };
    let device = zt_device::agent::DeviceDir::open(dir, &zt_device::key::TpmLocation::from_env())
        .map_err(|e| anyhow::anyhow!("--device-dir {}: {e}", dir.display()))?;
    let resolver = device
        .client_config()
        .map_err(|e| anyhow::anyhow!("--device-dir {}: {e}", dir.display()))?
        .client_auth_cert_resolver;
    let leaf = device
        .certificate()
        .map_err(|e| anyhow::anyhow!("--device-dir {}: {e}", dir.display()))?
        .and_then(|chain| chain.into_iter().next());
    let (true, Some(leaf)) = (resolver.has_certs(), leaf) else {
        anyhow::bail!(
            "--device-dir {}: the device has no certificate yet (is its enrollment waiting for zt device approve?)",
            dir.display()
        );
    };
    Ok(login.presenting(ClientCertificate {
        resolver,
        flags: format!("--device-dir {}", dir.display()),
        thumbprint: Some(zt_identity::x509::x5t_s256(&leaf)),
    }))
}

/// `zt login`: the device flow, or `--print-token`.
pub fn run(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let login = login(&args.issuer)?;
    if args.print_token {
        let token = super::admin_call(login.access_token())?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{token}")?;
        stdout.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let show = |code: &DeviceCode| {
        eprintln!("To sign in, open {}", code.verification_uri);
        eprintln!("and enter the code {}", code.user_code);
        if let Some(complete) = &code.verification_uri_complete {
            eprintln!("(or open {complete})");
        }
        eprintln!(
            "Waiting for the sign-in (the code expires in {}s)…",
            code.expires_in
        );
    };
    let stored = if args.loopback {
        let show = |url: &str| {
            eprintln!("To sign in, open this URL in a browser on this machine:");
            eprintln!("{url}");
            eprintln!(
                "Waiting for the browser to come back to http://127.0.0.1:{}/callback…",
                args.redirect_port
            );
        };
        super::admin_call(login.loopback_login(&args.scope, args.redirect_port, show))?
    } else {
        super::admin_call(login.device_login(&args.scope, show))?
    };
    eprintln!(
        "Logged in to {} as client {}; tokens in {}",
        stored.issuer,
        stored.client_id,
        login.path().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `zt logout`: revokes the refresh token and removes the file.
pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let login = login(&args.issuer)?;
    let path = login.path();
    super::admin_call(login.logout())?;
    eprintln!("Logged out of {}; removed {}", args.issuer.issuer, path.display());
    Ok(ExitCode::SUCCESS)
}
