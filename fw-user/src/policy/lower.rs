//! Raw policy -> validated IR: expands variables, resolves names and
//! address sets, parses protocols and ports, orders rules by file position
//! and gives them their ids, resolves `extends`. Every rejection is a
//! [`PolicyError`] at the position of the offending value; everything
//! accepted but suspicious is a [`Warning`].

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use fw_common::Action;
use ipnet::IpNet;

use super::{
    address::{parse_peer, Peer},
    error::{ErrorKind, PolicyError, Warning},
    ir::{
        merge_ranges, DnsSettings, Phase, Policy, PortRange, Pos, ProtoPorts, Protocols, Refusal, Resolver, Rule,
        DEFAULT_MAX_PER_NAME, DEFAULT_MAX_TOTAL, DEFAULT_MIN_TTL,
    },
    names::NamePattern,
    protocols::{is_icmp, parse_icmp_entry, parse_port_entry, parse_protocol, protocol_name},
    raw::{RawDns, RawPhase, RawPolicy, RawRule, Text, TextList},
    vars::{ExpandError, Vars},
    Resolve,
};
use crate::policy::compile::tables::PhaseSettings;
use fw_common::{flow::timeouts, FlowTimeouts};

/// A timeout: `90`, `90s`, `10m`, `2h` or `5d`, from a second to a year.
pub(crate) fn parse_timeout(text: &str) -> Result<u32, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_seconds: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("expected a duration like 30s, 10m, 2h or 5d".into()),
    };
    let bounds = || format!("out of bounds (from {}s to {}d)", timeouts::MIN, timeouts::MAX / 86_400);
    let n: u64 = number.parse().map_err(|_| {
        if number.is_empty() {
            "expected a duration like 30s, 10m, 2h or 5d".to_string()
        } else {
            bounds()
        }
    })?;
    match n.checked_mul(unit_seconds) {
        Some(s) if (u64::from(timeouts::MIN)..=u64::from(timeouts::MAX)).contains(&s) => Ok(s as u32),
        _ => Err(bounds()),
    }
}

/// A rule's peers: its CIDRs, its names tracked at run time, and the ports
/// its URL entries imply.
type RulePeers = (Vec<IpNet>, Vec<NamePattern>, Vec<u16>);

pub(crate) fn lower(
    file: &str,
    raw: RawPolicy,
    vars: &Vars,
    resolve: &Resolve,
) -> Result<(Policy, Vec<Warning>), PolicyError> {
    let mut lowerer =
        Lowerer { file, vars, resolve, warnings: Vec::new(), sets: HashMap::new(), dns_phases: HashSet::new() };
    let policy = lowerer.policy(raw)?;
    Ok((policy, lowerer.warnings))
}

/// Phases every policy may extend without defining them (`extends:
/// essentials`), by name, with the label their diagnostics carry and their
/// text: `policies/essentials.yaml`, compiled in.
pub(crate) const BUILTIN_PHASES: &[(&str, &str, &str)] =
    &[("essentials", "builtin:essentials", include_str!("../../../policies/essentials.yaml"))];

/// The builtin phases `phases` extend and do not define themselves, with
/// their labels. A builtin's text is fixed at build time (a test loads
/// each); an error in it is still reported under its label, not hidden.
fn builtin_phases_extended(phases: &[RawPhase]) -> Result<Vec<(&'static str, RawPhase)>, PolicyError> {
    let defined = |name: &str| phases.iter().any(|p| p.name.value == name);
    let mut found = Vec::new();
    for &(name, label, text) in BUILTIN_PHASES {
        let extended = phases.iter().any(|p| p.extends.as_ref().is_some_and(|e| e.value == name));
        if !extended || defined(name) {
            continue;
        }
        let raw = super::raw::parse(label, text)?;
        found.extend(raw.phases.into_iter().filter(|p| p.name.value == name).map(|p| (label, p)));
    }
    Ok(found)
}

/// Why a rule did not make it into the policy.
enum RuleProblem {
    /// The whole policy is rejected.
    Fatal(PolicyError),
    /// The rule is `optional` and something it needs is missing: it is left
    /// out (it keeps its id and matches nothing) with a warning.
    LeftOut { pos: Pos, reason: String },
}

impl From<PolicyError> for RuleProblem {
    fn from(e: PolicyError) -> Self {
        RuleProblem::Fatal(e)
    }
}

struct Lowerer<'a> {
    file: &'a str,
    vars: &'a Vars,
    resolve: &'a Resolve,
    warnings: Vec<Warning>,
    /// Named address sets, resolved.
    sets: HashMap<String, Vec<IpNet>>,
    /// Phases with `dns:`, their own or inherited: there, names in egress
    /// allow rules are tracked at run time instead of resolved now.
    dns_phases: HashSet<String>,
}

/// What a rule is, for the decision whether its names are tracked at run
/// time.
struct RuleContext<'a> {
    phase: &'a str,
    optional: bool,
    /// An egress allow rule in a phase with `dns:`.
    tracks_names: bool,
    /// Why names cannot be tracked here, if the phase has `dns:` but the
    /// rule is not an egress allow rule.
    not_tracked_in: Option<&'static str>,
}

fn any_address() -> Vec<IpNet> {
    vec![IpNet::V4(Default::default()), IpNet::V6(Default::default())]
}

impl Lowerer<'_> {
    fn error(&self, pos: Pos, kind: ErrorKind) -> PolicyError {
        PolicyError::new(self.file, pos, kind)
    }

    fn warn(&mut self, pos: Pos, code: &'static str, message: String) {
        self.warnings.push(Warning::new(self.file, pos, code, message));
    }

    /// Expands variables where an unset one is always an error.
    fn expand(&self, text: &Text) -> Result<String, PolicyError> {
        self.vars.expand(&text.value).map_err(|e| self.expand_error(text, e))
    }

    fn expand_error(&self, text: &Text, error: ExpandError) -> PolicyError {
        match error {
            ExpandError::Unset(name) => self.error(text.pos, ErrorKind::UnsetVariable(name)),
            ExpandError::Malformed => self.error(text.pos, ErrorKind::MalformedVariable(text.value.clone())),
            ExpandError::BadList { name, problem } => {
                self.error(text.pos, ErrorKind::BadListVariable { name, problem })
            }
        }
    }

    /// Expands variables in a rule: an unset one leaves an optional rule out.
    fn expand_in_rule(&self, text: &Text, optional: bool) -> Result<String, RuleProblem> {
        match self.vars.expand(&text.value) {
            Ok(v) => Ok(v),
            Err(ExpandError::Unset(name)) if optional => {
                Err(RuleProblem::LeftOut { pos: text.pos, reason: format!("variable `{name}` is not set") })
            }
            Err(e) => Err(RuleProblem::Fatal(self.expand_error(text, e))),
        }
    }

    /// [`Self::expand_in_rule`] for a peer entry, which may hold a list.
    fn expand_list_in_rule(&self, text: &Text, optional: bool) -> Result<Vec<String>, RuleProblem> {
        match self.vars.expand_list(&text.value) {
            Ok(v) => Ok(v),
            Err(ExpandError::Unset(name)) if optional => {
                Err(RuleProblem::LeftOut { pos: text.pos, reason: format!("variable `{name}` is not set") })
            }
            Err(e) => Err(RuleProblem::Fatal(self.expand_error(text, e))),
        }
    }

    fn policy(&mut self, raw: RawPolicy) -> Result<Policy, PolicyError> {
        let name = match &raw.name {
            Some(text) => self.expand(text)?,
            None => std::path::Path::new(self.file).file_stem().map_or("policy".into(), |s| s.to_string_lossy().into()),
        };
        // Two sets of the same name would be a duplicate YAML key, which the
        // YAML reader already rejects.
        for (set_name, entries) in &raw.addresses {
            let nets = self.address_set(entries)?;
            self.sets.insert(set_name.value.clone(), nets);
        }
        if raw.phases.is_empty() {
            return Err(self.error(raw.phases_pos, ErrorKind::NoPhases));
        }
        let file = self.file;
        let builtin = builtin_phases_extended(&raw.phases)?;
        let mut phases = raw.phases.iter().map(|p| self.phase(p)).collect::<Result<Vec<_>, _>>()?;
        for (label, phase) in &builtin {
            self.file = label;
            phases.push(self.phase(phase)?);
        }
        self.file = file;
        let all_raw: Vec<&RawPhase> = raw.phases.iter().chain(builtin.iter().map(|(_, p)| p)).collect();
        self.check_extends(&all_raw)?;
        for phase in &phases {
            let mut at = Some(phase);
            // check_extends ruled out cycles.
            while let Some(p) = at {
                if p.dns.is_some() {
                    self.dns_phases.insert(phase.name.clone());
                    break;
                }
                at = p.extends.as_ref().and_then(|e| phases.iter().find(|q| &q.name == e));
            }
        }

        // File order is textual position, whichever phase or direction a
        // rule is written under.
        // The rules of builtin phases come after the file's (their ids
        // too), each builtin in its own file order.
        let mut raw_rules: Vec<(&str, &str, &RawRule)> =
            raw.phases.iter().flat_map(|p| p.rules.iter().map(move |r| (file, p.name.value.as_str(), r))).collect();
        raw_rules.sort_by_key(|(_, _, r)| r.pos);
        for (label, phase) in &builtin {
            let start = raw_rules.len();
            raw_rules.extend(phase.rules.iter().map(|r| (*label, phase.name.value.as_str(), r)));
            raw_rules[start..].sort_by_key(|(_, _, r)| r.pos);
        }

        let mut first_line_of_name: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(raw_rules.len());
        for (id, (label, phase, raw_rule)) in raw_rules.into_iter().enumerate() {
            self.file = label;
            let rule = self.rule(id as u32, phase, raw_rule)?;
            if let Some(&first_line) = first_line_of_name.get(&rule.name) {
                let name_pos = raw_rule.name.as_ref().map_or(raw_rule.pos, |n| n.pos);
                return Err(self.error(name_pos, ErrorKind::DuplicateRuleName { name: rule.name, first_line }));
            }
            first_line_of_name.insert(rule.name.clone(), raw_rule.pos.line);
            rules.push(rule);
        }
        self.file = file;
        Ok(Policy { name, file: self.file.to_string(), phases, rules })
    }

    fn address_set(&mut self, entries: &TextList) -> Result<Vec<IpNet>, PolicyError> {
        if entries.items.is_empty() {
            return Err(self.error(entries.key_pos, ErrorKind::EmptyList { key: "addresses" }));
        }
        let mut nets = Vec::new();
        for item in &entries.items {
            let values = self.vars.expand_list(&item.value).map_err(|e| self.expand_error(item, e))?;
            for value in values {
                match parse_peer(&value).map_err(|kind| self.error(item.pos, kind))? {
                    Peer::Url { .. } => return Err(self.error(item.pos, ErrorKind::BadAddress(value))),
                    Peer::Wildcard(name) => {
                        return Err(self.error(
                            item.pos,
                            ErrorKind::NameInWrongRule { name, what: "address sets (write it in the rule's `to:`)" },
                        ))
                    }
                    peer => match self.peer_nets(item.pos, peer, false) {
                        Ok(found) => nets.extend(found),
                        Err(RuleProblem::Fatal(e)) => return Err(e),
                        Err(RuleProblem::LeftOut { .. }) => unreachable!("not optional"),
                    },
                }
            }
        }
        Ok(nets)
    }

    fn phase(&self, raw: &RawPhase) -> Result<Phase, PolicyError> {
        let setting =
            |text: &Option<Text>, key: &'static str, expected: &'static str, default: bool, words: &[(&str, bool)]| {
                let Some(text) = text else { return Ok(default) };
                let value = self.expand(text)?;
                words
                    .iter()
                    .find(|(w, _)| *w == value)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| self.error(text.pos, ErrorKind::InvalidValue { key, value, expected }))
            };
        const DEFAULTS: &[(&str, bool)] = &[("allow", true), ("drop", false), ("deny", false)];
        let egress_allows = setting(&raw.egress_default, "egress_default", "allow or drop", false, DEFAULTS)?;
        let inbound_allows = setting(&raw.inbound_default, "inbound_default", "allow or drop", true, DEFAULTS)?;
        let audit = setting(&raw.mode, "mode", "enforce or audit", false, &[("enforce", false), ("audit", true)])?;
        let reject = setting(&raw.reject, "reject", "true or false", true, &[("true", true), ("false", false)])?;
        let dns = raw.dns.as_ref().map(|d| self.dns(&raw.name.value, d)).transpose()?;
        let action = |allows: bool| if allows { Action::Allow } else { Action::Deny };
        let timeouts = self.timeouts(&raw.timeouts)?;
        Ok(Phase {
            name: raw.name.value.clone(),
            extends: raw.extends.as_ref().map(|e| e.value.clone()),
            settings: PhaseSettings {
                egress_default: action(egress_allows),
                inbound_default: action(inbound_allows),
                audit,
                reject,
                timeouts,
            },
            dns,
            pos: raw.name.pos,
        })
    }

    /// `dns:` of a phase. `resolvers` is required: a phase that tracks
    /// names must say where answers come from.
    fn dns(&self, phase: &str, raw: &RawDns) -> Result<DnsSettings, PolicyError> {
        let Some(list) = &raw.resolvers else {
            return Err(self.error(raw.key_pos, ErrorKind::MissingKey { key: "resolvers", context: "`dns`".into() }));
        };
        if list.items.is_empty() {
            return Err(self.error(list.key_pos, ErrorKind::EmptyList { key: "resolvers" }));
        }
        let mut resolvers = Vec::new();
        for item in &list.items {
            let value = self.expand(item)?;
            // A variable may hold several addresses (`8.8.8.8,1.1.1.1`).
            for word in value.split([',', ' ', '\t']).filter(|w| !w.is_empty()) {
                resolvers.push(match word {
                    "system" => Resolver::System,
                    _ => Resolver::Addr(
                        word.parse().map_err(|_| self.error(item.pos, ErrorKind::BadResolver(word.to_string())))?,
                    ),
                });
            }
        }
        resolvers.sort();
        resolvers.dedup();
        let count = |v4: bool| resolvers.iter().filter(|r| matches!(r, Resolver::Addr(a) if a.is_ipv4() == v4)).count();
        for (v4, family, max) in
            [(true, "IPv4", fw_common::names::MAX_RESOLVERS4), (false, "IPv6", fw_common::names::MAX_RESOLVERS6)]
        {
            if count(v4) > max {
                let kind = ErrorKind::TooManyResolvers { phase: phase.to_string(), family, count: count(v4), max };
                return Err(self.error(list.key_pos, kind));
            }
        }
        let only_policy_names = match &raw.queries {
            None => false,
            Some(text) => match self.expand(text)?.as_str() {
                "any" => false,
                "policy" => true,
                other => {
                    let kind =
                        ErrorKind::InvalidValue { key: "queries", value: other.to_string(), expected: "any or policy" };
                    return Err(self.error(text.pos, kind));
                }
            },
        };
        let refuse_with = match &raw.refuse_with {
            None => Refusal::Refused,
            Some(text) => match self.expand(text)?.as_str() {
                "refused" => Refusal::Refused,
                "nxdomain" => Refusal::NxDomain,
                other => {
                    let kind = ErrorKind::InvalidValue {
                        key: "refuse_with",
                        value: other.to_string(),
                        expected: "refused or nxdomain",
                    };
                    return Err(self.error(text.pos, kind));
                }
            },
        };
        let min_ttl =
            self.dns_number(&raw.min_ttl, "min_ttl", DEFAULT_MIN_TTL, 0, 7 * 86_400, "a number of seconds, 0-604800")?;
        // Each family's map holds LEARNED_CAPACITY: any total fits.
        const _: () = assert!(fw_common::names::LEARNED_CAPACITY == 131_072, "update the message below");
        let (capacity, expected) = (fw_common::names::LEARNED_CAPACITY, "a number of addresses, 1-131072");
        let max_per_name =
            self.dns_number(&raw.max_per_name, "max_addresses_per_name", DEFAULT_MAX_PER_NAME, 1, capacity, expected)?;
        let max_total = self.dns_number(&raw.max_total, "max_addresses", DEFAULT_MAX_TOTAL, 1, capacity, expected)?;
        Ok(DnsSettings { resolvers, only_policy_names, refuse_with, min_ttl, max_per_name, max_total })
    }

    /// A number of `dns:` (`key`), `default` when absent.
    fn dns_number(
        &self,
        text: &Option<Text>,
        key: &'static str,
        default: u32,
        min: u32,
        max: u32,
        expected: &'static str,
    ) -> Result<u32, PolicyError> {
        let Some(text) = text else { return Ok(default) };
        let value = self.expand(text)?;
        value.parse::<u32>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
            let kind = ErrorKind::InvalidValue { key, value, expected };
            self.error(text.pos, kind)
        })
    }

    /// A phase's `timeouts:`, each unset one at its default.
    fn timeouts(&self, raw: &[(Text, Text)]) -> Result<FlowTimeouts, PolicyError> {
        let mut t = FlowTimeouts::DEFAULT;
        for (key, value) in raw {
            let text = self.expand(value)?;
            let seconds = parse_timeout(&text).map_err(|problem| {
                let kind = ErrorKind::BadTimeout { key: key.value.clone(), value: text.clone(), problem };
                self.error(value.pos, kind)
            })?;
            match key.value.as_str() {
                "tcp_established" => t.tcp_established = seconds,
                "tcp_closing" => t.tcp_closing = seconds,
                "udp" => t.udp = seconds,
                "other" => t.other = seconds,
                _ => unreachable!("raw admitted only TIMEOUT_KEYS"),
            }
        }
        Ok(t)
    }

    /// Every `extends` names a phase, and following them never loops.
    fn check_extends(&self, phases: &[&RawPhase]) -> Result<(), PolicyError> {
        let names: Vec<String> = phases.iter().map(|p| p.name.value.clone()).collect();
        let parent_of: HashMap<&str, &Text> =
            phases.iter().filter_map(|p| p.extends.as_ref().map(|e| (p.name.value.as_str(), e))).collect();
        for phase in phases {
            if let Some(parent) = &phase.extends {
                if !names.contains(&parent.value) {
                    let kind = ErrorKind::UnknownPhase {
                        phase: phase.name.value.clone(),
                        parent: parent.value.clone(),
                        known: names.clone(),
                    };
                    return Err(self.error(parent.pos, kind));
                }
            }
        }
        for phase in phases {
            let mut chain = vec![phase.name.value.as_str()];
            let mut seen: HashSet<&str> = chain.iter().copied().collect();
            while let Some(parent) = parent_of.get(chain[chain.len() - 1]) {
                chain.push(parent.value.as_str());
                if !seen.insert(parent.value.as_str()) {
                    let cycle = chain.iter().map(|s| s.to_string()).collect();
                    return Err(self.error(parent.pos, ErrorKind::ExtendsCycle { cycle }));
                }
            }
        }
        Ok(())
    }

    fn rule(&mut self, id: u32, phase: &str, raw: &RawRule) -> Result<Rule, PolicyError> {
        let Some(name_text) = &raw.name else {
            return Err(self.error(raw.pos, ErrorKind::MissingKey { key: "name", context: "a rule".into() }));
        };
        let name = self.expand(name_text)?;
        let action = match &raw.action {
            None => Action::Allow,
            Some(text) => match self.expand(text)?.as_str() {
                "allow" => Action::Allow,
                "deny" | "drop" => Action::Deny,
                other => {
                    let kind =
                        ErrorKind::InvalidValue { key: "action", value: other.to_string(), expected: "allow or deny" };
                    return Err(self.error(text.pos, kind));
                }
            },
        };
        let optional = raw.optional.is_some_and(|(_, flag)| flag);
        let dns = self.dns_phases.contains(phase);
        let egress = raw.direction == fw_common::Direction::Egress;
        let context = RuleContext {
            phase,
            optional,
            tracks_names: dns && egress && action == Action::Allow,
            not_tracked_in: match (dns, egress, action) {
                (false, ..) | (true, true, Action::Allow) => None,
                (true, false, _) => Some("inbound rules (`from:` names are resolved once, when the policy compiles)"),
                (true, true, Action::Deny) => Some("deny rules"),
            },
        };
        let (peers, names, protocols) = match self.rule_match(raw, &context) {
            Ok(m) => m,
            Err(RuleProblem::Fatal(e)) => return Err(e),
            Err(RuleProblem::LeftOut { pos, reason }) => {
                self.warn(pos, "optional-left-out", format!("optional rule `{name}` left out: {reason}"));
                (Vec::new(), Vec::new(), Protocols::Any)
            }
        };
        Ok(Rule {
            id,
            name,
            phase: phase.to_string(),
            direction: raw.direction,
            action,
            peers,
            names,
            protocols,
            pos: raw.pos,
        })
    }

    /// The addresses, the run-time names and the protocols/ports of a rule.
    fn rule_match(
        &mut self,
        raw: &RawRule,
        context: &RuleContext,
    ) -> Result<(Vec<IpNet>, Vec<NamePattern>, Protocols), RuleProblem> {
        let optional = context.optional;
        let (peers, names, url_ports) = match &raw.peers {
            None => (any_address(), Vec::new(), Vec::new()),
            Some(list) => {
                let key = if raw.direction == fw_common::Direction::Egress { "to" } else { "from" };
                self.rule_peers(key, list, context)?
            }
        };
        let protocols = self.rule_protocols(raw, optional, &url_ports)?;
        let mut peers = peers;
        peers.sort();
        peers.dedup();
        let mut names = names;
        names.sort();
        names.dedup();
        Ok((peers, names, protocols))
    }

    /// Returns the rule's CIDRs, its names tracked at run time and the
    /// ports its URL entries imply.
    fn rule_peers(
        &mut self,
        key: &'static str,
        list: &TextList,
        context: &RuleContext,
    ) -> Result<RulePeers, RuleProblem> {
        let optional = context.optional;
        if list.items.is_empty() {
            return Err(self.error(list.key_pos, ErrorKind::EmptyList { key }).into());
        }
        let mut nets = Vec::new();
        let mut names = Vec::new();
        let mut url_ports = Vec::new();
        let pattern = |this: &Self, pos: Pos, name: &str| -> Result<NamePattern, RuleProblem> {
            NamePattern::parse(name).map_err(|kind| this.error(pos, kind).into())
        };
        for item in &list.items {
            for value in self.expand_list_in_rule(item, optional)? {
                if let Some(set) = self.sets.get(&value) {
                    nets.extend(set.iter().copied());
                    continue;
                }
                match parse_peer(&value).map_err(|kind| self.error(item.pos, kind))? {
                    Peer::Wildcard(name) => {
                        if context.tracks_names {
                            names.push(pattern(self, item.pos, &name)?);
                        } else if let Some(what) = context.not_tracked_in {
                            return Err(self.error(item.pos, ErrorKind::NameInWrongRule { name, what }).into());
                        } else {
                            let kind = ErrorKind::NameNeedsResolvers { name, phase: context.phase.to_string() };
                            return Err(self.error(item.pos, kind).into());
                        }
                    }
                    Peer::Host(host) if context.tracks_names => names.push(pattern(self, item.pos, &host)?),
                    Peer::Url { host, port } => {
                        url_ports.push(port);
                        match host.parse::<IpAddr>() {
                            Ok(addr) => nets.push(IpNet::from(addr)),
                            Err(_) if context.tracks_names => names.push(pattern(self, item.pos, &host)?),
                            Err(_) => nets.extend(self.peer_nets(item.pos, Peer::Host(host), optional)?),
                        }
                    }
                    peer => nets.extend(self.peer_nets(item.pos, peer, optional)?),
                }
            }
        }
        Ok((nets, names, url_ports))
    }

    /// CIDRs of `any`, an address/CIDR or a host name (resolved now).
    fn peer_nets(&mut self, pos: Pos, peer: Peer, optional: bool) -> Result<Vec<IpNet>, RuleProblem> {
        match peer {
            Peer::Any => Ok(any_address()),
            Peer::Net { net, had_host_bits } => {
                if had_host_bits {
                    self.warn(pos, "host-bits", format!("CIDR has host bits set; it means {net}"));
                }
                Ok(vec![net])
            }
            Peer::Host(host) => match (self.resolve)(&host) {
                Ok(addrs) if !addrs.is_empty() => {
                    let mut addrs = addrs;
                    addrs.sort();
                    addrs.dedup();
                    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                    self.warn(
                        pos,
                        "resolved-host",
                        format!(
                            "`{host}` resolved to {}; these addresses are fixed until the next compile \
                             (`dns: {{ resolvers: [...] }}` in the phase tracks the name at run time)",
                            list.join(", ")
                        ),
                    );
                    Ok(addrs.into_iter().map(IpNet::from).collect())
                }
                result => {
                    let reason = result.err().unwrap_or_else(|| "no addresses".into());
                    if optional {
                        Err(RuleProblem::LeftOut { pos, reason: format!("cannot resolve `{host}`: {reason}") })
                    } else {
                        Err(self.error(pos, ErrorKind::UnresolvedHost { host, reason }).into())
                    }
                }
            },
            Peer::Wildcard(_) | Peer::Url { .. } => unreachable!("handled by the callers"),
        }
    }

    fn rule_protocols(&self, raw: &RawRule, optional: bool, url_ports: &[u16]) -> Result<Protocols, RuleProblem> {
        let mut protos: Vec<u8> = Vec::new();
        let mut any_named = false;
        if let Some(list) = &raw.proto {
            if list.items.is_empty() {
                return Err(self.error(list.key_pos, ErrorKind::EmptyList { key: "proto" }).into());
            }
            for item in &list.items {
                let value = self.expand_in_rule(item, optional)?;
                match parse_protocol(&value).map_err(|kind| self.error(item.pos, kind))? {
                    None => any_named = true,
                    Some(p) => protos.push(p),
                }
            }
        } else if !url_ports.is_empty() {
            // A URL endpoint speaks TCP unless the rule says otherwise.
            protos.push(fw_common::policy::proto::TCP);
        }
        protos.sort_unstable();
        protos.dedup();

        if any_named || protos.is_empty() {
            return match &raw.ports {
                None => Ok(Protocols::Any),
                Some(ports) if raw.proto.is_some() => {
                    Err(self.error(ports.key_pos, ErrorKind::PortsWithAnyProtocol).into())
                }
                Some(ports) => Err(self.error(ports.key_pos, ErrorKind::PortsWithoutProtocol).into()),
            };
        }

        let (icmp_protos, port_protos): (Vec<u8>, Vec<u8>) = protos.iter().partition(|&&p| is_icmp(p));
        let names = |list: &[u8]| list.iter().map(|&p| protocol_name(p)).collect::<Vec<_>>().join(", ");
        let ranges: Vec<PortRange> = match &raw.ports {
            Some(ports) => {
                if !icmp_protos.is_empty() && !port_protos.is_empty() {
                    let kind = ErrorKind::MixedPortMeaning {
                        port_protocols: names(&port_protos),
                        icmp_protocols: names(&icmp_protos),
                    };
                    return Err(self.error(ports.key_pos, kind).into());
                }
                if ports.items.is_empty() {
                    return Err(self.error(ports.key_pos, ErrorKind::EmptyList { key: "ports" }).into());
                }
                let parse = if icmp_protos.is_empty() { parse_port_entry } else { parse_icmp_entry };
                let mut ranges = Vec::new();
                for item in &ports.items {
                    let value = self.expand_in_rule(item, optional)?;
                    ranges.push(parse(&value).map_err(|kind| self.error(item.pos, kind))?);
                }
                ranges
            }
            None if port_protos.is_empty() => vec![PortRange::ALL],
            None if !url_ports.is_empty() => url_ports.iter().map(|&p| PortRange { first: p, last: p }).collect(),
            None => {
                let pos = raw.proto.as_ref().map_or(raw.pos, |p| p.key_pos);
                return Err(self.error(pos, ErrorKind::MissingPorts { proto: names(&port_protos) }).into());
            }
        };
        let ranges = merge_ranges(ranges);
        // Without `ports`, ICMP in a list with port protocols (whose ports a
        // URL implied) matches every type.
        Ok(Protocols::Only(
            protos
                .iter()
                .map(|&proto| ProtoPorts {
                    proto,
                    ports: if is_icmp(proto) && raw.ports.is_none() { vec![PortRange::ALL] } else { ranges.clone() },
                })
                .collect(),
        ))
    }
}
