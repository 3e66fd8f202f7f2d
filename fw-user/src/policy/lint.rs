//! Lints: legal policies that probably do not do what their author meant.
//!
//! * `shadowed-rule`: a rule that never decides any packet in a phase where
//!   it is in effect. Computed exactly from the compiled tables: the
//!   compiler writes every rule that decides some (address class, protocol,
//!   port) into an entry, so a rule id absent from a phase's port entries
//!   never decides there. One approximation: a class whose CIDR is entirely
//!   covered by more specific CIDRs is unreachable, yet its entries count,
//!   so a rule deciding only in such a class is not reported.
//! * `open-egress`: in the phase named `runtime` ("close all outbound"),
//!   egress allows every address on every port: `egress_default: allow`, or
//!   an egress allow rule to a whole address family (`any`, `0.0.0.0/0`,
//!   `::/0`) for every protocol, or for every port of TCP, UDP or SCTP.
//!   Deny rules may carve exceptions out of it; it is open all the same.
//!   [`Warning::is_open_egress`] recognizes it (commands that apply a phase
//!   ask for confirmation).
//! * `allow-everything`: an allow rule for any protocol to or from a whole
//!   address family in the phase named `runtime`, which `open-egress` does
//!   not already report (an inbound rule).
//!
//! * `ephemeral-overlap`: an inbound rule serves TCP or UDP ports inside
//!   this host's ephemeral range (`net.ipv4.ip_local_port_range`, read from
//!   /proc): the host's own connections leave from ports that look served,
//!   so a peer may reach them as if they were served, and a datagram from
//!   one to a peer with no flow is reported as `drop_spoofed_reply`. Says
//!   how to set the range (or reserve the ports).
//!
//! Every lint looks only at the phases it is given compiled, so that the
//! loading step of one phase (`source::load_phase`, shared by `fw
//! run` and `fw switch`) reports exactly what `fw check --phase` does.

use std::collections::HashSet;

use fw_common::{
    policy::proto::{SCTP, TCP, UDP},
    Action, Direction,
};

use super::{
    error::Warning,
    ir::{Policy, PortRange, Protocols, Rule},
};
use crate::policy::compile::tables::CompiledPhase;

/// The code of the open-egress warning.
pub const OPEN_EGRESS: &str = "open-egress";
/// The phase that closes all outbound, by convention (README, shipped policies).
const RUNTIME: &str = "runtime";

/// Warnings about the `compiled` phases of `policy`, for a host whose
/// ephemeral port range is `ephemeral` (`None`: unknown, not checked). The
/// caller reads the host (`source::host`): the core reads no files.
pub fn lint(policy: &Policy, compiled: &[CompiledPhase], ephemeral: Option<PortRange>) -> Vec<Warning> {
    let mut warnings = shadowed_rules(policy, compiled);
    if let Some(range) = ephemeral {
        warnings.extend(ephemeral_overlap(policy, compiled, range));
    }
    let runtime = compiled.iter().find(|phase| phase.phase == RUNTIME);
    if let Some(runtime) = runtime {
        let open = open_egress(policy, runtime);
        let reported: HashSet<u32> = open.iter().filter_map(|(rule, _)| *rule).collect();
        warnings.extend(open.into_iter().map(|(_, warning)| warning));
        warnings.extend(allow_everything_in_runtime(policy, &reported));
    }
    warnings
}

/// `ephemeral-overlap` warnings: inbound allow rules of the `compiled`
/// phases that serve TCP or UDP ports inside `ephemeral`, once per rule.
pub fn ephemeral_overlap(policy: &Policy, compiled: &[CompiledPhase], ephemeral: PortRange) -> Vec<Warning> {
    let mut seen = HashSet::new();
    let mut warnings = Vec::new();
    for phase in compiled {
        for rule in policy.rules_of_phase(&phase.phase).unwrap_or_default() {
            if rule.direction != Direction::Inbound || rule.action != Action::Allow || !seen.insert(rule.id) {
                continue;
            }
            let Protocols::Only(list) = &rule.protocols else { continue };
            let overlap: Vec<String> = list
                .iter()
                .filter(|p| [TCP, UDP].contains(&p.proto))
                .flat_map(|p| p.ports.iter().map(move |r| (p.proto, r)))
                .filter(|(_, r)| r.first <= ephemeral.last && ephemeral.first <= r.last)
                .map(|(proto, r)| {
                    let name = if proto == TCP { "tcp" } else { "udp" };
                    if r.first == r.last {
                        format!("{name} {}", r.first)
                    } else {
                        format!("{name} {}-{}", r.first, r.last)
                    }
                })
                .collect();
            if overlap.is_empty() {
                continue;
            }
            let served: Vec<String> = list
                .iter()
                .filter(|p| [TCP, UDP].contains(&p.proto))
                .flat_map(|p| p.ports.iter())
                .filter(|r| r.first <= ephemeral.last && ephemeral.first <= r.last)
                .map(|r| if r.first == r.last { r.first.to_string() } else { format!("{}-{}", r.first, r.last) })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let message = format!(
                "rule `{}` serves {}, inside this host's ephemeral ports {}-{} (net.ipv4.ip_local_port_range): \
                 its own connections leave from ports that look served (a peer may reach them as if they were, \
                 and a datagram from one to a peer with no flow is reported as drop_spoofed_reply); keep them \
                 apart with `sysctl -w net.ipv4.ip_local_reserved_ports={}` (or move the range below the served \
                 ports with net.ipv4.ip_local_port_range), and in /etc/sysctl.d/ to keep it",
                rule.name,
                overlap.join(", "),
                ephemeral.first,
                ephemeral.last,
                served.join(","),
            );
            warnings.push(Warning::new(&policy.file, rule.pos, "ephemeral-overlap", message));
        }
    }
    warnings
}

fn shadowed_rules(policy: &Policy, compiled: &[CompiledPhase]) -> Vec<Warning> {
    // Per phase, once: the phases it inherits from and the rules that decide
    // some cell (per rule it would make this quadratic in the policy size).
    let phases: Vec<(&str, HashSet<&str>, HashSet<u32>)> = compiled
        .iter()
        .filter_map(|phase| {
            let chain = policy.phase_chain(&phase.phase)?;
            let deciding = phase.ports.iter().map(|e| e.value.rule).collect();
            Some((phase.phase.as_str(), chain.into_iter().collect(), deciding))
        })
        .collect();
    let mut warnings = Vec::new();
    for rule in &policy.rules {
        // Rules left out (no addresses) are already reported when loading.
        if rule.peers.is_empty() {
            continue;
        }
        let mut in_effect = Vec::new();
        let mut never_decides = Vec::new();
        for (name, chain, deciding) in &phases {
            if !chain.contains(rule.phase.as_str()) {
                continue;
            }
            in_effect.push(*name);
            if !deciding.contains(&rule.id) {
                never_decides.push(*name);
            }
        }
        if !never_decides.is_empty() {
            let phases = if never_decides.len() == in_effect.len() {
                "any phase".to_string()
            } else {
                format!("phase {}", never_decides.join(", "))
            };
            let message = format!(
                "rule `{}` never decides a packet in {phases}: earlier rules (or deny rules, which take precedence) \
                 match everything it matches",
                rule.name
            );
            warnings.push(Warning::new(&policy.file, rule.pos, "shadowed-rule", message));
        }
    }
    warnings
}

/// Whether `rule` admits every port of some protocol: every protocol, or
/// all ports of TCP, UDP or SCTP.
fn every_port(rule: &Rule) -> bool {
    match &rule.protocols {
        Protocols::Any => true,
        Protocols::Only(list) => {
            list.iter().any(|p| [TCP, UDP, SCTP].contains(&p.proto) && p.ports.as_slice() == [PortRange::ALL])
        }
    }
}

/// Open-egress warnings of the runtime phase, with the rule each is about
/// (`None`: the phase default).
fn open_egress(policy: &Policy, runtime: &CompiledPhase) -> Vec<(Option<u32>, Warning)> {
    let mut found = Vec::new();
    if runtime.settings.egress_default == Action::Allow {
        let pos = policy.phase(RUNTIME).map(|p| p.pos).unwrap_or_default();
        let message = format!(
            "phase `{RUNTIME}` allows every address on every port: `egress_default: allow` \
             (write `egress_default: drop` and allow what the host needs)"
        );
        found.push((None, Warning::new(&policy.file, pos, OPEN_EGRESS, message)));
    }
    let rules = policy.rules_of_phase(RUNTIME).unwrap_or_default();
    for rule in rules {
        let whole_family = rule.peers.iter().any(|net| net.prefix_len() == 0);
        if rule.direction != Direction::Egress || rule.action != Action::Allow || !whole_family || !every_port(rule) {
            continue;
        }
        let families = if rule.peers.iter().filter(|n| n.prefix_len() == 0).count() == 2 {
            "IPv4 and IPv6"
        } else {
            "IPv4 or IPv6"
        };
        let what = if rule.protocols == Protocols::Any { "every protocol" } else { "every port of a protocol" };
        let message = format!(
            "rule `{}` allows every address on every port in the `{RUNTIME}` phase ({what}, every {families} address), \
             which defeats \"close all outbound\"",
            rule.name
        );
        found.push((Some(rule.id), Warning::new(&policy.file, rule.pos, OPEN_EGRESS, message)));
    }
    found
}

fn allow_everything_in_runtime(policy: &Policy, reported: &HashSet<u32>) -> Vec<Warning> {
    let Some(rules) = policy.rules_of_phase(RUNTIME) else { return Vec::new() };
    rules
        .into_iter()
        .filter(|r| !reported.contains(&r.id))
        .filter(|r| r.action == Action::Allow && r.protocols == Protocols::Any)
        .filter(|r| r.peers.iter().any(|net| net.prefix_len() == 0))
        .map(|r| {
            let message = format!(
                "rule `{}` allows every protocol to every {} address in the `runtime` phase",
                r.name,
                if r.peers.iter().all(|n| n.prefix_len() == 0) { "IPv4 and IPv6" } else { "IPv4 or IPv6" },
            );
            Warning::new(&policy.file, r.pos, "allow-everything", message)
        })
        .collect()
}
