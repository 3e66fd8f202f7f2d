//! `fw explain`: which rule decides a packet, computed from the compiled
//! tables (`CompiledPhase::lookup`, the lookup the kernel does), so it shows
//! what is enforced rather than what the policy text suggests.
//!
//! Public API:
//! * [`parse_query`]`(text, direction) -> Result<Vec<Query>, QueryError>`:
//!   `DEST[:PORT][/PROTO]`, one query per address (a host name is resolved
//!   with the system resolver; [`parse_query_with_resolver`] takes another);
//! * [`explain`]`(&CompiledPhase, &Query) -> Explanation`;
//! * [`explain_name`] (a name a name rule matches: no DNS needed) and
//!   [`explain_learned`] (an address the DNS proxy learned);
//! * [`Explanation::render_text`] and [`Explanation::to_json`].
//!
//! Query syntax: `203.0.113.5:443/tcp`, `[2001:db8::1]:443/tcp`,
//! `2001:db8::1` (bare IPv6, no port), `hooks.example.com:8443`,
//! `203.0.113.5/icmp` (echo request), `203.0.113.5:3/icmp` (type 3 code 0).
//! With a port and no protocol the protocol is tcp; with neither, the packet
//! is of a protocol no rule names (number 0, port 0), which only rules with
//! `proto: any` match. With `--inbound` (direction inbound) DEST is the peer
//! that connects and PORT the local port.

use std::net::IpAddr;

use fw_common::{
    policy::proto::{ICMP, ICMPV6, TCP},
    Action, Direction,
};
use serde::Serialize;

use fw_common::names::name_class;

use crate::{
    policy::compile::tables::{CompiledPhase, TableVerdict},
    policy::{
        names::{normalize, NameRules},
        protocols::{is_icmp, protocol_name},
        system_resolve, Resolve,
    },
};

/// One packet to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub direction: Direction,
    /// The peer: destination on egress, source on inbound.
    pub address: IpAddr,
    pub proto: u8,
    /// Port, or `type << 8 | code` for ICMP, 0 for protocols without ports.
    pub port: u16,
    /// The name the address was resolved from, if any.
    pub host: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("`{query}`: {problem} (expected DEST[:PORT][/PROTO], e.g. 203.0.113.5:443/tcp or [2001:db8::1]:443/tcp)")]
    Syntax { query: String, problem: String },
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve { host: String, reason: String },
}

/// How the verdict was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKind {
    /// A rule's entry matched.
    Rule,
    /// A name rule: the addresses DNS answers for the name (`fw explain
    /// NAME` of a name a rule's pattern matches), or an address the DNS
    /// proxy learned for one (`fw explain ADDR --name`).
    Name,
    /// No entry: the phase default decided.
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`: what the policy decides (in audit mode a denied
    /// packet still passes; see `audit`).
    #[serde(serialize_with = "serialize_action")]
    pub verdict: Action,
    /// Name of the deciding rule, `None` when the default decided.
    pub rule: Option<String>,
    pub rule_id: Option<u32>,
    pub phase: String,
    #[serde(serialize_with = "serialize_direction")]
    pub direction: Direction,
    #[serde(rename = "match")]
    pub match_kind: MatchKind,
    /// nft-style trace: `runtime:egress:rule:webhook:ALLOW`,
    /// `runtime:egress:default:DROP`.
    pub trace: String,
    /// The peer's address; `None` when a name was explained by its rule
    /// (whatever DNS answers for it).
    pub address: Option<IpAddr>,
    pub host: Option<String>,
    /// [`MatchKind::Name`]: the names the address was learned for, or the
    /// name explained.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learned_for: Vec<String>,
    /// Protocol name (or number).
    pub proto: String,
    pub port: u16,
    /// The phase is in audit mode: a deny is counted, not enforced.
    pub audit: bool,
    /// The packet opens a flow (the policy passes it, or audit mode does,
    /// and it is one that opens flows: not an ICMP error): its replies
    /// pass. An allowing phase default opens flows as a rule does: the
    /// kernel and explain agree that "inbound_default: allow" serves.
    pub opens_flow: bool,
}

fn serialize_action<S: serde::Serializer>(action: &Action, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(action.as_str())
}

fn serialize_direction<S: serde::Serializer>(direction: &Direction, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(direction.as_str())
}

/// Parses a query, resolving a host name with the system resolver.
pub fn parse_query(text: &str, direction: Direction) -> Result<Vec<Query>, QueryError> {
    parse_query_with_resolver(text, direction, &system_resolve)
}

pub fn parse_query_with_resolver(
    text: &str,
    direction: Direction,
    resolve: &Resolve,
) -> Result<Vec<Query>, QueryError> {
    let (dest, proto, port) = parse_target(text)?;
    let (addresses, host) = match dest.parse::<IpAddr>() {
        Ok(addr) => (vec![addr], None),
        Err(_) => {
            let mut addrs = resolve(&dest).map_err(|reason| QueryError::Resolve { host: dest.to_string(), reason })?;
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(QueryError::Resolve { host: dest.to_string(), reason: "no addresses".into() });
            }
            (addrs, Some(dest.to_string()))
        }
    };
    Ok(addresses.into_iter().map(|address| Query { direction, address, proto, port, host: host.clone() }).collect())
}

/// `DEST[:PORT][/PROTO]` without resolving: (destination as written,
/// protocol number, port or `type << 8 | code`).
pub fn parse_target(text: &str) -> Result<(String, u8, u16), QueryError> {
    let syntax = |problem: &str| QueryError::Syntax { query: text.to_string(), problem: problem.to_string() };

    // `/PROTO` comes last; a bare IPv6 address has no slash, so the last
    // slash is always the protocol's.
    let (target, proto_text) = match text.rsplit_once('/') {
        Some((target, proto)) => (target, Some(proto)),
        None => (text, None),
    };
    let (dest, port_text) = split_port(target).ok_or_else(|| syntax("unbalanced brackets around an IPv6 address"))?;
    if dest.is_empty() {
        return Err(syntax("no destination"));
    }

    let proto = match proto_text {
        Some(p) => match p.to_ascii_lowercase().as_str() {
            "any" => 0,
            "tcp" => TCP,
            "udp" => fw_common::policy::proto::UDP,
            "sctp" => fw_common::policy::proto::SCTP,
            "icmp" => ICMP,
            "icmpv6" => ICMPV6,
            _ => return Err(syntax("unknown protocol (tcp, udp, sctp, icmp, icmpv6, any)")),
        },
        None if port_text.is_some() => TCP,
        None => 0,
    };
    let port = match (port_text, proto) {
        (None, ICMP) => 8 << 8,     // echo request
        (None, ICMPV6) => 128 << 8, // echo request
        (None, _) => 0,
        (Some(_), 0) => return Err(syntax("a port needs a protocol with ports, not `any`")),
        (Some(t), p) if is_icmp(p) => {
            let icmp_type: u8 = t.parse().map_err(|_| syntax("ICMP type must be 0-255"))?;
            u16::from(icmp_type) << 8
        }
        (Some(t), _) => t.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| syntax("port must be 1-65535"))?,
    };
    Ok((dest.to_string(), proto, port))
}

/// `[v6]:port`, `[v6]`, `v6`, `v4:port`, `name:port`, `name`.
fn split_port(target: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = target.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        return match after {
            "" => Some((addr, None)),
            _ => after.strip_prefix(':').map(|port| (addr, Some(port))),
        };
    }
    if target.parse::<IpAddr>().is_ok() || target.matches(':').count() != 1 {
        return Some((target, None));
    }
    target.split_once(':').map(|(d, p)| (d, Some(p)))
}

/// Explains one packet against one compiled phase.
pub fn explain(phase: &CompiledPhase, query: &Query) -> Explanation {
    let verdict = phase.lookup(query.direction, query.address, query.proto, query.port);
    let rule = verdict.rule().and_then(|id| phase.rules.get(id as usize)).map(|r| r.name.clone());
    let (match_kind, step) = match (&verdict, &rule) {
        (TableVerdict::Rule(_), Some(name)) => (MatchKind::Rule, format!("rule:{name}")),
        (TableVerdict::Rule(v), None) => (MatchKind::Rule, format!("rule:#{}", v.rule)),
        (TableVerdict::Default(_), _) => (MatchKind::Default, "default".to_string()),
    };
    let action_word = match verdict.action() {
        Action::Allow => "ALLOW",
        Action::Deny => "DROP",
    };
    let passes = verdict.action() == Action::Allow || phase.settings.audit;
    let opens_flow = passes
        && match query.proto {
            ICMP => query.port >> 8 == 8,
            ICMPV6 => query.port >> 8 == 128,
            _ => true,
        };
    Explanation {
        opens_flow,
        verdict: verdict.action(),
        rule,
        rule_id: verdict.rule(),
        phase: phase.phase.clone(),
        direction: query.direction,
        match_kind,
        trace: format!("{}:{}:{step}:{action_word}", phase.phase, query.direction.as_str()),
        address: Some(query.address),
        host: query.host.clone(),
        learned_for: Vec::new(),
        proto: if query.proto == 0 { "any".into() } else { protocol_name(query.proto) },
        port: query.port,
        audit: phase.settings.audit,
    }
}

/// A name as the kernel will judge what DNS answers for it: `None` when no
/// name rule of the phase matches it (then the caller resolves it and
/// explains the addresses). A name rule that lists the port allows it;
/// matching rules that do not leave it to the phase default. (A static
/// rule covering an answered address would decide first: the addresses
/// are not known here.)
pub fn explain_name(phase: &CompiledPhase, rules: &NameRules, name: &str, proto: u8, port: u16) -> Option<Explanation> {
    let normalized = normalize(name);
    let matching = rules.matching(&normalized);
    if matching.is_empty() {
        return None;
    }
    let query = Query {
        direction: Direction::Egress,
        address: IpAddr::from([0, 0, 0, 0]),
        proto,
        port,
        host: Some(name.to_string()),
    };
    Some(judge_learned(phase, &query, &matching, None, vec![normalized]))
}

/// An address the DNS proxy learned for `rules` (answered for `names`),
/// judged as the kernel does when no static rule decides it (`explain`
/// gave the phase default): the first of those rules that lists the
/// port and protocol allows it.
pub fn explain_learned(phase: &CompiledPhase, query: &Query, rules: &[u32], names: Vec<String>) -> Option<Explanation> {
    let plain = explain(phase, query);
    (plain.match_kind == MatchKind::Default && query.direction == Direction::Egress)
        .then(|| judge_learned(phase, query, rules, Some(query.address), names))
}

fn judge_learned(
    phase: &CompiledPhase,
    query: &Query,
    rules: &[u32],
    address: Option<IpAddr>,
    names: Vec<String>,
) -> Explanation {
    let allowing = rules
        .iter()
        .filter_map(|&id| phase.lookup_class(name_class(id), query.proto, query.port))
        .find(|v| v.action() == Action::Allow);
    let mut e = match allowing {
        Some(value) => {
            let rule = phase.rules.get(value.rule as usize).map(|r| r.name.clone());
            let step = rule.clone().unwrap_or_else(|| format!("#{}", value.rule));
            Explanation {
                verdict: Action::Allow,
                rule,
                rule_id: Some(value.rule),
                phase: phase.phase.clone(),
                direction: Direction::Egress,
                match_kind: MatchKind::Name,
                trace: format!("{}:egress:name:{step}:ALLOW", phase.phase),
                address,
                host: query.host.clone(),
                learned_for: Vec::new(),
                proto: if query.proto == 0 { "any".into() } else { protocol_name(query.proto) },
                port: query.port,
                audit: phase.settings.audit,
                opens_flow: true,
            }
        }
        // The name rule does not list this port: the default decides, as
        // for any address no rule matches.
        None => explain(phase, &Query { address: IpAddr::from([0, 0, 0, 0]), ..query.clone() }),
    };
    if allowing.is_none() {
        e.address = address;
        e.host = query.host.clone();
        if e.match_kind == MatchKind::Rule {
            // 0.0.0.0 hit a static rule: not what a learned address means.
            let default = phase.settings.egress_default;
            e.verdict = default;
            e.rule = None;
            e.rule_id = None;
            e.match_kind = MatchKind::Default;
            e.trace =
                format!("{}:egress:default:{}", phase.phase, if default == Action::Allow { "ALLOW" } else { "DROP" });
            e.opens_flow = default == Action::Allow || phase.settings.audit;
        }
    }
    e.learned_for = names;
    e
}

impl Explanation {
    /// The trace line, then one line in words.
    pub fn render_text(&self) -> String {
        let peer = match (&self.host, self.address) {
            (Some(host), Some(address)) => format!("{address} ({host})"),
            (Some(host), None) => format!("{host} (whatever DNS answers)"),
            (None, Some(address)) => address.to_string(),
            (None, None) => "-".to_string(),
        };
        let port = match self.proto.as_str() {
            "any" => String::new(),
            "icmp" | "icmpv6" => format!(" type {} code {}", self.port >> 8, self.port & 0xff),
            _ => format!(":{}", self.port),
        };
        let arrow = match self.direction {
            Direction::Egress => format!("to {peer}{port}/{}", self.proto),
            Direction::Inbound => format!("from {peer} to local{port}/{}", self.proto),
        };
        let by = match (&self.rule, self.rule_id) {
            (Some(name), Some(id)) if self.match_kind == MatchKind::Name && self.address.is_some() => {
                format!("name rule `{name}` (#{id}), learned for {}", self.learned_for.join(", "))
            }
            (Some(name), Some(id)) if self.match_kind == MatchKind::Name => format!("name rule `{name}` (#{id})"),
            (Some(name), Some(id)) => format!("rule `{name}` (#{id})"),
            _ => format!("the phase default ({} {})", self.direction.as_str(), self.verdict.as_str()),
        };
        let audit = if self.audit && self.verdict == Action::Deny { " (audit mode: counted, not dropped)" } else { "" };
        let flow = if self.opens_flow { "; it opens a flow: replies pass" } else { "" };
        format!(
            "{}\n  {} {arrow}: {} by {by}{audit}{flow}\n",
            self.trace,
            self.direction.as_str(),
            self.verdict.as_str()
        )
    }

    /// One JSON object with at least `verdict` and `rule` (name or null).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("Explanation serializes to JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Query {
        let fake =
            |_: &str| -> Result<Vec<IpAddr>, String> { Ok(vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]) };
        let mut queries = parse_query_with_resolver(text, Direction::Egress, &fake).unwrap();
        queries.remove(0)
    }

    #[test]
    fn query_forms() {
        let q = parse("203.0.113.5:443/udp");
        assert_eq!((q.address.to_string(), q.proto, q.port), ("203.0.113.5".into(), 17, 443));
        let q = parse("203.0.113.5:443");
        assert_eq!((q.proto, q.port), (TCP, 443));
        let q = parse("203.0.113.5");
        assert_eq!((q.proto, q.port), (0, 0));
        let q = parse("[2001:db8::1]:443/tcp");
        assert_eq!((q.address.to_string(), q.proto, q.port), ("2001:db8::1".into(), TCP, 443));
        let q = parse("2001:db8::1");
        assert_eq!((q.address.to_string(), q.port), ("2001:db8::1".into(), 0));
        let q = parse("203.0.113.5/icmp");
        assert_eq!((q.proto, q.port), (ICMP, 8 << 8));
        let q = parse("203.0.113.5:3/icmp");
        assert_eq!((q.proto, q.port), (ICMP, 3 << 8));
        let q = parse("localhost:80");
        assert_eq!((q.host.as_deref(), q.address.to_string(), q.port), (Some("localhost"), "127.0.0.1".into(), 80));
    }

    #[test]
    fn query_errors() {
        let fake = |_: &str| -> Result<Vec<IpAddr>, String> { Err("no such host".into()) };
        for bad in
            ["203.0.113.5:0", "203.0.113.5:99999", "203.0.113.5/gre", "[2001:db8::1:443", "203.0.113.5:80/any", ":80"]
        {
            let err = parse_query_with_resolver(bad, Direction::Egress, &fake).unwrap_err();
            assert!(matches!(err, QueryError::Syntax { .. }), "{bad}: {err}");
        }
        let err = parse_query_with_resolver("nowhere.invalid:443", Direction::Egress, &fake).unwrap_err();
        assert_eq!(err.to_string(), "cannot resolve `nowhere.invalid`: no such host");
    }
}
