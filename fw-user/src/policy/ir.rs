//! The validated, normalized policy: what the compiler and the reference
//! evaluator read. Nothing here refers to YAML; every name is resolved, every
//! variable expanded, every host name turned into addresses, every CIDR made
//! canonical and every port list merged into sorted, disjoint ranges.
//!
//! Property tests build these types directly, so they carry no invariant
//! that only the YAML front end could establish, except the ones written on
//! each field.

use fw_common::{Action, Direction};
use ipnet::IpNet;

use crate::policy::{compile::tables::PhaseSettings, names::NamePattern};

/// A place in the policy file, 1-based (0 when a value has no position, e.g.
/// a policy built in a test).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// The file it was read from, as given (used in diagnostics).
    pub file: String,
    /// In file order.
    pub phases: Vec<Phase>,
    /// Every rule of every phase, in file order: `rules[i].id == i`.
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub name: String,
    /// Name of the phase whose rules this one inherits (already checked to
    /// exist and to form no cycle).
    pub extends: Option<String>,
    pub settings: PhaseSettings,
    /// `dns:` as written in this phase (a phase without one inherits its
    /// parent's: [`Policy::dns_of_phase`]).
    pub dns: Option<DnsSettings>,
    pub pos: Pos,
}

/// `dns:` of a phase: where names are resolved, and how answers are used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// The resolvers local processes may ask (their queries go through fw's
    /// proxy, which learns the answers); DNS to anything else is refused.
    /// Never empty.
    pub resolvers: Vec<Resolver>,
    /// `queries: policy`: a name no rule mentions gets [`Self::refuse_with`].
    pub only_policy_names: bool,
    /// The answer to a query `queries: policy` refuses (`refuse_with`).
    pub refuse_with: Refusal,
    /// Floor under an answer's TTL, in seconds (`min_ttl`, default 60).
    pub min_ttl: u32,
    /// Addresses kept per name (`max_addresses_per_name`): the least
    /// recently answered one goes first.
    pub max_per_name: u32,
    /// Addresses kept in all (`max_addresses`), both families together.
    pub max_total: u32,
}

/// How `queries: policy` answers a name no rule mentions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Refusal {
    /// RCODE 5: the resolver will not answer (the default; a client does
    /// not cache it).
    Refused,
    /// RCODE 3: the name does not exist (clients give up at once and may
    /// cache the negative answer).
    NxDomain,
}

/// The default of `dns.max_addresses_per_name`: Cilium's
/// `--tofqdns-endpoint-max-ip-per-hostname` default (raised from 50 to
/// 1000 for CDN and S3 churn, cilium PR #36255).
pub const DEFAULT_MAX_PER_NAME: u32 = 1000;
/// The default of `dns.max_addresses`: room for every CDN edge a media
/// server's few names rotate through, at a few MB of kernel memory.
pub const DEFAULT_MAX_TOTAL: u32 = 65_536;

/// The default of `dns.min_ttl`: applications cache answers past their TTL
/// (cilium#23086), so a learned address stays at least this long.
pub const DEFAULT_MIN_TTL: u32 = 60;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Resolver {
    /// The nameservers the host uses (`/etc/resolv.conf`), read when the
    /// phase is applied.
    System,
    Addr(std::net::IpAddr),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Index in file order over the whole file; the rule id of the tables and
    /// of the counters.
    pub id: u32,
    pub name: String,
    /// The phase the rule is written in.
    pub phase: String,
    pub direction: Direction,
    pub action: Action,
    /// Addresses of the peer (destination on egress, source on inbound),
    /// canonical (no host bits), sorted, deduplicated. An omitted `to`/`from`
    /// or `any` is `0.0.0.0/0` and `::/0`. Empty means the rule matches
    /// nothing: an `optional` rule that was left out keeps its id this way.
    pub peers: Vec<IpNet>,
    /// DNS names whose answered addresses the rule also matches, learned at
    /// run time (egress allow rules in a phase with `dns:` only). Sorted,
    /// deduplicated.
    pub names: Vec<NamePattern>,
    pub protocols: Protocols,
    pub pos: Pos,
}

/// Which packets a rule matches beyond the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocols {
    /// Every protocol and every port (`proto: any` or no `proto`).
    Any,
    /// Only these protocols, each with its ports. Sorted by protocol, one
    /// entry per protocol.
    Only(Vec<ProtoPorts>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoPorts {
    /// IP protocol number (`fw_common::policy::proto`).
    pub proto: u8,
    /// Sorted, disjoint, non-adjacent ranges. For ICMP/ICMPv6 the values are
    /// `type << 8 | code`; `ports: any` (or no ports for ICMP) is 0-65535.
    pub ports: Vec<PortRange>,
}

/// An inclusive range of port values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { first: 0, last: u16::MAX };

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl Policy {
    pub fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Names of `phase` and of every phase it extends, nearest first.
    /// `None` for an unknown phase.
    pub fn phase_chain(&self, phase: &str) -> Option<Vec<&str>> {
        let mut chain = vec![self.phase(phase)?.name.as_str()];
        while let Some(parent) = self.phase(chain[chain.len() - 1]).and_then(|p| p.extends.as_deref()) {
            // The front end rejects cycles; a hand-built policy with one must
            // not loop forever.
            if chain.contains(&parent) || chain.len() > self.phases.len() {
                break;
            }
            chain.push(self.phase(parent)?.name.as_str());
        }
        Some(chain)
    }

    /// The `dns:` settings in effect in `phase`: its own, else the nearest
    /// phase it extends that has some.
    pub fn dns_of_phase(&self, phase: &str) -> Option<&DnsSettings> {
        self.phase_chain(phase)?.into_iter().find_map(|p| self.phase(p)?.dns.as_ref())
    }

    /// The rules in effect in `phase` (its own and inherited ones), in file
    /// order. `None` for an unknown phase.
    pub fn rules_of_phase(&self, phase: &str) -> Option<Vec<&Rule>> {
        let chain = self.phase_chain(phase)?;
        // Sized for every rule: growing by doubling copied the vector
        // repeatedly at 100,000 rules.
        let mut rules = Vec::with_capacity(self.rules.len());
        rules.extend(self.rules.iter().filter(|r| chain.contains(&r.phase.as_str())));
        Some(rules)
    }
}

/// Sorts and merges overlapping or adjacent ranges.
pub fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(prev) if u32::from(r.first) <= u32::from(prev.last) + 1 => prev.last = prev.last.max(r.last),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn merge_joins_overlapping_and_adjacent_ranges_only() {
        assert_eq!(merge_ranges(vec![r(10, 20), r(21, 30), r(5, 12), r(40, 40)]), vec![r(5, 30), r(40, 40)]);
        assert_eq!(merge_ranges(vec![r(0, 65535), r(80, 80)]), vec![r(0, 65535)]);
        assert_eq!(merge_ranges(vec![r(65535, 65535), r(0, 0)]), vec![r(0, 0), r(65535, 65535)]);
    }
}
