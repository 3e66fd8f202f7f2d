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

use fw_common::Reason;

use crate::daemon::events::{reader::Sink, DecodeError, Event};

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
    calls: BTreeMap<Dest, BTreeMap<Who, Calls>>,
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

    fn undecodable(&mut self, _error: DecodeError) {
        self.undecodable += 1;
    }
}

impl Tally {
    /// Counts one event; anything but an egress would-drop (or drop by the
    /// phase default) is not a flow to learn.
    pub fn record(&mut self, event: &Event) {
        let learnable = [Reason::PassAudit, Reason::DropDefault, Reason::DropSocket].map(Reason::as_str);
        if event.direction != "egress"
            || !learnable.contains(&event.reason.as_str())
            || is_icmp_error(event)
            || is_echo_reply(event)
        {
            return;
        }
        let dest = (event.proto.clone(), event.dst, event.dst_port);
        if event.source == "socket" {
            let calls = self.calls.entry(dest).or_default().entry(Who::of(event)).or_default();
            calls.count += 1;
            calls.pids.extend(event.pid);
        } else {
            let packets = self.packets.entry(dest).or_default();
            packets.src_ports.extend(event.src_port);
            packets.who.insert(Who::of(event));
        }
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
        // (who, proto, address) -> ports, uses, pids
        type Group = (BTreeSet<u16>, u64, BTreeSet<u32>);
        let mut groups: BTreeMap<(Who, String, IpAddr), Group> = BTreeMap::new();
        for (dest, by_who) in &self.calls {
            for (who, calls) in by_who {
                let g = groups.entry((who.clone(), dest.0.clone(), dest.1)).or_default();
                g.0.insert(dest.2);
                g.1 += calls.count;
                g.2.extend(&calls.pids);
            }
        }
        for (dest, packets, opened) in self.opened_packets() {
            if self.calls.contains_key(dest) {
                continue;
            }
            // Packets of several cgroups to one destination: the first
            // names the rule, the comment lists them all.
            let who = packets.who.iter().next().cloned().unwrap_or(Who { comm: None, place: None });
            let g = groups.entry((who, dest.0.clone(), dest.1)).or_default();
            g.0.insert(dest.2);
            g.1 += opened.max(1) as u64;
        }
        let mut used_names = BTreeSet::new();
        groups
            .into_iter()
            .map(|((who, proto, addr), (ports, uses, pids))| LearnedRule {
                name: unique_name(&who, &mut used_names),
                ports: if is_icmp(&proto) {
                    ports.iter().map(|p| icmp_entry(*p)).collect()
                } else {
                    fold_ports(&ports)
                },
                who,
                proto,
                addr,
                uses,
                pids: pids.into_iter().collect(),
            })
            .collect()
    }
}

/// An ICMP error this host sent (port unreachable for a late reply...):
/// it answers a flow, and the datapath passes such errors when that flow
/// is allowed and tracked, so it is not a flow of its own to learn.
fn is_icmp_error(event: &Event) -> bool {
    let kind = event.dst_port >> 8;
    match event.proto.as_str() {
        // destination unreachable, source quench, time exceeded, parameter problem
        "icmp" => matches!(kind, 3 | 4 | 11 | 12),
        // destination unreachable, packet too big, time exceeded, parameter problem
        "icmpv6" => matches!(kind, 1..=4),
        _ => false,
    }
}

/// An echo reply answers a peer's echo request: served, never opened.
fn is_echo_reply(event: &Event) -> bool {
    let kind = event.dst_port >> 8;
    matches!((event.proto.as_str(), kind), ("icmp", 0) | ("icmpv6", 129))
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
    pub addr: IpAddr,
    pub ports: Vec<PortEntry>,
    /// Calls (or, seen only as packets, connections) that used it.
    pub uses: u64,
    pub pids: Vec<u32>,
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
    fn yaml(self) -> String {
        match self {
            PortEntry::One(p) => p.to_string(),
            PortEntry::Range(a, b) => format!("\"{a}-{b}\""),
            PortEntry::Icmp(t, c) => format!("\"{t}/{c}\""),
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

/// The phase `phase` with `served` as its inbound and `rules` as its
/// egress, indented by `indent` spaces (the indentation of the phase names
/// in the file it goes into).
pub fn phase_yaml(phase: &str, rules: &[LearnedRule], served: &[ServedRule], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    let _ = writeln!(out, "{pad}{phase}:");
    if !served.is_empty() {
        let _ = writeln!(out, "{pad}  # What this host served: peers opened these flows, so their replies pass");
        let _ = writeln!(out, "{pad}  # (the inbound default allows; these rules name them, and keep them");
        let _ = writeln!(out, "{pad}  # served under `inbound_default: drop`).");
        let _ = writeln!(out, "{pad}  inbound:");
        for rule in served {
            let ports: Vec<String> = rule.ports.iter().map(|p| p.yaml()).collect();
            let peers = if rule.peers == 1 { "1 peer".to_string() } else { format!("{} peers", rule.peers) };
            let _ = writeln!(out, "{pad}    # {peers}");
            let _ = writeln!(
                out,
                "{pad}    - {{ name: {}, proto: {}, ports: [{}] }}",
                rule.name,
                rule.proto,
                ports.join(", ")
            );
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
        let _ = writeln!(out, "{pad}    # {}: {times}{pids}", rule.who.describe());
        let ports: Vec<String> = rule.ports.iter().map(|p| p.yaml()).collect();
        let _ = writeln!(
            out,
            "{pad}    - {{ name: {}, to: [\"{}\"], proto: {}, ports: [{}] }}",
            rule.name,
            rule.addr,
            rule.proto,
            ports.join(", ")
        );
    }
    out
}

/// A whole policy holding the learned phase.
pub fn policy_yaml(header: &str, phase: &str, rules: &[LearnedRule], served: &[ServedRule]) -> String {
    format!("{header}name: learned\nphases:\n{}", phase_yaml(phase, rules, served, 2))
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
    out.push_str(&phase_yaml(phase, rules, served, indent));
    Ok(out)
}

#[cfg(test)]
mod tests {
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

    fn event(source: &str, comm: Option<&str>, dst: &str, port: u16, src_port: Option<u16>) -> Event {
        Event {
            seq: 0,
            time: 0.0,
            reason: "pass_audit".into(),
            direction: "egress".into(),
            audit: true,
            source: source.into(),
            rule_id: None,
            rule: None,
            proto: "tcp".into(),
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
            tally.record(&event("socket", Some("curl"), "198.18.1.2", port, None));
            // The same connection's packets add nothing.
            tally.record(&event("packet", None, "198.18.1.2", port, Some(40000)));
        }
        tally.record(&event("socket", Some("curl"), "198.18.1.2", 8080, None));
        tally.record(&event("packet", None, "198.18.1.3", 53, Some(5000)));
        tally.record(&event("packet", None, "198.18.1.3", 53, Some(5001)));
        let inbound = Event { direction: "inbound".into(), ..event("packet", None, "198.18.1.9", 1, Some(1)) };
        tally.record(&inbound);
        let port_unreachable = Event { proto: "icmp".into(), ..event("packet", None, "198.18.1.9", 3 << 8 | 3, None) };
        tally.record(&port_unreachable);
        let echo_request = Event { proto: "icmp".into(), ..event("packet", None, "198.18.1.4", 8 << 8, None) };
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
        let yaml = phase_yaml("learned", &rules, &[], 2);
        assert!(yaml.contains("    # curl (cgroup /app): 5 times, pid 812\n"), "{yaml}");
        assert!(
            yaml.contains("- { name: learned-curl-1, to: [\"198.18.1.2\"], proto: tcp, ports: [\"8080-8082\", 9000] }"),
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
        tally.record(&Event { proto: "udp".into(), ..event("packet", None, "198.18.1.9", 38392, Some(5005)) });
        tally.record(&event("packet", None, "198.18.1.9", 41000, Some(8080)));
        tally.record(&Event { proto: "icmp".into(), ..event("packet", None, "198.18.1.9", 0, None) });
        // A download this host opened from a port that is no reply.
        tally.record(&event("packet", None, "198.18.1.2", 80, Some(50000)));
        tally.observe_inbound("udp", 5005, client, 38392);
        tally.observe_inbound("tcp", 8080, client, 41001);
        tally.observe_inbound("tcp", 8081, client, 41002);
        tally.observe_listening(8080);
        let rules = tally.rules();
        assert_eq!(rules.len(), 1, "{rules:#?}");
        assert_eq!(
            (rules[0].addr.to_string(), rules[0].ports.as_slice()),
            ("198.18.1.2".into(), [PortEntry::One(80)].as_slice())
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
        let yaml = phase_yaml("learned", &rules, &served, 2);
        assert!(
            yaml.contains(
                "    inbound:\n      # 1 peer\n      - { name: served-tcp, proto: tcp, ports: [\"8080-8081\"] }"
            ),
            "{yaml}"
        );
        assert!(!yaml.contains("38392") && !yaml.contains("41000"), "{yaml}");
    }

    #[test]
    fn the_learned_phase_is_appended_at_the_files_phase_indentation() {
        let base = "name: x\nphases:\n    runtime:\n        egress: []\n";
        let out = append_phase(base, "# learned\n", "seen", &[], &[]).unwrap();
        assert!(
            out.ends_with(
                "\n    # learned\n    seen:\n      # nothing was seen: this phase allows no egress\n      egress: []\n"
            ),
            "{out}"
        );
        assert!(append_phase("phases:\n  a: {}\nname: x\n", "", "seen", &[], &[]).is_err());
    }
}
