//! The allow-list stage — who may reach the app at all, before authorization
//! policies decide each request: an allow-list of SPIFFE
//! IDs, each exact or with `*` wildcards (`spiffe://example.org/ns/*/sa/web`).
//! A `*` matches any run of characters within one path segment, or, alone as the
//! last segment, any rest of the path; it never crosses into the trust domain.

use zt_identity::SpiffeId;

use crate::connection::Peer;
use crate::refusal::Refusal;

/// The allow-list. Empty means nobody: the proxy fails closed.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone)]
struct Pattern {
    trust_domain: String,
    segments: Vec<String>,
}

/// Why a pattern is refused.
#[derive(Debug, thiserror::Error)]
#[error("--allow-spiffe-id {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl AllowList {
    /// Parses the patterns; `*` alone allows every ID of every trusted domain.
    pub fn parse(patterns: &[String]) -> Result<Self, PatternError> {
        let parsed = patterns
            .iter()
            .map(|p| parse_pattern(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { patterns: parsed })
    }

    /// Whether `id` may connect.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        let trust_domain = id.trust_domain().name();
        let segments: Vec<&str> = id.path().split('/').skip(1).collect();
        self.patterns.iter().any(|p| {
            (p.trust_domain == "*" || p.trust_domain == trust_domain)
                && matches_segments(&p.segments, &segments)
        })
    }
}

fn parse_pattern(pattern: &str) -> Result<Pattern, PatternError> {
    let fail = |reason| PatternError {
        pattern: pattern.to_owned(),
        reason,
    };
    if pattern == "*" {
        return Ok(Pattern {
            trust_domain: "*".into(),
            segments: vec!["**".into()],
        });
    }
    let rest = pattern
        .strip_prefix("spiffe://")
        .ok_or_else(|| fail("expected spiffe://trust-domain/path, * wildcards allowed, or * alone"))?;
    let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if trust_domain.contains('*') {
        return Err(fail("the trust domain may not contain *"));
    }
    // Checked as an ID with every * replaced by a valid character.
    if SpiffeId::parse(&pattern.replace('*', "x")).is_err() {
        return Err(fail("not a SPIFFE ID once * is replaced"));
    }
    let mut segments: Vec<String> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').map(str::to_owned).collect()
    };
    if segments.last().is_some_and(|s| s == "*") {
        segments.pop();
        segments.push("**".into());
    }
    Ok(Pattern {
        trust_domain: trust_domain.to_owned(),
        segments,
    })
}

fn matches_segments(pattern: &[String], id: &[&str]) -> bool {
    match (pattern.split_first(), id.split_first()) {
        (Some((last, [])), _) if last == "**" => !id.is_empty(),
        (Some((p, pattern_rest)), Some((s, id_rest))) => {
            glob(p, s) && matches_segments(pattern_rest, id_rest)
        }
        (None, None) => true,
        _ => false,
    }
}

/// `*` as any run of characters in one segment.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    let (last, middle) = parts.split_last().unwrap_or((&"", &[]));
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// The allow-list stage: a peer whose SPIFFE ID is not on the list (checked
/// once per connection) gets 403 for every request.
pub(crate) fn check(peer: &Peer) -> Result<(), Refusal> {
    if peer.allowed {
        Ok(())
    } else {
        Err(Refusal::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(patterns: &[&str], id: &str) -> bool {
        let list = AllowList::parse(&patterns.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>()).unwrap();
        list.allows(&SpiffeId::parse(id).unwrap())
    }

    #[test]
    fn exact_segment_and_tail_wildcards() {
        assert!(allows(&["spiffe://example.org/web"], "spiffe://example.org/web"));
        assert!(!allows(
            &["spiffe://example.org/web"],
            "spiffe://example.org/web/x"
        ));
        assert!(!allows(&["spiffe://example.org/web"], "spiffe://other.org/web"));
        assert!(allows(
            &["spiffe://example.org/ns/*/sa/web"],
            "spiffe://example.org/ns/prod/sa/web"
        ));
        assert!(!allows(
            &["spiffe://example.org/ns/*/sa/web"],
            "spiffe://example.org/ns/a/b/sa/web"
        ));
        assert!(allows(
            &["spiffe://example.org/ns/prod/*"],
            "spiffe://example.org/ns/prod/sa/x"
        ));
        assert!(!allows(
            &["spiffe://example.org/ns/prod/*"],
            "spiffe://example.org/ns/prod"
        ));
        assert!(allows(
            &["spiffe://example.org/svc-*-v2"],
            "spiffe://example.org/svc-billing-v2"
        ));
        assert!(!allows(
            &["spiffe://example.org/svc-*-v2"],
            "spiffe://example.org/svc-billing-v3"
        ));
        assert!(allows(&["*"], "spiffe://any.org/x"));
        assert!(
            !allows(&[], "spiffe://example.org/web"),
            "an empty list allows nobody"
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "example.org/web",
            "spiffe://*.org/web",
            "spiffe://Example.org/web",
            "spiffe://example.org/a//b",
        ] {
            assert!(AllowList::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
