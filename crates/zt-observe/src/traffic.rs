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
        self.since_ms.is_none_or(|since| time_ms >= since) && self.until_ms.is_none_or(|until| time_ms < until)
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

/// Every flow of the records added, within a window.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    window: Window,
    flows: HashMap<Flow, Seen>,
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
    /// No traffic yet, counting only records within `window`.
    pub fn new(window: Window) -> Self {
        Self {
            window,
            ..Self::default()
        }
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
        let Some(flow) = Self::flow_of(record) else {
            self.unknown += 1;
            return;
        };
        self.in_window += 1;
        self.flows
            .entry(flow)
            .and_modify(|seen| seen.merge(&Seen::at(record.time_ms)))
            .or_insert_with(|| Seen::at(record.time_ms));
    }

    fn flow_of(record: &Record) -> Option<Flow> {
        let http = match record.protocol.as_str() {
            "http" => true,
            "tcp" => false,
            _ => return None,
        };
        let outcome = match (record.decision.as_str(), record.mode.as_str(), &record.policy) {
            ("ALLOW", _, _) => Outcome::Allowed,
            ("DENY", _, Some(policy)) => Outcome::DeniedBy(policy.clone()),
            ("DENY", "permissive", None) => Outcome::LetThrough,
            ("DENY", "enforce", None) => Outcome::Refused,
            _ => return None,
        };
        let caller = match &record.source_principal {
            Some(principal) => Caller::Principal(principal.clone()),
            None => Caller::Plaintext(record.source_ip.clone().unwrap_or_else(|| "unknown".into())),
        };
        let shadow = match &record.dry_run {
            Some(text) => Some(Shadow::parse(text)?),
            None => None,
        };
        Some(Flow {
            destination: record.destination.clone(),
            port: record.port,
            http,
            caller,
            method: record.method.clone().filter(|_| http),
            path: record.path.clone().filter(|_| http),
            outcome,
            shadow,
        })
    }

    /// The window the records were kept to.
    pub fn window(&self) -> Window {
        self.window
    }

    /// Every distinct flow, in a stable order.
    pub fn flows(&self) -> Vec<(&Flow, &Seen)> {
        let mut flows: Vec<_> = self.flows.iter().collect();
        flows.sort_unstable_by(|a, b| a.0.cmp(b.0));
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
    pub(crate) fn record(time_ms: u64, caller: Option<&str>, destination: &str, method: &str, path: &str) -> Record {
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
        let (flow, seen) = flows[0];
        assert_eq!(flow.caller, Caller::Principal(a.into()));
        assert_eq!(flow.outcome, Outcome::Allowed);
        assert_eq!((seen.count, seen.first_ms, seen.last_ms), (3, 100, 299));
        assert_eq!(flows[1].0.caller, Caller::Plaintext("127.0.0.1".into()));
        assert_eq!(flows[1].0.outcome, Outcome::DeniedBy("shop/no-posts".into()));
        assert_eq!(traffic.span_ms(), Some((100, 299)));
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
        assert_eq!(Traffic::flow_of(&let_through), None, "an unknown shadow verdict is not guessed");
        let mut tcp = record(1, Some("spiffe://td/a"), "ns/b", "GET", "/");
        tcp.protocol = "tcp".into();
        let flow = Traffic::flow_of(&tcp).unwrap();
        assert_eq!((&flow.method, &flow.path, flow.http), (&None, &None, false));
        assert_eq!(flow.request().protocol, zt_policy::request::Protocol::Tcp);
    }
}
