//! `fw learn`, the pure part: tallying the would-drop events of a learning
//! instance into flows, and writing those flows as a policy phase.
//!
//! Two kinds of events describe one connection: the cgroup socket hook's
//! (a `connect()`/`sendmsg()`: process, command, cgroup; no source port)
//! and the TC program's (each packet: cgroup of the sending socket, source
//! port). A destination (protocol, address, port) is attributed to the
//! processes whose calls reached it; one that only packets reached (a
//! process outside the hooked cgroup) is attributed to the packets' cgroup
//! or container, counting connections as distinct source ports.
//!
//! Rules: one per (program, container or cgroup, destination address,
//! protocol), its ports folded into ranges of consecutive ports, so the
//! phase allows exactly the flows that were seen.
//!
//! Names: while learning with socket hooks, the cgroup's DNS goes through
//! the learning instance's proxy, which reports every answer (question
//! name, addresses, when it was released). A call to an address that
//! follows a live answer for it (released before the call, its TTL, at
//! least the default `min_ttl`, not yet run out) is a call to that name:
//! its rule is `to: [NAME]`, one rule however many addresses the name
//! rotated through. A call with no such answer (an address from a cache
//! older than the learning, a literal, an answer that came after) stays an
//! address rule. Both times are on the clock of the kernel's event
//! timestamps (CLOCK_MONOTONIC_COARSE), so the order is exact to the tick;
//! within one tick an answer counts as before.
//!
//! Only what this host opens is egress. What it serves (flows a peer opened:
//! the inbound entries of the flow tables, sampled while learning) is
//! written as inbound rules, and a packet event that answers such a flow
//! (sent before the peer's next packet opened it again, or on a connection
//! to a listening port older than the learning) is a reply, never an
//! egress rule to a client's ephemeral port.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use fw_common::{
    policy::proto::{ICMP, ICMPV6},
    Direction, Reason,
};
use yaml_rust2::{Yaml, YamlEmitter};

use crate::{
    daemon::{
        dns::Answered,
        events::{reader::Sink, DecodeError, Event, EventReason, EventSource},
    },
    policy::{
        ir::{DEFAULT_MAX_TOTAL, DEFAULT_MIN_TTL},
        names::is_exact_name,
        protocols::protocol_name,
    },
};

/// Who opened a flow: the command name and where it runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    /// `None` when only packets were seen (they carry no process).
    pub comm: Option<String>,
    /// `container openvidu-nginx-1`, `unit nginx.service`, `cgroup /x`.
    pub place: Option<String>,
}

impl Who {
    fn of(event: &Event) -> Who {
        let place = match (&event.container, &event.cgroup) {
            (Some(c), _) => Some(c.label()),
            (None, Some(path)) => Some(format!("cgroup {path}")),
            (None, None) => None,
        };
        Who { comm: event.comm.clone(), place }
    }

    fn describe(&self) -> String {
        let comm = self.comm.as_deref().unwrap_or("unknown process");
        match &self.place {
            Some(place) => format!("{comm} ({place})"),
            None => comm.to_string(),
        }
    }
}

/// A destination: protocol name, address, port (ICMP: `type << 8 | code`).
type Dest = (String, IpAddr, u16);

/// Where a learned rule goes: a name DNS answered, or an address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum To {
    Name(String),
    Addr(IpAddr),
}

/// An answer for `name` gave an address: a call to it from `from_ns` until
/// `until_ns` (event clock) followed that answer.
#[derive(Debug)]
struct Answer {
    from_ns: u64,
    until_ns: u64,
    name: String,
}

/// Answers remembered per address, the latest: a name rotating through
/// one address and a wildcard flood cannot grow one address's list.
const ANSWERS_PER_ADDRESS: usize = 4;
/// Addresses whose answers are remembered (the default of
/// `dns.max_addresses`); past it, calls to new addresses stay addresses.
const MAX_ANSWERED: usize = DEFAULT_MAX_TOTAL as usize;

#[derive(Default)]
struct Calls {
    count: u64,
    pids: BTreeSet<u32>,
}

#[derive(Default)]
struct Packets {
    /// Distinct source ports: connections (TCP) or sockets (UDP).
    src_ports: BTreeSet<u16>,
    who: BTreeSet<Who>,
}

/// At most this many inbound 4-tuples are remembered (about 60 bytes
/// each): enough for the replies of a busy server, bounded for a flood.
const MAX_INBOUND_TUPLES: usize = 500_000;

/// What a learning run saw.
#[derive(Default)]
pub struct Tally {
    next_seq: u64,
    /// Per destination, per caller and the name it was answered (if any).
    calls: BTreeMap<Dest, BTreeMap<(Who, Option<String>), Calls>>,
    /// DNS answers the learning proxy released, per address.
    answers: BTreeMap<IpAddr, Vec<Answer>>,
    /// Answers the proxy reported.
    pub answers_seen: u64,
    /// Answers for names a rule cannot name exactly (a `*` label, a
    /// character the policy language refuses): their addresses stay
    /// addresses.
    pub unusable_names: u64,
    /// Answered addresses not remembered because [`MAX_ANSWERED`] were.
    pub answers_overflow: u64,
    packets: BTreeMap<Dest, Packets>,
    /// Served: (protocol, local port) -> the peers that opened flows to it.
    served: BTreeMap<(String, u16), BTreeSet<IpAddr>>,
    /// (protocol, local port, peer, peer port) of the flows peers opened.
    inbound: BTreeSet<(String, u16, IpAddr, u16)>,
    /// Inbound flows not remembered because [`MAX_INBOUND_TUPLES`] were.
    pub inbound_overflow: u64,
    /// TCP ports this host listened on while learning.
    listening: BTreeSet<u16>,
    /// Records the reader could not decode.
    pub undecodable: u64,
}

impl Sink for Tally {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn push(&mut self, event: Event) {
        self.record(&event);
    }

    fn push_at(&mut self, event: Event, time_ns: u64) {
        self.record_at(&event, Some(time_ns));
    }

    fn undecodable(&mut self, _error: DecodeError) {
        self.undecodable += 1;
    }
}

impl Tally {
    /// Counts one event with no time to join DNS answers on.
    pub fn record(&mut self, event: &Event) {
        self.record_at(event, None);
    }

    /// Counts one event the kernel saw at `time_ns` (event clock); a call
    /// that follows a live answer for its address is a call to that name.
    /// Anything but an egress would-drop (or drop by the phase default) is
    /// not a flow to learn.
    pub fn record_at(&mut self, event: &Event, time_ns: Option<u64>) {
        let learnable = [Reason::PassAudit, Reason::DropDefault, Reason::DropSocket].map(EventReason::Kernel);
        if event.direction != Direction::Egress
            || !learnable.contains(&event.reason)
            || is_icmp_error(event)
            || is_echo_reply(event)
        {
            return;
        }
        // Keyed by the protocol's policy-language name: what the rule says.
        let dest = (protocol_name(event.proto), event.dst, event.dst_port);
        if event.source == EventSource::Socket {
            let name = time_ns.and_then(|t| self.name_at(event.dst, t));
            let calls = self.calls.entry(dest).or_default().entry((Who::of(event), name)).or_default();
            calls.count += 1;
            calls.pids.extend(event.pid);
        } else {
            let packets = self.packets.entry(dest).or_default();
            packets.src_ports.extend(event.src_port);
            packets.who.insert(Who::of(event));
        }
    }

    /// An answer the learning proxy released: each address is the name's
    /// for calls from then until its TTL (at least the default `min_ttl`,
    /// what enforcing the learned rule will allow) runs out.
    pub fn record_answer(&mut self, answered: &Answered) {
        self.answers_seen += 1;
        if !is_exact_name(&answered.name) {
            self.unusable_names += 1;
            return;
        }
        for &(addr, ttl) in &answered.addrs {
            if !self.answers.contains_key(&addr) && self.answers.len() >= MAX_ANSWERED {
                self.answers_overflow += 1;
                continue;
            }
            let until_ns = answered.at_ns.saturating_add(u64::from(ttl.max(DEFAULT_MIN_TTL)) * 1_000_000_000);
            let list = self.answers.entry(addr).or_default();
            list.push(Answer { from_ns: answered.at_ns, until_ns, name: answered.name.clone() });
            if list.len() > ANSWERS_PER_ADDRESS {
                list.remove(0);
            }
        }
    }

    /// The name of the latest answer for `addr` live at `time_ns`.
    fn name_at(&self, addr: IpAddr, time_ns: u64) -> Option<String> {
        self.answers
            .get(&addr)?
            .iter()
            .filter(|a| a.from_ns <= time_ns && time_ns <= a.until_ns)
            .max_by_key(|a| a.from_ns)
            .map(|a| a.name.clone())
    }

    /// DNS servers this host's processes asked directly (UDP or TCP port
    /// 53, seen as flows): not the ones the learning proxy watched.
    pub fn dns_servers(&self) -> BTreeSet<IpAddr> {
        self.calls
            .keys()
            .chain(self.opened_packets().map(|(d, _, _)| d))
            .filter(|(proto, _, port)| *port == fw_common::names::DNS_PORT && (proto == "udp" || proto == "tcp"))
            .map(|(_, addr, _)| *addr)
            .collect()
    }

    /// A flow a peer opened to this host (`proto` by name), seen in the
    /// flow tables: this host serves `local_port`.
    pub fn observe_inbound(&mut self, proto: &str, local_port: u16, peer: IpAddr, peer_port: u16) {
        self.served.entry((proto.to_string(), local_port)).or_default().insert(peer);
        let tuple = (proto.to_string(), local_port, peer, peer_port);
        if self.inbound.len() < MAX_INBOUND_TUPLES || self.inbound.contains(&tuple) {
            self.inbound.insert(tuple);
        } else {
            self.inbound_overflow += 1;
        }
    }

    /// A TCP port this host listens on: what it sends from there answers
    /// a connection a peer opened (perhaps before learning started).
    pub fn observe_listening(&mut self, port: u16) {
        self.listening.insert(port);
    }

    /// Whether a packet from this host's `src_port` to `dest` answers a
    /// flow a peer opened.
    fn is_reply(&self, dest: &Dest, src_port: u16) -> bool {
        let (proto, addr, port) = dest;
        (proto == "tcp" && self.listening.contains(&src_port))
            || self.inbound.contains(&(proto.clone(), src_port, *addr, *port))
    }

    /// The packet-only destinations, each with the source ports of the
    /// flows this host opened to it (replies removed); a destination that
    /// only replies reached is left out.
    fn opened_packets(&self) -> impl Iterator<Item = (&Dest, &Packets, usize)> {
        self.packets.iter().filter_map(|(dest, packets)| {
            let opened = packets.src_ports.iter().filter(|p| !self.is_reply(dest, **p)).count();
            let replies_only = !packets.src_ports.is_empty() && opened == 0;
            (!replies_only).then_some((dest, packets, opened))
        })
    }

    /// Distinct destinations this host opened flows to.
    pub fn destinations(&self) -> usize {
        self.calls.keys().chain(self.opened_packets().map(|(d, _, _)| d)).collect::<BTreeSet<_>>().len()
    }

    /// What this host served: one rule per protocol, its ports folded.
    pub fn served(&self) -> Vec<ServedRule> {
        let mut by_proto: BTreeMap<&str, (BTreeSet<u16>, BTreeSet<IpAddr>)> = BTreeMap::new();
        for ((proto, port), peers) in &self.served {
            let entry = by_proto.entry(proto.as_str()).or_default();
            entry.0.insert(*port);
            entry.1.extend(peers);
        }
        by_proto
            .into_iter()
            .map(|(proto, (ports, peers))| ServedRule {
                name: format!("served-{proto}"),
                proto: proto.to_string(),
                ports: if is_icmp(proto) { ports.iter().map(|p| icmp_entry(*p)).collect() } else { fold_ports(&ports) },
                peers: peers.len(),
            })
            .collect()
    }

    /// The flows, grouped into rules.
    pub fn rules(&self) -> Vec<LearnedRule> {
        // (who, proto, name or address) -> ports, uses, pids, addresses
        type Group = (BTreeSet<u16>, u64, BTreeSet<u32>, BTreeSet<IpAddr>);
        let mut groups: BTreeMap<(Who, String, To), Group> = BTreeMap::new();
        for (dest, by_who) in &self.calls {
            for ((who, name), calls) in by_who {
                let to = name.clone().map_or(To::Addr(dest.1), To::Name);
                let g = groups.entry((who.clone(), dest.0.clone(), to)).or_default();
                g.0.insert(dest.2);
                g.1 += calls.count;
                g.2.extend(&calls.pids);
                g.3.insert(dest.1);
            }
        }
        for (dest, packets, opened) in self.opened_packets() {
            if self.calls.contains_key(dest) {
                continue;
            }
            // Packets of several cgroups to one destination: the first
            // names the rule, the comment lists them all.
            let who = packets.who.iter().next().cloned().unwrap_or(Who { comm: None, place: None });
            let g = groups.entry((who, dest.0.clone(), To::Addr(dest.1))).or_default();
            g.0.insert(dest.2);
            g.1 += opened.max(1) as u64;
            g.3.insert(dest.1);
        }
        let mut used_names = BTreeSet::new();
        groups
            .into_iter()
            .map(|((who, proto, to), (ports, uses, pids, addrs))| LearnedRule {
                name: unique_name(&who, &mut used_names),
                ports: if is_icmp(&proto) {
                    ports.iter().map(|p| icmp_entry(*p)).collect()
                } else {
                    fold_ports(&ports)
                },
                who,
                proto,
                to,
                uses,
                pids: pids.into_iter().collect(),
                addrs: addrs.into_iter().collect(),
            })
            .collect()
    }
}

/// An ICMP error this host sent (port unreachable for a late reply...):
/// it answers a flow, and the datapath passes such errors when that flow
/// is allowed and tracked, so it is not a flow of its own to learn.
fn is_icmp_error(event: &Event) -> bool {
    let kind = event.dst_port >> 8;
    match event.proto {
        // destination unreachable, source quench, time exceeded, parameter problem
        ICMP => matches!(kind, 3 | 4 | 11 | 12),
        // destination unreachable, packet too big, time exceeded, parameter problem
        ICMPV6 => matches!(kind, 1..=4),
        _ => false,
    }
}

/// An echo reply answers a peer's echo request: served, never opened.
fn is_echo_reply(event: &Event) -> bool {
    let kind = event.dst_port >> 8;
    matches!((event.proto, kind), (ICMP, 0) | (ICMPV6, 129))
}

fn is_icmp(proto: &str) -> bool {
    proto == "icmp" || proto == "icmpv6"
}

/// `type/code` as the policy language writes ICMP "ports".
fn icmp_entry(port: u16) -> PortEntry {
    PortEntry::Icmp(port >> 8, port & 0xff)
}

/// One learned rule.
#[derive(Debug, PartialEq, Eq)]
pub struct LearnedRule {
    pub name: String,
    pub who: Who,
    pub proto: String,
    pub to: To,
    pub ports: Vec<PortEntry>,
    /// Calls (or, seen only as packets, connections) that used it.
    pub uses: u64,
    pub pids: Vec<u32>,
    /// The addresses it reached (a name's: those it was answered).
    pub addrs: Vec<IpAddr>,
}

/// What this host served, per protocol: written as an inbound rule.
#[derive(Debug, PartialEq, Eq)]
pub struct ServedRule {
    pub name: String,
    pub proto: String,
    pub ports: Vec<PortEntry>,
    /// Distinct peers that opened flows to these ports.
    pub peers: usize,
}

/// One element of a rule's `ports` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortEntry {
    One(u16),
    Range(u16, u16),
    Icmp(u16, u16),
}

impl PortEntry {
    fn yaml(self) -> Yaml {
        match self {
            PortEntry::One(p) => Yaml::Integer(p.into()),
            PortEntry::Range(a, b) => Yaml::String(format!("{a}-{b}")),
            PortEntry::Icmp(t, c) => Yaml::String(format!("{t}/{c}")),
        }
    }
}

/// Consecutive ports become one range; nothing that was not seen is added.
pub fn fold_ports(ports: &BTreeSet<u16>) -> Vec<PortEntry> {
    let mut out = Vec::new();
    let mut iter = ports.iter().copied();
    let Some(mut first) = iter.next() else { return out };
    let mut last = first;
    let close = |first: u16, last: u16, out: &mut Vec<PortEntry>| {
        out.push(if first == last { PortEntry::One(first) } else { PortEntry::Range(first, last) })
    };
    for port in iter {
        if last.checked_add(1) == Some(port) {
            last = port;
        } else {
            close(first, last, &mut out);
            first = port;
            last = port;
        }
    }
    close(first, last, &mut out);
    out
}

/// `curl-1`, `curl-2`, `nginx-1`...: from the command name, lower case,
/// letters, digits and `-` only (rule names must be unique in a file).
fn unique_name(who: &Who, used: &mut BTreeSet<String>) -> String {
    let base: String = who
        .comm
        .as_deref()
        .unwrap_or("flow")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    let base = base.trim_matches('-');
    let base = if base.is_empty() { "flow" } else { base };
    (1..).map(|n| format!("learned-{base}-{n}")).find(|name| used.insert(name.clone())).expect("an unused name")
}

/// The learned phase's YAML: values are written by the YAML library's
/// emitter (it quotes what must be quoted: `*.x`, `2001:db8::1`, a `#`);
/// the layout (one flow mapping per rule, so a rule is one line) and the
/// comments saying who used each rule are ours, as no emitter writes
/// comments.
mod yaml {
    use super::*;

    /// One scalar as the emitter writes it.
    pub fn scalar(value: Yaml) -> String {
        let mut out = String::new();
        YamlEmitter::new(&mut out).dump(&value).expect("writing to a String cannot fail");
        // `dump` starts a document; a scalar follows on the next line.
        out.strip_prefix("---\n").unwrap_or(&out).to_string()
    }

    pub fn text(value: &str) -> String {
        scalar(Yaml::String(value.to_string()))
    }

    /// `[a, b]`
    pub fn seq(items: impl IntoIterator<Item = Yaml>) -> String {
        format!("[{}]", items.into_iter().map(scalar).collect::<Vec<_>>().join(", "))
    }

    /// `{ key: value, ... }`, the values already written.
    pub fn map(entries: &[(&str, String)]) -> String {
        let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{}: {v}", text(k))).collect();
        format!("{{ {} }}", entries.join(", "))
    }
}

/// The phase's `dns:` when DNS went through the learning proxy: `system`
/// (what the proxy watched) and the DNS servers processes asked directly,
/// within the policy language's limits; the second value lists the servers
/// left out.
pub fn learned_resolvers(direct: &BTreeSet<IpAddr>) -> (Vec<String>, Vec<IpAddr>) {
    use fw_common::names::{MAX_RESOLVERS4, MAX_RESOLVERS6};
    let mut resolvers = vec!["system".to_string()];
    let mut left_out = Vec::new();
    let (mut v4, mut v6) = (0, 0);
    for addr in direct {
        let (count, max) = if addr.is_ipv4() { (&mut v4, MAX_RESOLVERS4) } else { (&mut v6, MAX_RESOLVERS6) };
        if *count < max {
            *count += 1;
            resolvers.push(addr.to_string());
        } else {
            left_out.push(*addr);
        }
    }
    (resolvers, left_out)
}

/// The phase `phase` with `served` as its inbound, `rules` as its egress
/// and, when given, `dns: { resolvers: [...] }` (needed by name rules, and
/// by any DNS that went through the learning proxy), indented by `indent`
/// spaces (the indentation of the phase names in the file it goes into).
pub fn phase_yaml(
    phase: &str,
    rules: &[LearnedRule],
    served: &[ServedRule],
    resolvers: Option<&[String]>,
    indent: usize,
) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    let _ = writeln!(out, "{pad}{}:", yaml::text(phase));
    if let Some(resolvers) = resolvers {
        let _ = writeln!(out, "{pad}  # DNS to these resolvers was seen while learning. Local processes' DNS goes");
        let _ =
            writeln!(out, "{pad}  # through fw's proxy, which tracks the names in rules; DNS to others is refused.");
        let list = yaml::seq(resolvers.iter().map(|r| Yaml::String(r.clone())));
        let _ = writeln!(out, "{pad}  dns: {}", yaml::map(&[("resolvers", list)]));
    }
    if !served.is_empty() {
        let _ = writeln!(out, "{pad}  # What this host served: peers opened these flows, so their replies pass");
        let _ = writeln!(out, "{pad}  # (the inbound default allows; these rules name them, and keep them");
        let _ = writeln!(out, "{pad}  # served under `inbound_default: drop`).");
        let _ = writeln!(out, "{pad}  inbound:");
        for rule in served {
            let peers = if rule.peers == 1 { "1 peer".to_string() } else { format!("{} peers", rule.peers) };
            let _ = writeln!(out, "{pad}    # {peers}");
            let entry = yaml::map(&[
                ("name", yaml::text(&rule.name)),
                ("proto", yaml::text(&rule.proto)),
                ("ports", yaml::seq(rule.ports.iter().map(|p| p.yaml()))),
            ]);
            let _ = writeln!(out, "{pad}    - {entry}");
        }
    }
    if rules.is_empty() {
        let _ = writeln!(out, "{pad}  # nothing was seen: this phase allows no egress");
        let _ = writeln!(out, "{pad}  egress: []");
        return out;
    }
    let _ = writeln!(out, "{pad}  egress:");
    for rule in rules {
        let pids = match rule.pids.as_slice() {
            [] => String::new(),
            [one] => format!(", pid {one}"),
            many => format!(", pids {}", many.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")),
        };
        let times = if rule.uses == 1 { "1 time".to_string() } else { format!("{} times", rule.uses) };
        let answered = match &rule.to {
            To::Name(_) => format!("; answered {}", shown_addresses(&rule.addrs)),
            To::Addr(_) => String::new(),
        };
        let _ = writeln!(out, "{pad}    # {}: {times}{pids}{answered}", rule.who.describe());
        let to = match &rule.to {
            To::Name(name) => name.clone(),
            To::Addr(addr) => addr.to_string(),
        };
        let entry = yaml::map(&[
            ("name", yaml::text(&rule.name)),
            ("to", yaml::seq([Yaml::String(to)])),
            ("proto", yaml::text(&rule.proto)),
            ("ports", yaml::seq(rule.ports.iter().map(|p| p.yaml()))),
        ]);
        let _ = writeln!(out, "{pad}    - {entry}");
    }
    out
}

/// At most 8 addresses, then how many more.
fn shown_addresses(addrs: &[IpAddr]) -> String {
    const SHOWN: usize = 8;
    let mut text = addrs.iter().take(SHOWN).map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
    if addrs.len() > SHOWN {
        let _ = write!(text, " and {} more", addrs.len() - SHOWN);
    }
    text
}

/// A whole policy holding the learned phase.
pub fn policy_yaml(
    header: &str,
    phase: &str,
    rules: &[LearnedRule],
    served: &[ServedRule],
    resolvers: Option<&[String]>,
) -> String {
    format!("{header}name: learned\nphases:\n{}", phase_yaml(phase, rules, served, resolvers, 2))
}

/// `base` (a policy file's text) with the learned phase added at the end
/// of its `phases:` mapping, which must be its last top-level key (the
/// caller re-parses the result to make sure it is).
pub fn append_phase(
    base: &str,
    header: &str,
    phase: &str,
    rules: &[LearnedRule],
    served: &[ServedRule],
    resolvers: Option<&[String]>,
) -> Result<String, String> {
    let lines: Vec<&str> = base.lines().collect();
    let start = lines.iter().position(|l| l.trim_end() == "phases:").ok_or("it has no top-level `phases:` line")?;
    let after = &lines[start + 1..];
    if after.iter().any(|l| !l.is_empty() && !l.starts_with([' ', '#'])) {
        return Err("`phases:` is not its last top-level key".into());
    }
    let indent = after
        .iter()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map_or(2, |l| l.len() - l.trim_start().len());
    let mut out = base.trim_end().to_string();
    out.push_str("\n\n");
    for line in header.lines() {
        let _ = writeln!(out, "{}{line}", " ".repeat(indent));
    }
    out.push_str(&phase_yaml(phase, rules, served, resolvers, indent));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use fw_common::policy::proto::{TCP, UDP};

    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<u16> {
        ports.iter().copied().collect()
    }

    #[test]
    fn consecutive_ports_fold_into_ranges_and_nothing_else_is_added() {
        use PortEntry::*;
        assert_eq!(fold_ports(&set(&[])), []);
        assert_eq!(fold_ports(&set(&[443])), [One(443)]);
        assert_eq!(fold_ports(&set(&[80, 443, 444, 445, 8080])), [One(80), Range(443, 445), One(8080)]);
        assert_eq!(fold_ports(&set(&[65534, 65535, 0, 1])), [Range(0, 1), Range(65534, 65535)]);
        assert_eq!(fold_ports(&set(&[10, 12])), [One(10), One(12)]);
    }

    fn event(source: EventSource, comm: Option<&str>, dst: &str, port: u16, src_port: Option<u16>) -> Event {
        Event {
            seq: 0,
            time: 0.0,
            reason: EventReason::Kernel(Reason::PassAudit),
            direction: Direction::Egress,
            audit: true,
            source,
            rule_id: None,
            rule: None,
            proto: TCP,
            src: None,
            src_port,
            dst: dst.parse().unwrap(),
            dst_port: port,
            pid: comm.map(|_| 812),
            comm: comm.map(str::to_string),
            cgroup_id: Some(7),
            cgroup: Some("/app".into()),
            container: None,
            dns_name: None,
        }
    }

    #[test]
    fn calls_name_the_program_and_packets_alone_name_the_cgroup() {
        let mut tally = Tally::default();
        for port in [8080, 8081, 8082, 9000] {
            tally.record(&event(EventSource::Socket, Some("curl"), "198.18.1.2", port, None));
            // The same connection's packets add nothing.
            tally.record(&event(EventSource::Packet, None, "198.18.1.2", port, Some(40000)));
        }
        tally.record(&event(EventSource::Socket, Some("curl"), "198.18.1.2", 8080, None));
        tally.record(&event(EventSource::Packet, None, "198.18.1.3", 53, Some(5000)));
        tally.record(&event(EventSource::Packet, None, "198.18.1.3", 53, Some(5001)));
        let inbound =
            Event { direction: Direction::Inbound, ..event(EventSource::Packet, None, "198.18.1.9", 1, Some(1)) };
        tally.record(&inbound);
        let port_unreachable =
            Event { proto: ICMP, ..event(EventSource::Packet, None, "198.18.1.9", 3 << 8 | 3, None) };
        tally.record(&port_unreachable);
        let echo_request = Event { proto: ICMP, ..event(EventSource::Packet, None, "198.18.1.4", 8 << 8, None) };
        tally.record(&echo_request);
        let rules = tally.rules();
        assert_eq!(rules.len(), 3, "{rules:#?}");
        assert_eq!((rules[0].proto.as_str(), rules[0].ports.as_slice()), ("icmp", [PortEntry::Icmp(8, 0)].as_slice()));
        assert_eq!(rules[1].name, "learned-flow-2");
        assert_eq!(rules[1].ports, [PortEntry::One(53)]);
        assert_eq!(rules[1].uses, 2);
        assert_eq!(rules[2].name, "learned-curl-1");
        assert_eq!(rules[2].ports, [PortEntry::Range(8080, 8082), PortEntry::One(9000)]);
        assert_eq!(rules[2].uses, 5);
        assert_eq!(rules[2].pids, [812]);
        let yaml = phase_yaml("learned", &rules, &[], None, 2);
        assert!(yaml.contains("    # curl (cgroup /app): 5 times, pid 812\n"), "{yaml}");
        assert!(
            yaml.contains("- { name: learned-curl-1, to: [198.18.1.2], proto: tcp, ports: [8080-8082, 9000] }"),
            "{yaml}"
        );
    }

    /// Issue 12, finding 5: a server's replies to its clients (ephemeral
    /// ports) were learned as egress rules. What a peer opened is served.
    #[test]
    fn finding5_replies_to_served_flows_are_served_not_egress() {
        let mut tally = Tally::default();
        let client: IpAddr = "198.18.1.9".parse().unwrap();
        // The server's packets to a client, before the client's next packet
        // opened the flow again, and on a connection older than learning.
        tally.record(&Event { proto: UDP, ..event(EventSource::Packet, None, "198.18.1.9", 38392, Some(5005)) });
        tally.record(&event(EventSource::Packet, None, "198.18.1.9", 41000, Some(8080)));
        tally.record(&Event { proto: ICMP, ..event(EventSource::Packet, None, "198.18.1.9", 0, None) });
        // A download this host opened from a port that is no reply.
        tally.record(&event(EventSource::Packet, None, "198.18.1.2", 80, Some(50000)));
        tally.observe_inbound("udp", 5005, client, 38392);
        tally.observe_inbound("tcp", 8080, client, 41001);
        tally.observe_inbound("tcp", 8081, client, 41002);
        tally.observe_listening(8080);
        let rules = tally.rules();
        assert_eq!(rules.len(), 1, "{rules:#?}");
        assert_eq!(
            (&rules[0].to, rules[0].ports.as_slice()),
            (&To::Addr("198.18.1.2".parse().unwrap()), [PortEntry::One(80)].as_slice())
        );
        assert_eq!(tally.destinations(), 1);
        let served = tally.served();
        assert_eq!(served.len(), 2, "{served:#?}");
        assert_eq!(
            (served[0].proto.as_str(), served[0].ports.as_slice()),
            ("tcp", [PortEntry::Range(8080, 8081)].as_slice())
        );
        assert_eq!(
            (served[1].proto.as_str(), served[1].ports.as_slice(), served[1].peers),
            ("udp", [PortEntry::One(5005)].as_slice(), 1)
        );
        let yaml = phase_yaml("learned", &rules, &served, None, 2);
        assert!(
            yaml.contains("    inbound:\n      # 1 peer\n      - { name: served-tcp, proto: tcp, ports: [8080-8081] }"),
            "{yaml}"
        );
        assert!(!yaml.contains("38392") && !yaml.contains("41000"), "{yaml}");
    }

    #[test]
    fn the_learned_phase_is_appended_at_the_files_phase_indentation() {
        let base = "name: x\nphases:\n    runtime:\n        egress: []\n";
        let out = append_phase(base, "# learned\n", "seen", &[], &[], None).unwrap();
        assert!(
            out.ends_with(
                "\n    # learned\n    seen:\n      # nothing was seen: this phase allows no egress\n      egress: []\n"
            ),
            "{out}"
        );
        assert!(append_phase("phases:\n  a: {}\nname: x\n", "", "seen", &[], &[], None).is_err());
    }

    const SECOND: u64 = 1_000_000_000;

    fn answered(name: &str, addr: &str, ttl: u32, at_ns: u64) -> Answered {
        Answered { name: name.into(), addrs: vec![(addr.parse().unwrap(), ttl)], at_ns }
    }

    fn call(dst: &str, port: u16) -> Event {
        event(EventSource::Socket, Some("curl"), dst, port, None)
    }

    /// Issue 14: a connection that follows an answer is the name's, however
    /// many addresses the name rotated through; one with no answer, or
    /// whose answer came after it or had run out, stays an address.
    #[test]
    fn learn_names_join_answers_to_the_connections_that_follow_them() {
        let mut tally = Tally::default();
        let t0 = 1_000 * SECOND;
        // Answer, then connection; the answer rotates to another address.
        tally.record_answer(&answered("media.example.test", "198.18.7.1", 1, t0));
        tally.record_at(&call("198.18.7.1", 443), Some(t0 + 1));
        tally.record_answer(&answered("media.example.test", "198.18.7.2", 1, t0 + 2 * SECOND));
        tally.record_at(&call("198.18.7.2", 443), Some(t0 + 2 * SECOND));
        tally.record_at(&call("198.18.7.2", 443), Some(t0 + 3 * SECOND));
        // A literal address: no answer.
        tally.record_at(&call("198.18.7.9", 443), Some(t0 + 4 * SECOND));
        // The connection first, the answer for its address after.
        tally.record_at(&call("198.18.7.3", 443), Some(t0 + 5 * SECOND));
        tally.record_answer(&answered("late.example.test", "198.18.7.3", 300, t0 + 6 * SECOND));
        // An answer whose TTL (at least the default min_ttl) ran out.
        tally.record_answer(&answered("old.example.test", "198.18.7.4", 1, t0));
        tally.record_at(&call("198.18.7.4", 443), Some(t0 + u64::from(DEFAULT_MIN_TTL + 1) * SECOND));
        // No time to join on: an address.
        tally.record_answer(&answered("untimed.example.test", "198.18.7.5", 300, t0));
        tally.record(&call("198.18.7.5", 443));
        // A name no rule can spell exactly: its address stays an address.
        tally.record_answer(&answered("*.wild.example.test", "198.18.7.6", 300, t0));
        tally.record_at(&call("198.18.7.6", 443), Some(t0 + SECOND));

        let rules = tally.rules();
        let to: Vec<&To> = rules.iter().map(|r| &r.to).collect();
        let addr = |a: &str| To::Addr(a.parse().unwrap());
        assert_eq!(
            to,
            [
                &To::Name("media.example.test".into()),
                &addr("198.18.7.3"),
                &addr("198.18.7.4"),
                &addr("198.18.7.5"),
                &addr("198.18.7.6"),
                &addr("198.18.7.9"),
            ],
            "{rules:#?}"
        );
        let named = &rules[0];
        assert_eq!((named.uses, named.ports.as_slice()), (3, [PortEntry::One(443)].as_slice()));
        assert_eq!(named.addrs, ["198.18.7.1".parse::<IpAddr>().unwrap(), "198.18.7.2".parse().unwrap()]);
        assert_eq!((tally.answers_seen, tally.unusable_names), (6, 1));
        let yaml = phase_yaml("learned", &rules, &[], Some(&["system".to_string()]), 2);
        assert!(yaml.contains("    dns: { resolvers: [system] }\n"), "{yaml}");
        assert!(yaml.contains("curl (cgroup /app): 3 times, pid 812; answered 198.18.7.1, 198.18.7.2\n"), "{yaml}");
        assert!(
            yaml.contains("- { name: learned-curl-1, to: [media.example.test], proto: tcp, ports: [443] }"),
            "{yaml}"
        );
    }

    #[test]
    fn learned_resolvers_are_system_and_the_servers_asked_directly_within_the_limits() {
        let direct: BTreeSet<IpAddr> =
            ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4", "198.18.0.5", "2001:db8::53"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect();
        let (resolvers, left_out) = learned_resolvers(&direct);
        assert_eq!(
            resolvers,
            ["system", "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4", "2001:db8::53"].map(String::from)
        );
        assert_eq!(left_out, ["198.18.0.5".parse::<IpAddr>().unwrap()]);
        let mut tally = Tally::default();
        tally.record(&Event { proto: UDP, ..call("198.18.0.53", 53) });
        tally.record(&call("198.18.0.54", 853));
        assert_eq!(tally.dns_servers(), BTreeSet::from(["198.18.0.53".parse::<IpAddr>().unwrap()]));
    }

    /// Issue 13: what the learned phase writes is YAML the policy parser
    /// reads back as the same values, however they must be quoted.
    #[test]
    fn learned_yaml_round_trips_tricky_values_through_the_policy_parser() {
        use crate::policy::{
            ir::{Protocols, Resolver},
            names::NamePattern,
        };
        let who = Who { comm: Some("curl".into()), place: Some("cgroup /a: #b".into()) };
        let rule = |name: &str, to: To, proto: &str, ports: Vec<PortEntry>| LearnedRule {
            name: name.into(),
            who: who.clone(),
            proto: proto.into(),
            to,
            ports,
            uses: 2,
            pids: vec![1, 2],
            addrs: vec![],
        };
        let rules = [
            rule(
                "learned-a:b #c-1",
                To::Name("*.media.example.test".into()),
                "tcp",
                vec![PortEntry::Range(8080, 8082), PortEntry::One(9000)],
            ),
            rule("- yes", To::Addr("2001:db8::7".parse().unwrap()), "udp", vec![PortEntry::One(53)]),
            rule("[x], {y}", To::Addr("198.18.0.1".parse().unwrap()), "icmp", vec![PortEntry::Icmp(8, 0)]),
            rule("'q\"", To::Name("**.example.test".into()), "tcp", vec![PortEntry::Range(1, 65535)]),
        ];
        let served = [ServedRule {
            name: "served: #1".into(),
            proto: "udp".into(),
            ports: vec![PortEntry::Range(40000, 40010)],
            peers: 3,
        }];
        let resolvers = ["system".to_string(), "2001:db8::53".to_string()];
        let text = policy_yaml("# learned\n", "learned", &rules, &served, Some(&resolvers));
        let no_dns = |_: &str| -> Result<Vec<IpAddr>, String> { Err("no resolving in a unit test".into()) };
        let loaded = crate::policy::parse_str_with_resolver(
            &text,
            "learned.yaml",
            &crate::policy::vars::Vars::default(),
            &no_dns,
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let policy = loaded.policy;
        let phase = policy.phase("learned").expect("the phase");
        assert_eq!(
            phase.dns.as_ref().map(|d| d.resolvers.clone()),
            Some(vec![Resolver::System, Resolver::Addr("2001:db8::53".parse().unwrap())])
        );
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["served: #1", "learned-a:b #c-1", "- yes", "[x], {y}", "'q\""], "{text}");
        let ports = |r: &crate::policy::ir::Rule| match &r.protocols {
            Protocols::Only(p) => {
                p.iter().map(|p| (p.proto, p.ports.iter().map(|r| (r.first, r.last)).collect())).collect()
            }
            Protocols::Any => Vec::<(u8, Vec<(u16, u16)>)>::new(),
        };
        assert_eq!(ports(&policy.rules[0]), [(17, vec![(40000, 40010)])]);
        assert_eq!(policy.rules[1].names, [NamePattern::OneLabel("media.example.test".into())]);
        assert_eq!(ports(&policy.rules[1]), [(6, vec![(8080, 8082), (9000, 9000)])]);
        assert_eq!(policy.rules[2].peers, ["2001:db8::7/128".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(ports(&policy.rules[2]), [(17, vec![(53, 53)])]);
        assert_eq!(policy.rules[3].peers, ["198.18.0.1/32".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(ports(&policy.rules[3]), [(1, vec![(8 << 8, 8 << 8)])]);
        assert_eq!(policy.rules[4].names, [NamePattern::OneOrMore("example.test".into())]);
        // The comments stay, on their own lines.
        assert!(text.contains("    # curl (cgroup /a: #b): 2 times, pids 1, 2\n"), "{text}");
    }
}
