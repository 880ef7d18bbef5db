//! Who may use the REST API: an optional bearer token on every call but
//! `/health` (OPA's `--authentication=token`), and policy writes refused
//! unless the operator enabled them. Both refusals are OPA's answer to a
//! request its authorization policy rejects: 401
//! `{"code": "unauthorized", "message": "request rejected by administrative policy…"}`.

use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, Pdp};

/// The flag that enables policy writes, named in the refusal.
pub const ALLOW_WRITES_FLAG: &str = "--allow-policy-writes";

/// Longest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// What the API lets callers do.
#[derive(Debug, Default, Clone)]
pub struct Access {
    /// `PUT` and `DELETE /v1/policies/{id}` are served (refused otherwise).
    pub policy_writes: bool,
    /// Every call but `/health` must carry `Authorization: Bearer <token>`.
    pub token: Option<ApiToken>,
}

/// The API's bearer token. Only its SHA-256 is kept, and presented tokens are
/// hashed and compared in constant time, so neither the token's bytes nor its
/// length show through timing; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct ApiToken {
    digest: aws_lc_rs::digest::Digest,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(…)")
    }
}

/// Why a token file was refused. Messages name the file, never the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// It could not be opened or read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Other users may read or change it.
    #[error("{path}: mode {mode:04o} lets other users read or change the API token (chmod 600 {path})")]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It holds no token, or more than a token can be.
    #[error("{path}: {why}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

impl ApiToken {
    /// A token given in memory (surrounding whitespace is not part of it).
    pub fn new(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| Self {
            digest: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()),
        })
    }

    /// Reads the token from `path` once: its first line, without surrounding
    /// whitespace. The file must be readable by its owner only.
    pub fn read(path: &Path) -> Result<Self, TokenFileError> {
        let read = |source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mode = file.metadata().map_err(read)?.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(TokenFileError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        file.take(MAX_TOKEN_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        let content = |why| TokenFileError::Content {
            path: path.to_owned(),
            why,
        };
        if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
            return Err(content("longer than 4096 bytes: not a token"));
        }
        let token = text.lines().next().unwrap_or_default();
        Self::new(token).ok_or_else(|| content("empty: no token in it"))
    }

    /// Whether `presented` is the token.
    fn matches(&self, presented: &[u8]) -> bool {
        let presented = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, presented);
        aws_lc_rs::constant_time::verify_slices_are_equal(presented.as_ref(), self.digest.as_ref()).is_ok()
    }
}

/// OPA's refusal, with why after its message.
fn unauthorized(why: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("request rejected by administrative policy: {why}"),
    )
}

/// Middleware: the bearer token, when one is configured.
pub(crate) async fn authenticate(State(pdp): State<Pdp>, request: Request, next: Next) -> Response {
    if let Some(token) = &pdp.access.token {
        let presented = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        match presented {
            Some(presented) if token.matches(presented) => {}
            Some(_) => {
                tracing::warn!(target: "zt::audit", path = %request.uri().path(), "PDP API call with a wrong bearer token refused");
                return unauthorized("invalid bearer token").into_response();
            }
            None => {
                return unauthorized("a bearer token is required (Authorization: Bearer …)").into_response();
            }
        }
    }
    next.run(request).await
}

/// Middleware on the write routes: refused unless writes are enabled.
pub(crate) async fn writes(State(pdp): State<Pdp>, request: Request, next: Next) -> Response {
    if !pdp.access.policy_writes {
        tracing::warn!(target: "zt::audit", method = %request.method(), path = %request.uri().path(), "policy write refused: writes are disabled");
        return unauthorized(&format!(
            "policy writes are disabled (start with {ALLOW_WRITES_FLAG} to enable them)"
        ))
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn token_files_are_read_once_and_checked() {
        let (_dir, path) = file("s3cret-token\n", 0o600);
        let token = ApiToken::read(&path).unwrap();
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-toke"));
        assert!(!token.matches(b"s3cret-token\n"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "ApiToken(…)");

        let (_dir, path) = file("s3cret-token\n", 0o644);
        let error = ApiToken::read(&path).unwrap_err().to_string();
        assert!(
            error.contains("mode 0644") && error.contains("chmod 600"),
            "{error}"
        );
        assert!(!error.contains("s3cret"), "{error}");

        let (_dir, path) = file("\n  \n", 0o400);
        let error = ApiToken::read(&path).unwrap_err().to_string();
        assert!(error.ends_with("empty: no token in it"), "{error}");

        let (_dir, path) = file(&"x".repeat(5000), 0o600);
        let error = ApiToken::read(&path).unwrap_err().to_string();
        assert!(error.contains("longer than 4096 bytes"), "{error}");

        let error = ApiToken::read(Path::new("/nonexistent/token"))
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("/nonexistent/token: "), "{error}");
    }
}
