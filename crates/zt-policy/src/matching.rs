//! The value matchers of a policy, as Istio defines them: exact, `prefix*`,
//! `*suffix` and `*` (present, non-empty); path templates with `{*}` (one
//! segment) and `{**}` (one or more, last only); CIDR blocks.

use std::net::IpAddr;

/// One string pattern of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    /// The whole value.
    Exact(String),
    /// `abc*`.
    Prefix(String),
    /// `*abc`.
    Suffix(String),
    /// `*`: any non-empty value.
    Present,
}

impl StringMatch {
    /// Reads Istio's pattern syntax; `lowercase` folds it for case-insensitive
    /// fields (hosts).
    pub fn parse(pattern: &str, lowercase: bool) -> Self {
        let pattern = if lowercase {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_owned()
        };
        if pattern == "*" {
            StringMatch::Present
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            StringMatch::Prefix(prefix.to_owned())
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            StringMatch::Suffix(suffix.to_owned())
        } else {
            StringMatch::Exact(pattern)
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(exact) => value == exact,
            StringMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StringMatch::Suffix(suffix) => value.ends_with(suffix.as_str()),
            StringMatch::Present => !value.is_empty(),
        }
    }
}

/// A path pattern: a string pattern, or a template of segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Exact, prefix, suffix or presence.
    Plain(StringMatch),
    /// `/a/{*}/b/{**}`: literal segments, `{*}` for exactly one, `{**}` (last)
    /// for one or more.
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Must equal.
    Literal(String),
    /// `{*}`.
    One,
    /// `{**}`.
    OneOrMore,
}

impl PathMatch {
    /// Reads a `paths` value; templates are checked (`{**}` last, operators whole
    /// segments, nothing else in braces).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if !pattern.contains(['{', '}']) {
            return Ok(PathMatch::Plain(StringMatch::parse(pattern, false)));
        }
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| format!("path template {pattern:?} must start with /"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => Segment::One,
                "{**}" if i + 1 == parts.len() => Segment::OneOrMore,
                "{**}" => {
                    return Err(format!(
                        "path template {pattern:?}: {{**}} must be the last segment"
                    ));
                }
                literal if literal.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "path template {pattern:?}: {literal:?} is not a segment; use {{*}} or {{**}} as whole segments"
                    ));
                }
                literal => Segment::Literal(literal.to_owned()),
            };
            segments.push(segment);
        }
        Ok(PathMatch::Template(segments))
    }

    /// Whether the normalized `path` (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Plain(plain) => plain.matches(path),
            PathMatch::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let parts: Vec<&str> = rest.split('/').collect();
                let mut parts = parts.iter();
                for segment in segments {
                    match segment {
                        Segment::Literal(literal) => {
                            if parts.next() != Some(&literal.as_str()) {
                                return false;
                            }
                        }
                        Segment::One => match parts.next() {
                            Some(part) if !part.is_empty() => {}
                            _ => return false,
                        },
                        Segment::OneOrMore => {
                            let remaining: Vec<&&str> = parts.by_ref().collect();
                            return !remaining.is_empty() && remaining.iter().all(|p| !p.is_empty());
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// An IP address or CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// Parses a block; host bits set beyond the prefix are an error (a typo,
    /// usually), as is a prefix longer than the address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let block = IpBlock { network, prefix };
        if bits(network) & !mask(network, prefix) != 0 {
            return Err(format!("{text:?}: host bits are set beyond /{prefix}"));
        }
        Ok(block)
    }

    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.network.is_ipv4() {
            return false;
        }
        let m = mask(ip, self.prefix);
        bits(ip) & m == bits(self.network) & m
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(ip: IpAddr, prefix: u8) -> u128 {
    let width: u32 = if ip.is_ipv4() { 32 } else { 128 };
    let all = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let host_bits = width - u32::from(prefix);
    if host_bits >= 128 {
        0
    } else {
        all & !((1u128 << host_bits) - 1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn string_patterns_are_istios() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("abc*", "abcd", true),
            ("abc*", "xabc", false),
            ("*abc", "xabc", true),
            ("*abc", "abcx", false),
            ("*", "x", true),
            ("*", "", false),
        ];
        for (pattern, value, want) in cases {
            assert_eq!(
                StringMatch::parse(pattern, false).matches(value),
                want,
                "{pattern} ~ {value}"
            );
        }
        assert!(StringMatch::parse("Example.COM", true).matches("example.com"));
    }

    #[test]
    fn path_templates() {
        let cases = [
            ("/users/{*}/orders", "/users/7/orders", true),
            ("/users/{*}/orders", "/users/7/8/orders", false),
            ("/users/{*}/orders", "/users//orders", false),
            ("/users/{*}", "/users/7", true),
            ("/users/{*}", "/users", false),
            ("/files/{**}", "/files/a/b/c", true),
            ("/files/{**}", "/files/a", true),
            ("/files/{**}", "/files/", false),
            ("/files/{**}", "/files", false),
            ("/a/{*}/c/{**}", "/a/b/c/d/e", true),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(
                PathMatch::parse(pattern).unwrap().matches(path),
                want,
                "{pattern} ~ {path}"
            );
        }
        for bad in ["/files/{**}/x", "/a/{id}", "/a/b{*}", "files/{*}"] {
            assert!(PathMatch::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn ip_blocks() {
        let block = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.2.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!block.contains("2001:db8::1".parse().unwrap()));
        assert!(
            IpBlock::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            IpBlock::parse("2001:db8::/32")
                .unwrap()
                .contains("2001:db8:1::1".parse().unwrap())
        );
        assert!(
            IpBlock::parse("192.0.2.7")
                .unwrap()
                .contains("192.0.2.7".parse().unwrap())
        );
        for bad in [
            "10.1.0.0/33",
            "10.1.0.1/16",
            "10.1.0/16",
            "garbage",
            "10.0.0.0/x",
            "",
        ] {
            assert!(IpBlock::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
