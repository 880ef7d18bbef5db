//! Observed traffic: decision records (already verified by whoever read them),
//! kept to a time window and folded into distinct flows — who called which
//! workload, how, with what outcome — each with how often and when it was seen.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use zt_audit::Record;

/// The time span whose records count; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// The first millisecond that counts (Unix time).
    pub since_ms: Option<u64>,
    /// The first millisecond that no longer counts.
    pub until_ms: Option<u64>,
}

impl Window {
    /// Whether a record made at `time_ms` is in the window.
    pub fn contains(&self, time_ms: u64) -> bool {
        self.since_ms.is_none_or(|since| time_ms >= since)
            && self.until_ms.is_none_or(|until| time_ms < until)
    }
}

/// Who called.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    /// A verified SPIFFE ID (mTLS).
    Principal(String),
    /// No verified identity (plaintext, permissive mode): only an address,
    /// `unknown` when the record has none.
    Plaintext(String),
}

/// What the policies in force made of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Allowed (by a policy, or because none applied).
    Allowed,
    /// No ALLOW policy matched, and permissive mode let it through: served.
    LetThrough,
    /// No ALLOW policy matched, and it was refused (enforce mode).
    Refused,
    /// A DENY (or CUSTOM) policy, `namespace/name`, denied it, whatever the mode.
    DeniedBy(String),
}

impl Outcome {
    /// Whether the app was given the request.
    pub fn served(&self) -> bool {
        matches!(self, Outcome::Allowed | Outcome::LetThrough)
    }
}

/// What the dry-run (shadow) policies would have decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shadow {
    /// Whether they would have allowed it.
    pub allow: bool,
    /// The deciding policy, `namespace/name`, if one decided.
    pub policy: Option<String>,
}

impl Shadow {
    /// Reads a record's `dry_run` field: `ALLOW ns/name`, `DENY (no policy)`.
    fn parse(text: &str) -> Option<Self> {
        let (verdict, policy) = text.split_once(' ')?;
        let allow = match verdict {
            "ALLOW" => true,
            "DENY" => false,
            _ => return None,
        };
        Some(Self {
            allow,
            policy: (policy != "(no policy)").then(|| policy.to_owned()),
        })
    }
}

/// One distinct flow: everything a policy could match on, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// The workload called: `namespace/app`, or `namespace` when it has no
    /// `app` label.
    pub destination: String,
    /// The port the decision was made for.
    pub port: Option<u16>,
    /// Whether it was an HTTP request (else a TCP connection).
    pub http: bool,
    /// Who called.
    pub caller: Caller,
    /// HTTP method.
    pub method: Option<String>,
    /// HTTP path (normalized, without query).
    pub path: Option<String>,
    /// What the enforced policies made of it.
    pub outcome: Outcome,
    /// What the shadow policies would have made of it, when any applied.
    pub shadow: Option<Shadow>,
}

impl Flow {
    /// The destination's namespace and `app` label.
    pub fn workload(&self) -> (&str, Option<&str>) {
        match self.destination.split_once('/') {
            Some((namespace, app)) => (namespace, Some(app)),
            None => (&self.destination, None),
        }
    }

    /// The flow as a request policies can decide (`zt policy eval`'s shape).
    pub fn request(&self) -> zt_policy::Request {
        let (namespace, app) = self.workload();
        let (principal, ip) = match &self.caller {
            Caller::Principal(principal) => (Some(principal.clone()), None),
            Caller::Plaintext(address) => (None, address.parse::<IpAddr>().ok()),
        };
        zt_policy::Request {
            source: zt_policy::request::Source {
                principal,
                namespace: None,
                ip,
            },
            destination: zt_policy::request::Destination {
                namespace: namespace.to_owned(),
                labels: app
                    .map(|app| BTreeMap::from([("app".to_owned(), app.to_owned())]))
                    .unwrap_or_default(),
                port: self.port,
                ip: None,
            },
            request: match (&self.method, &self.path) {
                (Some(method), Some(path)) if self.http => Some(zt_policy::request::Http {
                    method: method.clone(),
                    path: path.clone(),
                    ..Default::default()
                }),
                _ => None,
            },
            protocol: if self.http {
                zt_policy::request::Protocol::Http
            } else {
                zt_policy::request::Protocol::Tcp
            },
            connection: None,
        }
    }
}

/// How often and when a flow was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Records.
    pub count: u64,
    /// The first, in Unix milliseconds.
    pub first_ms: u64,
    /// The last, in Unix milliseconds.
    pub last_ms: u64,
}

impl Seen {
    fn at(time_ms: u64) -> Self {
        Self {
            count: 1,
            first_ms: time_ms,
            last_ms: time_ms,
        }
    }

    /// Adds `other`'s sightings.
    pub fn merge(&mut self, other: &Seen) {
        self.count += other.count;
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
    }
}

/// Strings seen in records, each kept once and named by its position, so
/// that folding a record into its flow allocates nothing for what was seen
/// before.
#[derive(Debug, Clone, Default)]
struct Interner {
    ids: HashMap<String, u32, foldhash::fast::RandomState>,
    strings: Vec<String>,
}

impl Interner {
    fn id(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        let id = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        self.strings.push(text.to_owned());
        self.ids.insert(text.to_owned(), id);
        id
    }

    fn text(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", String::as_str)
    }
}

/// A [`Flow`] with its strings interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    destination: u32,
    port: Option<u16>,
    http: bool,
    /// The principal's id, or the plaintext caller's address's.
    caller: (bool, u32),
    method: Option<u32>,
    path: Option<u32>,
    /// 0 allowed, 1 let through, 2 refused, 3 denied by the policy `denied_by`.
    outcome: (u8, u32),
    /// Allow, and the policy's id plus one (0: no policy).
    shadow: Option<(bool, u32)>,
}

/// Distinct flows kept at most by default (a few hundred bytes each).
pub const DEFAULT_MAX_FLOWS: usize = 5_000_000;

/// Every flow of the records added, within a window, up to a number of
/// distinct flows (memory is bounded whatever the logs hold).
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    window: Window,
    max_flows: usize,
    /// Records in the window whose flow was new after `max_flows` were kept:
    /// not folded. Non-zero means the traffic is incomplete.
    pub overflow: u64,
    strings: Interner,
    flows: HashMap<FlowKey, Seen, foldhash::fast::RandomState>,
    /// Records read, in the window or not.
    pub records: u64,
    /// Records in the window that are proxies' decisions.
    pub in_window: u64,
    /// Records in the window that a policy decision point made (`zt pdp`):
    /// not traffic between workloads.
    pub not_proxy: u64,
    /// Records in the window that are not understood (an unknown protocol or
    /// decision): counted, never turned into a flow.
    pub unknown: u64,
}

impl Traffic {
    /// No traffic yet, counting only records within `window`, keeping up to
    /// [`DEFAULT_MAX_FLOWS`] distinct flows.
    pub fn new(window: Window) -> Self {
        Self::with_max_flows(window, DEFAULT_MAX_FLOWS)
    }

    /// No traffic yet, keeping up to `max_flows` distinct flows.
    pub fn with_max_flows(window: Window, max_flows: usize) -> Self {
        Self {
            window,
            max_flows,
            ..Self::default()
        }
    }

    /// The most distinct flows kept.
    pub fn max_flows(&self) -> usize {
        self.max_flows
    }

    /// Adds one record.
    pub fn add(&mut self, record: &Record) {
        self.records += 1;
        if !self.window.contains(record.time_ms) {
            return;
        }
        if record.query.is_some() {
            self.not_proxy += 1;
            return;
        }
        let Some(key) = self.key_of(record) else {
            self.unknown += 1;
            return;
        };
        self.in_window += 1;
        if let Some(seen) = self.flows.get_mut(&key) {
            seen.merge(&Seen::at(record.time_ms));
        } else if self.flows.len() < self.max_flows {
            self.flows.insert(key, Seen::at(record.time_ms));
        } else {
            self.overflow += 1;
        }
    }

    fn key_of(&mut self, record: &Record) -> Option<FlowKey> {
        let http = match record.protocol.as_str() {
            "http" => true,
            "tcp" => false,
            _ => return None,
        };
        let outcome = match (record.decision.as_str(), record.mode.as_str(), &record.policy) {
            ("ALLOW", _, _) => (0, 0),
            ("DENY", _, Some(policy)) => (3, self.strings.id(policy)),
            ("DENY", "permissive", None) => (1, 0),
            ("DENY", "enforce", None) => (2, 0),
            _ => return None,
        };
        let shadow = match &record.dry_run {
            Some(text) => {
                let shadow = Shadow::parse(text)?;
                let policy = shadow.policy.as_deref().map_or(0, |p| self.strings.id(p) + 1);
                Some((shadow.allow, policy))
            }
            None => None,
        };
        let caller = match &record.source_principal {
            Some(principal) => (false, self.strings.id(principal)),
            None => (
                true,
                self.strings.id(record.source_ip.as_deref().unwrap_or("unknown")),
            ),
        };
        Some(FlowKey {
            destination: self.strings.id(&record.destination),
            port: record.port,
            http,
            caller,
            method: record
                .method
                .as_deref()
                .filter(|_| http)
                .map(|m| self.strings.id(m)),
            path: record
                .path
                .as_deref()
                .filter(|_| http)
                .map(|p| self.strings.id(p)),
            outcome,
            shadow,
        })
    }

    /// The flow of a record (tests).
    #[cfg(test)]
    pub(crate) fn flow_of(record: &Record) -> Option<Flow> {
        let mut traffic = Traffic::default();
        let key = traffic.key_of(record)?;
        Some(traffic.flow(&key))
    }

    fn flow(&self, key: &FlowKey) -> Flow {
        let text = |id: u32| self.strings.text(id).to_owned();
        Flow {
            destination: text(key.destination),
            port: key.port,
            http: key.http,
            caller: match key.caller {
                (false, id) => Caller::Principal(text(id)),
                (true, id) => Caller::Plaintext(text(id)),
            },
            method: key.method.map(text),
            path: key.path.map(text),
            outcome: match key.outcome {
                (0, _) => Outcome::Allowed,
                (1, _) => Outcome::LetThrough,
                (2, _) => Outcome::Refused,
                (_, id) => Outcome::DeniedBy(text(id)),
            },
            shadow: key.shadow.map(|(allow, policy)| Shadow {
                allow,
                policy: policy.checked_sub(1).map(text),
            }),
        }
    }

    /// The window the records were kept to.
    pub fn window(&self) -> Window {
        self.window
    }

    /// How many distinct flows were seen.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow was seen.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Every distinct flow, in no particular order.
    pub fn each_flow(&self) -> impl Iterator<Item = (Flow, Seen)> + '_ {
        self.flows.iter().map(|(key, seen)| (self.flow(key), *seen))
    }

    /// Every distinct flow, in a stable order.
    pub fn flows(&self) -> Vec<(Flow, Seen)> {
        let mut flows: Vec<_> = self.each_flow().collect();
        flows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        flows
    }

    /// The earliest and latest record in the window, if any.
    pub fn span_ms(&self) -> Option<(u64, u64)> {
        self.flows.values().fold(None, |span, seen| match span {
            None => Some((seen.first_ms, seen.last_ms)),
            Some((first, last)) => Some((first.min(seen.first_ms), last.max(seen.last_ms))),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A proxy's decision record, as `zt proxy` writes it (chain fields empty).
    pub(crate) fn record(
        time_ms: u64,
        caller: Option<&str>,
        destination: &str,
        method: &str,
        path: &str,
    ) -> Record {
        Record {
            seq: 0,
            time_ms,
            id: String::new(),
            source_principal: caller.map(str::to_owned),
            source_ip: Some("127.0.0.1".into()),
            destination: destination.into(),
            port: Some(15006),
            protocol: "http".into(),
            method: Some(method.into()),
            host: Some("svc".into()),
            path: Some(path.into()),
            decision: "ALLOW".into(),
            mode: "permissive".into(),
            policy: None,
            reason: String::new(),
            policy_version: "v1".into(),
            eval_ns: 0,
            dry_run: None,
            audit: None,
            query: None,
            input: None,
            result: None,
            revision: None,
            request_principal: None,
            prev: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn records_fold_into_flows_within_the_window() {
        let mut traffic = Traffic::new(Window {
            since_ms: Some(100),
            until_ms: Some(300),
        });
        let a = "spiffe://td/ns/web/sa/frontend";
        for time in [50, 100, 150, 299, 300] {
            traffic.add(&record(time, Some(a), "shop/cart", "GET", "/items"));
        }
        let mut denied = record(200, None, "shop/cart", "POST", "/items");
        denied.decision = "DENY".into();
        denied.policy = Some("shop/no-posts".into());
        traffic.add(&denied);
        let mut pdp = record(200, None, "authz", "", "");
        pdp.query = Some("authz/allow".into());
        traffic.add(&pdp);

        assert_eq!((traffic.records, traffic.in_window, traffic.not_proxy), (7, 4, 1));
        let flows = traffic.flows();
        assert_eq!(flows.len(), 2);
        let (flow, seen) = &flows[0];
        assert_eq!(flow.caller, Caller::Principal(a.into()));
        assert_eq!(flow.outcome, Outcome::Allowed);
        assert_eq!((seen.count, seen.first_ms, seen.last_ms), (3, 100, 299));
        assert_eq!(flows[1].0.caller, Caller::Plaintext("127.0.0.1".into()));
        assert_eq!(flows[1].0.outcome, Outcome::DeniedBy("shop/no-posts".into()));
        assert_eq!(traffic.span_ms(), Some((100, 299)));
    }

    #[test]
    fn distinct_flows_beyond_the_limit_are_counted_not_kept() {
        let mut traffic = Traffic::with_max_flows(Window::default(), 2);
        for path in ["/a", "/b", "/c", "/a", "/d"] {
            traffic.add(&record(1, Some("spiffe://td/x"), "ns/app", "GET", path));
        }
        assert_eq!((traffic.len(), traffic.overflow, traffic.in_window), (2, 2, 5));
        assert_eq!(traffic.flows()[0].1.count, 2, "a kept flow still counts");
    }

    #[test]
    fn outcomes_and_shadow_decisions_are_read_from_the_record() {
        let mut let_through = record(1, Some("spiffe://td/a"), "ns/b", "GET", "/");
        let_through.decision = "DENY".into();
        let_through.dry_run = Some("DENY (no policy)".into());
        let flow = Traffic::flow_of(&let_through).unwrap();
        assert_eq!(flow.outcome, Outcome::LetThrough);
        assert!(flow.outcome.served());
        assert_eq!(
            flow.shadow,
            Some(Shadow {
                allow: false,
                policy: None
            })
        );
        let_through.mode = "enforce".into();
        assert_eq!(Traffic::flow_of(&let_through).unwrap().outcome, Outcome::Refused);
        let_through.dry_run = Some("MAYBE x".into());
        assert_eq!(
            Traffic::flow_of(&let_through),
            None,
            "an unknown shadow verdict is not guessed"
        );
        let mut tcp = record(1, Some("spiffe://td/a"), "ns/b", "GET", "/");
        tcp.protocol = "tcp".into();
        let flow = Traffic::flow_of(&tcp).unwrap();
        assert_eq!((&flow.method, &flow.path, flow.http), (&None, &None, false));
        assert_eq!(flow.request().protocol, zt_policy::request::Protocol::Tcp);
    }
}
