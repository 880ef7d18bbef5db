//! SPIFFE IDs and trust domains, parsed per the SPIFFE-ID specification.
//!
//! A value of [`SpiffeId`] or [`TrustDomain`] is valid by construction: the only
//! ways to make one are the parsers here, so code that receives one never
//! re-checks it.

use std::fmt;
use std::str::FromStr;

/// The scheme and authority separator every SPIFFE ID starts with.
const PREFIX: &str = "spiffe://";

/// Longest trust domain name accepted, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest SPIFFE ID accepted, in bytes (the whole URI).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Why a string is not a SPIFFE ID or trust domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Nothing to parse.
    #[error("is empty")]
    Empty,
    /// The URI does not start with `spiffe://` (scheme is case-sensitive).
    #[error("scheme must be \"spiffe\" followed by \"://\"")]
    WrongScheme,
    /// `spiffe://` followed by nothing, or by a path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {len} bytes, the limit is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong {
        /// Length found.
        len: usize,
    },
    /// The whole ID is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is {len} bytes, the limit is {MAX_SPIFFE_ID_LEN}")]
    TooLong {
        /// Length found.
        len: usize,
    },
    /// An uppercase letter in the trust domain.
    #[error("trust domain must be lowercase, found {ch:?} at byte {at}")]
    Uppercase {
        /// The offending character.
        ch: char,
        /// Its byte offset in the input.
        at: usize,
    },
    /// `:` in the trust domain.
    #[error("trust domain must not contain a port (':' at byte {at})")]
    Port {
        /// Byte offset of the `:`.
        at: usize,
    },
    /// `@` in the trust domain.
    #[error("trust domain must not contain userinfo ('@' at byte {at})")]
    Userinfo {
        /// Byte offset of the `@`.
        at: usize,
    },
    /// `[` or `]` in the trust domain.
    #[error("trust domain must not be an IP literal ({ch:?} at byte {at})")]
    IpLiteral {
        /// The bracket found.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// `%` anywhere in the ID.
    #[error("percent-encoding is not allowed ('%' at byte {at})")]
    PercentEncoding {
        /// Byte offset of the `%`.
        at: usize,
    },
    /// Any other character outside `[a-z0-9.-_]` in the trust domain.
    #[error(
        "trust domain may only contain lowercase letters, digits, '.', '-' and '_', found {ch:?} at byte {at}"
    )]
    TrustDomainChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// `?` in the ID.
    #[error("SPIFFE ID must not contain a query ('?' at byte {at})")]
    Query {
        /// Byte offset of the `?`.
        at: usize,
    },
    /// `#` in the ID.
    #[error("SPIFFE ID must not contain a fragment ('#' at byte {at})")]
    Fragment {
        /// Byte offset of the `#`.
        at: usize,
    },
    /// Two consecutive slashes in the path.
    #[error("path has an empty segment at byte {at}")]
    EmptySegment {
        /// Byte offset of the second `/`.
        at: usize,
    },
    /// A `.` or `..` segment.
    #[error("path has a {segment:?} segment at byte {at}")]
    DotSegment {
        /// `.` or `..`.
        segment: &'static str,
        /// Byte offset of the segment.
        at: usize,
    },
    /// The path ends with `/`.
    #[error("path must not end with '/'")]
    TrailingSlash,
    /// A character outside `[a-zA-Z0-9.-_]` in a path segment.
    #[error("path segments may only contain letters, digits, '.', '-' and '_', found {ch:?} at byte {at}")]
    PathChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// A non-empty path that does not start with `/`.
    #[error("path must start with '/'")]
    MissingLeadingSlash,
    /// A path where only a trust domain is allowed.
    #[error("a trust domain has no path, found {path:?}")]
    UnexpectedPath {
        /// The path found.
        path: String,
    },
}

/// The name of a SPIFFE trust domain, e.g. `example.org`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain {
    name: String,
}

impl TrustDomain {
    /// Parses a bare name (`example.org`) or a path-less SPIFFE ID
    /// (`spiffe://example.org`).
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.starts_with(PREFIX) {
            let id = SpiffeId::parse(input)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::UnexpectedPath {
                    path: id.path().to_owned(),
                });
            }
            return Ok(id.trust_domain);
        }
        if input.contains("://") {
            return Err(SpiffeIdError::WrongScheme);
        }
        check_trust_domain(input, 0)?;
        Ok(Self {
            name: input.to_owned(),
        })
    }

    /// An empty name, for a bundle being read before its trust domain is known.
    /// It must be replaced before the value is handed out.
    pub(crate) fn provisional() -> Self {
        Self { name: String::new() }
    }

    /// The bare name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The trust domain's own ID, `spiffe://<name>`, as used in signing certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.clone(),
            path: String::new(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.name)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The path prefix of enrolled devices' IDs: `spiffe://TD/device/ID`.
pub const DEVICE_PATH: &str = "/device/";
/// The path prefix of zt's own parts' IDs: `spiffe://TD/zt/server`, `/zt/idp`,
/// `/zt/devices`, `/zt/agent/…`.
pub const ZT_PATH: &str = "/zt/";

/// A SPIFFE ID: `spiffe://<trust domain>[/<path>]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, reporting the first rule it breaks.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        let rest = input.strip_prefix(PREFIX).ok_or(SpiffeIdError::WrongScheme)?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        check_trust_domain(authority, PREFIX.len())?;
        check_path(path, PREFIX.len() + authority.len())?;
        Ok(Self {
            trust_domain: TrustDomain {
                name: authority.to_owned(),
            },
            path: path.to_owned(),
        })
    }

    /// Builds the ID `spiffe://<trust_domain><path>`, checking `path` as the spec requires.
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        check_path(path, 0)?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: path.to_owned(),
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this is a trust domain's own ID (no path), as signing certificates carry.
    pub fn is_root(&self) -> bool {
        self.path.is_empty()
    }

    /// Whether this names an enrolled device (`spiffe://TD/device/ID`), which
    /// is a person's machine, not a workload.
    pub fn is_device(&self) -> bool {
        self.path.starts_with(DEVICE_PATH)
    }

    /// Whom zt alone gives this ID, if it is reserved: `/device/…` to the
    /// devices zt server enrolls, `/zt/…` to zt's own parts (zt server, its
    /// provider and device API, agents). No registration entry, join token or
    /// admin's mint may name one.
    pub fn reserved_for(&self) -> Option<&'static str> {
        if self.is_device() {
            Some("enrolled devices (zt server names them when they enroll)")
        } else if self.path.starts_with(ZT_PATH) {
            Some("zt's own parts (zt server, its provider and device API, agents)")
        } else {
            None
        }
    }

    /// The path's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').skip(1)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}{}", self.trust_domain.name, self.path)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Checks a trust domain name; `offset` is where it starts in the original input,
/// so that errors point at the right byte.
fn check_trust_domain(name: &str, offset: usize) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: name.len() });
    }
    for (i, ch) in name.char_indices() {
        let at = offset + i;
        match ch {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::Uppercase { ch, at }),
            ':' => return Err(SpiffeIdError::Port { at }),
            '@' => return Err(SpiffeIdError::Userinfo { at }),
            '[' | ']' => return Err(SpiffeIdError::IpLiteral { ch, at }),
            '%' => return Err(SpiffeIdError::PercentEncoding { at }),
            '?' => return Err(SpiffeIdError::Query { at }),
            '#' => return Err(SpiffeIdError::Fragment { at }),
            _ => return Err(SpiffeIdError::TrustDomainChar { ch, at }),
        }
    }
    Ok(())
}

/// Checks a path (empty, or `/`-separated segments); `offset` as above.
fn check_path(path: &str, offset: usize) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // Characters first, so that a query or fragment is reported as such
    // rather than as whatever segment rule it happens to break.
    for (i, ch) in path.char_indices() {
        let at = offset + i;
        match ch {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' | '/' => {}
            '%' => return Err(SpiffeIdError::PercentEncoding { at }),
            '?' => return Err(SpiffeIdError::Query { at }),
            '#' => return Err(SpiffeIdError::Fragment { at }),
            _ => return Err(SpiffeIdError::PathChar { ch, at }),
        }
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::MissingLeadingSlash);
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    let mut at = offset + 1;
    for segment in rest.split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment { at }),
            "." => return Err(SpiffeIdError::DotSegment { segment: ".", at }),
            ".." => return Err(SpiffeIdError::DotSegment { segment: "..", at }),
            _ => {}
        }
        at += segment.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected outcome of parsing one input.
    enum Want {
        Ok(&'static str, &'static str),
        Err(SpiffeIdError),
    }
    use Want::{Err as E, Ok as V};

    fn table() -> Vec<(String, Want)> {
        use SpiffeIdError::*;
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let max_td = format!("spiffe://{}", "a".repeat(255));
        let long_id = format!("spiffe://example.org/{}", "a".repeat(2048 - 20));
        let max_id = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        let mut cases: Vec<(String, Want)> = vec![
            // valid
            ("spiffe://example.org".into(), V("example.org", "")),
            (
                "spiffe://example.org/service-one".into(),
                V("example.org", "/service-one"),
            ),
            (
                "spiffe://example.org/ns/production/sa/payment-service".into(),
                V("example.org", "/ns/production/sa/payment-service"),
            ),
            (
                "spiffe://cluster.local/ns/default/sa/default".into(),
                V("cluster.local", "/ns/default/sa/default"),
            ),
            ("spiffe://a/b".into(), V("a", "/b")),
            (
                "spiffe://td-with_under.score/Path.With-All_Chars09".into(),
                V("td-with_under.score", "/Path.With-All_Chars09"),
            ),
            ("spiffe://1.2.3.4/x".into(), V("1.2.3.4", "/x")),
            ("spiffe://example.org/...".into(), V("example.org", "/...")),
            ("spiffe://example.org/.a/..b".into(), V("example.org", "/.a/..b")),
            ("spiffe://example.org/UPPER".into(), V("example.org", "/UPPER")),
            ("spiffe://_/-".into(), V("_", "/-")),
            // invalid: scheme
            ("".into(), E(Empty)),
            ("example.org".into(), E(WrongScheme)),
            ("SPIFFE://example.org".into(), E(WrongScheme)),
            ("Spiffe://example.org/a".into(), E(WrongScheme)),
            ("https://example.org/a".into(), E(WrongScheme)),
            ("spiffe:/example.org".into(), E(WrongScheme)),
            ("spiffe:example.org".into(), E(WrongScheme)),
            (" spiffe://example.org".into(), E(WrongScheme)),
            // invalid: trust domain
            ("spiffe://".into(), E(MissingTrustDomain)),
            ("spiffe:///path".into(), E(MissingTrustDomain)),
            ("spiffe://Example.org".into(), E(Uppercase { ch: 'E', at: 9 })),
            ("spiffe://example.ORG/a".into(), E(Uppercase { ch: 'O', at: 17 })),
            ("spiffe://example.org:8080/a".into(), E(Port { at: 20 })),
            ("spiffe://user@example.org/a".into(), E(Userinfo { at: 13 })),
            ("spiffe://[::1]/a".into(), E(IpLiteral { ch: '[', at: 9 })),
            ("spiffe://exa%6Dple.org".into(), E(PercentEncoding { at: 12 })),
            (
                "spiffe://exa mple.org".into(),
                E(TrustDomainChar { ch: ' ', at: 12 }),
            ),
            (
                "spiffe://exa+mple.org".into(),
                E(TrustDomainChar { ch: '+', at: 12 }),
            ),
            (
                "spiffe://exämple.org".into(),
                E(TrustDomainChar { ch: 'ä', at: 11 }),
            ),
            ("spiffe://example.org?x=1".into(), E(Query { at: 20 })),
            ("spiffe://example.org#frag".into(), E(Fragment { at: 20 })),
            (long_td, E(TrustDomainTooLong { len: 256 })),
            // invalid: path
            ("spiffe://example.org/".into(), E(TrailingSlash)),
            ("spiffe://example.org/a/".into(), E(TrailingSlash)),
            ("spiffe://example.org//a".into(), E(EmptySegment { at: 21 })),
            ("spiffe://example.org/a//b".into(), E(EmptySegment { at: 23 })),
            (
                "spiffe://example.org/.".into(),
                E(DotSegment { segment: ".", at: 21 }),
            ),
            (
                "spiffe://example.org/..".into(),
                E(DotSegment {
                    segment: "..",
                    at: 21,
                }),
            ),
            (
                "spiffe://example.org/a/./b".into(),
                E(DotSegment { segment: ".", at: 23 }),
            ),
            (
                "spiffe://example.org/a/../b".into(),
                E(DotSegment {
                    segment: "..",
                    at: 23,
                }),
            ),
            ("spiffe://example.org/a%2Fb".into(), E(PercentEncoding { at: 22 })),
            ("spiffe://example.org/a?b=c".into(), E(Query { at: 22 })),
            ("spiffe://example.org/a#b".into(), E(Fragment { at: 22 })),
            ("spiffe://example.org/a b".into(), E(PathChar { ch: ' ', at: 22 })),
            ("spiffe://example.org/a:b".into(), E(PathChar { ch: ':', at: 22 })),
            ("spiffe://example.org/a@b".into(), E(PathChar { ch: '@', at: 22 })),
            ("spiffe://example.org/a~b".into(), E(PathChar { ch: '~', at: 22 })),
            (
                "spiffe://example.org/a\\b".into(),
                E(PathChar { ch: '\\', at: 22 }),
            ),
            ("spiffe://example.org/ü".into(), E(PathChar { ch: 'ü', at: 21 })),
            (long_id, E(TooLong { len: 2049 })),
        ];
        cases.push((max_td, V("", "")));
        cases.push((max_id, V("example.org", "")));
        cases
    }

    #[test]
    fn spiffe_id_table() {
        let cases = table();
        assert!(cases.len() >= 40, "the spec table must stay large");
        for (input, want) in cases {
            let got = SpiffeId::parse(&input);
            match (want, got) {
                (V(td, path), Ok(id)) => {
                    // The two boundary cases carry long, generated parts.
                    if !td.is_empty() {
                        assert_eq!(id.trust_domain().name(), td, "{input}");
                    }
                    if !path.is_empty() {
                        assert_eq!(id.path(), path, "{input}");
                    }
                    assert_eq!(id.to_string(), input, "round trip of {input}");
                }
                (E(want), Err(got)) => assert_eq!(got, want, "{input}"),
                (V(..), Err(e)) => panic!("{input:?} should parse, got {e}"),
                (E(want), Ok(id)) => panic!("{input:?} should fail with {want}, got {id}"),
            }
        }
    }

    #[test]
    fn trust_domain_accepts_name_or_id() {
        assert_eq!(
            TrustDomain::parse("example.org").map(|t| t.to_string()),
            Ok("example.org".into())
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org").map(|t| t.to_string()),
            Ok("example.org".into())
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org/a"),
            Err(SpiffeIdError::UnexpectedPath { path: "/a".into() })
        );
        assert_eq!(
            TrustDomain::parse("https://example.org"),
            Err(SpiffeIdError::WrongScheme)
        );
        assert_eq!(TrustDomain::parse(""), Err(SpiffeIdError::MissingTrustDomain));
        assert_eq!(
            TrustDomain::parse("Example.org"),
            Err(SpiffeIdError::Uppercase { ch: 'E', at: 0 })
        );
    }

    #[test]
    fn from_parts_checks_path() -> Result<(), SpiffeIdError> {
        let td = TrustDomain::parse("example.org")?;
        assert_eq!(
            SpiffeId::from_parts(&td, "/a/b")?.to_string(),
            "spiffe://example.org/a/b"
        );
        assert!(SpiffeId::from_parts(&td, "")?.is_root());
        assert_eq!(
            SpiffeId::from_parts(&td, "a"),
            Err(SpiffeIdError::MissingLeadingSlash)
        );
        assert_eq!(
            SpiffeId::from_parts(&td, "/a/../b"),
            Err(SpiffeIdError::DotSegment { segment: "..", at: 3 })
        );
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/api")?;
        assert_eq!(id.segments().collect::<Vec<_>>(), ["ns", "prod", "sa", "api"]);
        Ok(())
    }

    #[test]
    fn devices_and_zt_parts_are_reserved() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        assert!(id("spiffe://td/device/0a1b").is_device());
        assert!(id("spiffe://td/device/0a1b").reserved_for().is_some());
        for own in [
            "spiffe://td/zt/server",
            "spiffe://td/zt/agent/join_token/x",
            "spiffe://td/zt/idp",
        ] {
            assert!(id(own).reserved_for().is_some(), "{own}");
            assert!(!id(own).is_device(), "{own}");
        }
        // Only whole segments: neighbours of the reserved paths are free.
        for free in [
            "spiffe://td/devices/a",
            "spiffe://td/device",
            "spiffe://td/ns/device/sa/x",
            "spiffe://td/ztx/server",
            "spiffe://td/zt",
        ] {
            assert_eq!(id(free).reserved_for(), None, "{free}");
            assert!(!id(free).is_device(), "{free}");
        }
    }
}
