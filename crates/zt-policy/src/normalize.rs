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
//!   upper case, or the request is refused;
//! - `/internal;x` passed a DENY on `/internal` while a servlet-style app routed
//!   it to `/internal` — path parameters are refused, or with
//!   [`PathParams::Strip`] removed from every segment before anything else;
//! - `Host: admin.example.com.` (a trailing dot) escaped a host rule — one
//!   trailing dot is removed (see [`authority`]).
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

/// What to do with path parameters (`;` in a path segment, RFC 3986 §3.3),
/// which servlet containers and some frameworks drop before routing
/// (`/internal;jsessionid=1` is `/internal` to them) and others keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathParams {
    /// A path with `;` is refused (400): the policy cannot know how the app
    /// reads it. The safe default.
    #[default]
    Reject,
    /// Everything from `;` to the end of each segment is removed before the
    /// path is decoded and resolved (`/a;x/..;y/b` → `/b`, as Tomcat reads
    /// it); the app receives the path without them.
    Strip,
}

impl std::str::FromStr for PathParams {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(Self::Reject),
            "strip" => Ok(Self::Strip),
            _ => Err(format!("{s:?}: expected reject or strip")),
        }
    }
}

/// Normalizes an origin-form request target (`/a/b?q`), refusing path
/// parameters; the error says why it is refused (400).
pub fn target(raw: &str) -> Result<Target, String> {
    target_with(raw, PathParams::Reject)
}

/// Normalizes an origin-form request target (`/a/b?q`), with path parameters
/// handled as `params` says; the error says why it is refused (400).
pub fn target_with(raw: &str, params: PathParams) -> Result<Target, String> {
    let without_fragment = raw.split_once('#').map_or(raw, |(before, _)| before);
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (without_fragment, None),
    };
    if !path.starts_with('/') {
        return Err(format!("the path {path:?} does not start with /"));
    }
    let stripped;
    let path = match (params, path.contains(';')) {
        (_, false) => path,
        (PathParams::Reject, true) => {
            return Err(format!(
                "the path {path:?} has a path parameter (';'), which apps read differently"
            ));
        }
        (PathParams::Strip, true) => {
            stripped = strip_params(path);
            &stripped
        }
    };
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

/// Removes `;…` from every segment of a raw path.
fn strip_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split_once(';').map_or(segment, |(kept, _)| kept))
        .collect::<Vec<_>>()
        .join("/")
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

/// The host as policies compare it: lower case, without a trailing dot
/// (`Admin.Example.com.:8080` → `admin.example.com:8080`).
pub fn host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    let (name, port) = split_port(&lower);
    match (name.strip_suffix('.'), port) {
        (Some(name), Some(port)) => format!("{name}:{port}"),
        (Some(name), None) => name.to_owned(),
        (None, _) => lower,
    }
}

/// Checks a request's authority (a `Host` header, an HTTP/2 `:authority`, an
/// absolute-form target's) and returns it as [`host`] normalizes it; the error
/// says why it is refused (400): empty, user info, characters outside
/// RFC 3986's, a port that is not a number, a bracketed IPv6 that is not one,
/// a name ending in more than one dot.
pub fn authority(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the authority is not ASCII".to_owned())?;
    if text.is_empty() {
        return Err("empty authority".into());
    }
    // RFC 3986's unreserved characters, a port, brackets: host names and IP
    // literals need no more, and sub-delimiters (`,`, `;`, …) are read
    // differently by different stacks.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b);
    if let Some(bad) = text.bytes().find(|&b| !allowed(b)) {
        return Err(format!(
            "the authority {text:?} has {:?}, which a host name cannot have",
            char::from(bad)
        ));
    }
    let (name, port) = split_port(text);
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || p.parse::<u16>().is_err()) {
        return Err(format!("the authority {text:?} has a port that is not a port"));
    }
    if let Some(inner) = name.strip_prefix('[') {
        let ip = inner
            .strip_suffix(']')
            .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok());
        if ip.is_none() {
            return Err(format!("the authority {text:?} is not a bracketed IPv6 address"));
        }
    } else if name.contains(['[', ']', ':']) {
        return Err(format!("the authority {text:?} is malformed"));
    }
    if name.is_empty() || name == "." || name.ends_with("..") {
        return Err(format!("the authority {text:?} has no host name"));
    }
    Ok(host(text))
}

/// `host[:port]` → (host, port); a bracketed IPv6 literal keeps its colons.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let after_literal = authority.rfind(']').map_or(0, |i| i + 1);
    match authority[after_literal..].rfind(':') {
        Some(i) => (
            &authority[..after_literal + i],
            Some(&authority[after_literal + i + 1..]),
        ),
        None => (authority, None),
    }
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
    fn path_parameters_are_refused_or_stripped() {
        for raw in ["/internal;x", "/internal;", "/;x/internal", "/a/..;/internal"] {
            assert!(target(raw).is_err(), "{raw:?} accepted");
        }
        let cases = [
            ("/internal;x", "/internal"),
            ("/internal;jsessionid=1?q=;", "/internal"),
            ("/;x/internal", "/internal"),
            ("/public/..;/internal", "/internal"),
            ("/a;x/b;y/c", "/a/b/c"),
            ("/%2e%2e;x/internal", "/internal"),
            ("/a%3Bx", "/a%3Bx"),
        ];
        for (raw, want) in cases {
            assert_eq!(target_with(raw, PathParams::Strip).unwrap().path, want, "{raw}");
        }
        // A `;` in the query is not a path parameter.
        assert_eq!(target("/a?x=1;y=2").unwrap().path, "/a");
    }

    #[test]
    fn authorities_are_checked_and_normalized() {
        let cases = [
            ("example.com", "example.com"),
            ("Example.COM", "example.com"),
            ("admin.example.com.", "admin.example.com"),
            ("admin.example.com.:8443", "admin.example.com:8443"),
            ("localhost:8080", "localhost:8080"),
            ("127.0.0.1", "127.0.0.1"),
            ("[::1]:8443", "[::1]:8443"),
            ("[::1]", "[::1]"),
        ];
        for (raw, want) in cases {
            assert_eq!(authority(raw.as_bytes()).unwrap(), want, "{raw}");
        }
        for raw in [
            "",
            ".",
            "example.com..",
            "user@example.com",
            "example.com:",
            "example.com:99999",
            "example.com:8x",
            "example.com:80:80",
            "[::1",
            "[not-ip]:80",
            "exa mple.com",
            "example.com/path",
            "a.com,b.com",
            "a.com;b",
            "example.com\\x",
            "ex\u{e4}mple.com",
        ] {
            assert!(authority(raw.as_bytes()).is_err(), "{raw:?} accepted");
        }
        assert!(authority(b"\xff").is_err());
        // What the policies compare is idempotent on what the proxy forwards.
        assert_eq!(host("admin.example.com"), "admin.example.com");
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
