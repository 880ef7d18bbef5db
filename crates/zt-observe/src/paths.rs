//! Paths as observed, turned into Istio path templates that cover them and as
//! little else as possible: a segment that is an identifier (a number, a UUID,
//! a hex digest, a long random token, an e-mail address) becomes `{*}`; a
//! prefix under which many distinct paths were seen becomes `prefix/{**}`.
//! Nothing else is widened.

use std::collections::BTreeMap;

/// When a segment or a prefix is generalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Templating {
    /// Distinct paths under one prefix from which they become `prefix/{**}`
    /// (0: never).
    pub collapse_after: usize,
    /// The shortest segment that counts as a random token.
    pub token_min_length: usize,
}

impl Default for Templating {
    fn default() -> Self {
        Self {
            collapse_after: 8,
            token_min_length: 16,
        }
    }
}

/// `{*}`: one segment.
pub const ONE: &str = "{*}";
/// `{**}`: one or more segments, last only.
pub const ONE_OR_MORE: &str = "{**}";

/// Why a path cannot be a policy's path: it would not mean in a policy what it
/// meant in the request.
pub fn unusable(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        return Some("does not start with /");
    }
    if path.contains(['{', '}']) {
        return Some("contains { or }, which Istio reads as a template operator");
    }
    if path.contains('*') {
        return Some("contains *, which Istio reads as a prefix or suffix wildcard");
    }
    if path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Some("contains white space or a control character");
    }
    if path.contains(['?', '#']) {
        return Some("contains ? or #");
    }
    None
}

/// Whether a path segment is an identifier rather than a name.
pub fn is_identifier(segment: &str, templating: &Templating) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
    // Decimal.
    if digits == bytes.len() {
        return true;
    }
    // UUID: 8-4-4-4-12 hex digits.
    if bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
    {
        return true;
    }
    // A hex digest (or an abbreviated one, if it mixes digits and letters).
    if bytes.iter().all(u8::is_ascii_hexdigit)
        && (bytes.len() >= 16 || (bytes.len() >= 7 && digits > 0 && letters > 0))
    {
        return true;
    }
    // An e-mail address (possibly with its @ percent-encoded).
    if let Some((local, domain)) = segment.split_once('@').or_else(|| segment.split_once("%40")) {
        let domain = domain.trim_matches('.');
        if !local.is_empty() && domain.contains('.') {
            return true;
        }
    }
    // A random token: long, of token characters, digits among letters, and
    // changing character class often (a slug such as `release-notes-2024`
    // changes rarely).
    if bytes.len() >= templating.token_min_length.max(1)
        && digits > 0
        && letters > 0
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'='))
    {
        let class = |b: &u8| match b {
            b'0'..=b'9' => 0,
            b'a'..=b'z' => 1,
            b'A'..=b'Z' => 2,
            _ => 3,
        };
        let alphanumeric: Vec<u8> = bytes.iter().copied().filter(u8::is_ascii_alphanumeric).collect();
        let changes = alphanumeric
            .windows(2)
            .filter(|w| class(&w[0]) != class(&w[1]))
            .count();
        if changes * 4 >= bytes.len() {
            return true;
        }
    }
    false
}

/// The path with every identifier segment replaced by `{*}`.
pub fn template(path: &str, templating: &Templating) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_identifier(segment, templating) {
            ONE
        } else {
            segment
        });
    }
    out
}

/// What is known of one path (or template) of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathUse {
    /// Methods seen.
    pub methods: std::collections::BTreeSet<String>,
    /// Requests seen.
    pub count: u64,
    /// Distinct observed paths it covers.
    pub distinct: u64,
    /// When it was first seen (Unix milliseconds).
    pub first_ms: u64,
    /// When it was last seen (Unix milliseconds).
    pub last_ms: u64,
}

impl PathUse {
    /// Adds what `other` covers.
    pub fn merge(&mut self, other: &PathUse) {
        if self.count == 0 {
            *self = other.clone();
            return;
        }
        self.first_ms = self.first_ms.min(other.first_ms);
        self.methods.extend(other.methods.iter().cloned());
        self.count += other.count;
        self.distinct += other.distinct;
        self.last_ms = self.last_ms.max(other.last_ms);
    }
}

/// Replaces, deepest prefix first, every group of at least `collapse_after`
/// paths under one prefix of one or more segments with `prefix/{**}`; a
/// collapsed group then counts as one path of the prefix above it. The root
/// is never collapsed: that would be every path. Paths with an empty segment
/// are left as they are (`{**}` does not match one).
pub fn collapse(paths: BTreeMap<String, PathUse>, collapse_after: usize) -> BTreeMap<String, PathUse> {
    if collapse_after < 2 {
        return paths;
    }
    let depth = |path: &str| path.matches('/').count();
    let deepest = paths.keys().map(|p| depth(p)).max().unwrap_or(0);
    let mut current = paths;
    // A prefix of `d` segments is `/s1/…/sd`; its paths have more segments.
    for d in (1..deepest).rev() {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for path in current.keys() {
            // `{**}` stands for non-empty segments only: a path with an empty
            // one (`//`, a trailing `/`) stays as it is.
            let collapsible = path.len() > 1 && !path[1..].split('/').any(str::is_empty);
            if collapsible && depth(path) > d {
                let prefix_end = path.match_indices('/').nth(d).map_or(path.len(), |(i, _)| i);
                groups
                    .entry(path[..prefix_end].to_owned())
                    .or_default()
                    .push(path.clone());
            }
        }
        for (prefix, members) in groups {
            if members.len() < collapse_after {
                continue;
            }
            let mut merged = PathUse::default();
            for member in &members {
                if let Some(used) = current.remove(member) {
                    merged.merge(&used);
                }
            }
            current.insert(format!("{prefix}/{ONE_OR_MORE}"), merged);
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(segments: &[&str]) -> Vec<bool> {
        segments
            .iter()
            .map(|s| is_identifier(s, &Templating::default()))
            .collect()
    }

    #[test]
    fn identifiers_are_told_from_names() {
        assert_eq!(
            ids(&[
                "42",
                "0",
                "123e4567-e89b-12d3-a456-426614174000",
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "deadbeefdeadbeef",
                "a1b2c3d",
                "alice@example.com",
                "bob%40example.org",
                "Zx8Qp2LmT7vR4nK9sW1y",
                "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            ]),
            vec![true; 10]
        );
        assert_eq!(
            ids(&[
                "",
                "v1",
                "users",
                "api",
                "release-notes-2024",
                "getting-started-guide-2",
                "index.html",
                "cafe",
                "face-book",
                "@me",
                "user@localhost",
                "UPPERCASEwordsONLY",
            ]),
            vec![false; 12]
        );
    }

    #[test]
    fn templates_replace_identifier_segments_only() {
        let t = Templating::default();
        assert_eq!(template("/users/42/orders/7", &t), "/users/{*}/orders/{*}");
        assert_eq!(template("/", &t), "/");
        assert_eq!(template("/v1/items/", &t), "/v1/items/");
        assert_eq!(
            template("/files/123e4567-e89b-12d3-a456-426614174000/raw", &t),
            "/files/{*}/raw"
        );
    }

    #[test]
    fn paths_that_would_mean_something_else_in_a_policy_are_unusable() {
        assert_eq!(unusable("/items/1"), None);
        for path in ["items", "/a/{b}", "/a*", "/a b", "/a?b=1", "/a\n", "/x/{**}"] {
            assert!(unusable(path).is_some(), "{path:?}");
        }
    }

    fn used(count: u64) -> PathUse {
        PathUse {
            methods: ["GET".to_owned()].into(),
            count,
            distinct: 1,
            first_ms: count,
            last_ms: count,
        }
    }

    #[test]
    fn many_distinct_paths_under_a_prefix_collapse_deepest_first() {
        let mut paths = BTreeMap::new();
        for name in ["a.css", "b.css", "c.css"] {
            paths.insert(format!("/static/css/{name}"), used(1));
        }
        for name in ["a.js", "b.js", "c.js"] {
            paths.insert(format!("/static/js/{name}"), used(2));
        }
        paths.insert("/static".to_owned(), used(5));
        paths.insert("/health".to_owned(), used(5));
        let collapsed = collapse(paths.clone(), 3);
        let keys: Vec<&str> = collapsed.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["/health", "/static", "/static/css/{**}", "/static/js/{**}"]
        );
        assert_eq!(collapsed["/static/css/{**}"].count, 3);
        assert_eq!(collapsed["/static/js/{**}"].distinct, 3);
        // Two collapsed groups are two paths of /static: below the threshold.
        assert!(collapse(paths.clone(), 3).contains_key("/static"));
        // Neither group is large enough alone, the six together are.
        let keys: Vec<String> = collapse(paths.clone(), 4).into_keys().collect();
        assert_eq!(keys, ["/health", "/static", "/static/{**}"]);
        assert_eq!(
            collapse(paths.clone(), 7),
            paths,
            "under the threshold nothing changes"
        );
        // The root is never collapsed, whatever the count.
        let flat: BTreeMap<String, PathUse> = (0..20).map(|i| (format!("/p{i}"), used(1))).collect();
        assert_eq!(collapse(flat.clone(), 3), flat);
        assert_eq!(collapse(flat.clone(), 0), flat);
        // `{**}` covers no empty segment, so such paths stay literal.
        let empty: BTreeMap<String, PathUse> = ["/a/", "/a//b", "/a/x", "/a/y"]
            .iter()
            .map(|p| (p.to_string(), used(1)))
            .collect();
        let keys: Vec<String> = collapse(empty, 2).into_keys().collect();
        assert_eq!(keys, ["/a/", "/a//b", "/a/{**}"]);
    }
}
