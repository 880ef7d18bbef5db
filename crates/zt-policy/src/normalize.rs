//! Request normalization before any policy sees a request, closing the bypasses
//! Istio and Envoy have had:
//!
//! - CVE-2019-9901: `/public/../admin` matched as `/public/…` — dot segments are
//!   resolved;
//! - CVE-2021-31920: `/admin%2Fsecret` or `/admin%5Csecret` slipped past a path
//!   rule — `%2F`, `%5C` and a literal backslash become `/`, and slashes are merged;
//! - CVE-2021-39156: a `#fragment` changed what the path matched — the fragment
//!   is dropped and the query is kept out of path matching;
//! - CVE-2021-39155: `Host: EXAMPLE.com` escaped a host rule — hosts compare
//!   case-insensitively (see [`host`]);
//! - a lower-case HTTP/2 method (`get`) escaped a `GET` rule — methods must be
//!   upper case, or the request is refused.
//!
//! Escapes of unreserved characters (`%41` → `A`, `%2E` → `.`) are decoded before
//! dot segments are resolved; other escapes stay, in upper-case hex; `%00` and
//! malformed escapes are refused. The normalized path is what policies match and
//! what the app receives.

/// A request target after normalization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Normalized path: starts with `/`, no dot segments, no repeated slashes.
    pub path: String,
    /// The query as sent (without `?`), kept for the app, never matched as path.
    pub query: Option<String>,
}

impl Target {
    /// Path and query as the app receives them.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Normalizes an origin-form request target (`/a/b?q`); the error says why it
/// is refused (400).
pub fn target(raw: &str) -> Result<Target, String> {
    let without_fragment = raw.split_once('#').map_or(raw, |(before, _)| before);
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (without_fragment, None),
    };
    if !path.starts_with('/') {
        return Err(format!("the path {path:?} does not start with /"));
    }
    let decoded = decode(path)?;
    Ok(Target {
        path: resolve(&decoded),
        query,
    })
}

/// Decodes unreserved escapes and slashes, keeps the others upper-cased, turns
/// backslashes into slashes.
fn decode(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| format!("malformed percent-escape in {path:?}"))?;
                let value = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                match value {
                    0 => return Err(format!("%00 in {path:?}")),
                    b'/' | b'\\' => out.push('/'),
                    v if is_unreserved(v) => out.push(char::from(v)),
                    _ => {
                        out.push('%');
                        out.push_str(&hex.to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            0 => return Err(format!("NUL in {path:?}")),
            b'\\' => {
                out.push('/');
                i += 1;
            }
            _ => {
                // Bytes of a UTF-8 sequence pass whole: `path` is a str, and this
                // branch copies up to the next ASCII byte we care about.
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\' | 0))
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Merges slashes and resolves `.` and `..` (never above the root).
fn resolve(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // A path ending in `/`, `/.` or `/..` keeps a trailing slash.
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for part in parts {
        match part {
            "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// Checks an HTTP method: a token in upper case (`get` is refused, not matched
/// against `GET` rules, not let past them).
pub fn method(method: &str) -> Result<(), String> {
    if method.is_empty() || method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!("the method {method:?} is not in upper case"));
    }
    Ok(())
}

/// The host as policies compare it: lower case.
pub fn host(host: &str) -> String {
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn paths_are_normalized() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b///c", "/a/b/c"),
            ("/a/./b/../c", "/a/c"),
            ("/public/../admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/", "/a/"),
            ("/admin%2Fsecret", "/admin/secret"),
            ("/admin%2fsecret", "/admin/secret"),
            ("/admin%5Csecret", "/admin/secret"),
            ("/admin\\secret", "/admin/secret"),
            ("/%2e%2e/admin", "/admin"),
            ("/public/%2E%2E/admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%252Fb", "/a%252Fb"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (raw, want) in cases {
            assert_eq!(target(raw).unwrap().path, want, "{raw}");
        }
    }

    #[test]
    fn query_and_fragment_stay_out_of_the_path() {
        let t = target("/public?x=/../admin#/admin").unwrap();
        assert_eq!(t.path, "/public");
        assert_eq!(t.query.as_deref(), Some("x=/../admin"));
        assert_eq!(t.path_and_query(), "/public?x=/../admin");
        assert_eq!(target("/admin#/public").unwrap().path, "/admin");
    }

    #[test]
    fn bad_targets_are_refused() {
        for raw in [
            "/a%00b",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a%4g",
            "*",
            "relative/path",
            "",
            "/a\0b",
        ] {
            assert!(target(raw).is_err(), "{raw:?} accepted");
        }
    }

    #[test]
    fn methods_must_be_upper_case() {
        assert!(method("GET").is_ok());
        assert!(method("PROPFIND").is_ok());
        for bad in ["get", "Get", ""] {
            assert!(method(bad).is_err(), "{bad:?}");
        }
        assert_eq!(host("Billing.EXAMPLE.org:8080"), "billing.example.org:8080");
    }
}
