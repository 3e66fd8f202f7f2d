//! `fw export`: a phase of a policy in another firewall's language, to
//! compare fw with it (the benchmarks do) or to migrate. Pure functions from
//! the validated policy to text; nothing here touches the kernel.
//!
//! Public API:
//! * [`nft`]`(&Policy, phase, &Options) -> Result<String, CompileError>`: an
//!   `nft -f` ruleset (table `inet fw`) built from the compiled tables, so it
//!   has fw's structure: one interval map per direction and family (peer
//!   address -> the chain of its address class) and one small chain per
//!   class ({protocol, port} -> verdict);
//! * [`iptables`]`(&Policy, phase, Family, &Options) -> Result<String, _>`:
//!   `iptables-restore --noflush` / `ip6tables-restore --noflush` input
//!   holding the policy as a linear list, the way it is usually written:
//!   every deny rule in file order, then every allow rule, then the phase
//!   default.
//!
//! The same semantics as fw (docs/policy.md): deny first, else allow, else
//! the phase default (egress: drop). Whatever passes by a rule or by an
//! allowing default admits its connection (conntrack mark bit 0), as a flow
//! opens in fw; packets of such a connection that conntrack has seen both
//! ways (established, or related ICMP errors) pass at once, as fw's flow
//! table passes them. So the replies to served inbound ports pass, and so
//! do the replies to what an allowing inbound default let in (it serves, as
//! in fw). ICMPv6 neighbour discovery and MLD always pass.
//!
//! The same scope as fw (issue 12, finding 6): fw enforces on one
//! interface, at its TC hooks, which see what this host sends and receives
//! there and what it forwards out of or in through it (a container's
//! traffic, routed or NATed). So the rules apply to that interface only
//! (`oifname`/`iifname`, `-o`/`-i`; the instance's, or `--iface`), on the
//! output and input hooks and on forward; without an interface, to every
//! interface but loopback, which fw never sees (OpenVidu Server reaches
//! Kurento over 127.0.0.1:8888). And they replace nothing else: the nft
//! table `inet fw` is fw's own; the iptables rules live in chains of their
//! own (`fw-egress`, `fw-inbound`) jumped to from OUTPUT, INPUT and
//! FORWARD, whose passes RETURN so the other chains (Docker's) still have
//! their say, as a packet fw passes still meets netfilter.
//!
//! Differences that remain: a one-way flow (UDP no peer answers) is
//! re-judged per packet (conntrack calls it established only once the peer
//! answered), where fw's flow table admits it on its first packet; a
//! forwarded packet that NAT rewrites is judged by netfilter's forward hook
//! before SNAT and after DNAT, by fw's TC hooks on the wire (the peer's
//! address and the destination port of a reply are the same either way,
//! a published port's number is not); audit mode is exported as enforcing;
//! fw's drops of malformed packets have no equivalent.

use std::{collections::HashMap, fmt::Write as _, net::IpAddr};

use fw_common::{
    policy::proto::{ICMP, ICMPV6, SCTP, TCP, UDP},
    Action, Direction,
};
use ipnet::IpNet;

use crate::{
    policy::compile::{compile_phase, tables::PortEntry, CompileError},
    policy::ir::{Policy, PortRange, Protocols, Rule},
};

/// The conntrack mark bit of connections a rule admitted.
pub const ADMITTED_MARK: u32 = 0x1;

/// Where the exported rules apply.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only packets leaving / arriving (or forwarded) through this
    /// interface, as fw enforces on one; `None`: every interface but
    /// loopback.
    pub iface: Option<String>,
}

/// The loopback interface, which fw never sees and the exports leave alone.
const LOOPBACK: &str = "lo";

/// Which of iptables' two programs the output is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `iptables-restore`: the IPv4 part of the policy.
    Ipv4,
    /// `ip6tables-restore`: the IPv6 part.
    Ipv6,
}

/// ICMPv6 types that always pass (neighbour discovery, MLD), as in the kernel.
const ICMPV6_CONTROL: &str = "130-137, 143";

fn header(policy: &Policy, phase: &str, tool: &str, options: &Options) -> String {
    let mut s = format!("# fw export {tool}: policy {} phase {phase} (from {})\n", policy.name, policy.file);
    match &options.iface {
        Some(iface) => {
            s += &format!("# scope: interface {iface}, as fw: what this host sends and receives there, and what it forwards through it\n")
        }
        None => s += "# scope: every interface but loopback (fw enforces on one: give --iface)\n",
    }
    if policy.phase(phase).is_some_and(|p| p.settings.audit) {
        s += "# note: fw runs this phase in audit mode (drops only counted); exported as enforcing\n";
    }
    s
}

/// An nft interface match for `field` (`oifname`/`iifname`): the
/// interface, or anything but loopback.
fn nft_scope(field: &str, options: &Options) -> String {
    match &options.iface {
        Some(iface) => format!("{field} \"{iface}\""),
        None => format!("{field} != \"{LOOPBACK}\""),
    }
}

/// The phase as an `nft -f` ruleset: table `inet fw`, replaced as a whole.
pub fn nft(policy: &Policy, phase: &str, options: &Options) -> Result<String, CompileError> {
    let compiled = compile_phase(policy, phase)?;
    let settings = compiled.settings;
    let mut out = header(policy, phase, "nft", options);
    out += "table inet fw {\n}\ndelete table inet fw\n\ntable inet fw {\n";
    let _ = writeln!(out, "\tchain admit {{\n\t\tct mark set ct mark | {ADMITTED_MARK:#x} accept\n\t}}");

    // One chain per distinct class body; a class whose only decision is
    // "any protocol" maps straight to its verdict.
    let mut by_class: HashMap<u32, Vec<&PortEntry>> = HashMap::new();
    for e in &compiled.ports {
        by_class.entry(e.class).or_default().push(e);
    }
    let mut chain_of_body: HashMap<String, String> = HashMap::new();
    let mut target_of_class: HashMap<u32, String> = HashMap::new();
    let mut classes: Vec<u32> = by_class.keys().copied().collect();
    classes.sort_unstable();
    for class in classes {
        let body = class_chain_body(&by_class[&class]);
        let target = match body.as_slice() {
            [] => continue,
            [only] if only == "drop" || only == "jump admit" => only.clone(),
            _ => {
                let text: String = body.iter().map(|l| format!("\t\t{l}\n")).collect();
                let next = format!("c{}", chain_of_body.len());
                let name = chain_of_body.entry(text.clone()).or_insert_with(|| {
                    let _ = write!(out, "\tchain {next} {{\n{text}\t}}\n");
                    next.clone()
                });
                format!("jump {name}")
            }
        };
        target_of_class.insert(class, target);
    }

    let mut lookups: HashMap<Direction, Vec<String>> = HashMap::new();
    for direction in Direction::ALL {
        let v4: Vec<(u128, u8, u32)> = compiled
            .addr4
            .iter()
            .filter(|e| e.direction == direction)
            .map(|e| (u128::from(u32::from(e.addr)), 32 - e.prefix_len, e.class))
            .collect();
        let v6: Vec<(u128, u8, u32)> = compiled
            .addr6
            .iter()
            .filter(|e| e.direction == direction)
            .map(|e| (u128::from(e.addr), 128 - e.prefix_len, e.class))
            .collect();
        let (field, name) = match direction {
            Direction::Egress => ("daddr", "egress"),
            Direction::Inbound => ("saddr", "inbound"),
        };
        for (entries, family, addr_type, is_v4) in [(v4, "ip", "ipv4_addr", true), (v6, "ip6", "ipv6_addr", false)] {
            let elements: Vec<String> = flatten(&entries)
                .into_iter()
                .filter_map(|(first, last, class)| {
                    let target = target_of_class.get(&class)?;
                    let addr = |a: u128| {
                        if is_v4 {
                            IpAddr::from((a as u32).to_be_bytes())
                        } else {
                            IpAddr::from(a.to_be_bytes())
                        }
                    };
                    Some(if first == last {
                        format!("{} : {target}", addr(first))
                    } else {
                        format!("{}-{} : {target}", addr(first), addr(last))
                    })
                })
                .collect();
            if elements.is_empty() {
                continue;
            }
            let map = format!("{name}{}", if is_v4 { 4 } else { 6 });
            let _ = writeln!(out, "\tmap {map} {{\n\t\ttype {addr_type} : verdict\n\t\tflags interval");
            out += "\t\telements = {\n";
            for (i, e) in elements.iter().enumerate() {
                let _ = writeln!(out, "\t\t\t{e}{}", if i + 1 < elements.len() { "," } else { "" });
            }
            out += "\t\t}\n\t}\n";
            lookups.entry(direction).or_default().push(format!("{family} {field} vmap @{map}"));
        }
    }

    // The decision of each direction, in a chain of its own...
    for direction in Direction::ALL {
        let (chain, default) = match direction {
            Direction::Egress => ("egress", settings.egress_default),
            Direction::Inbound => ("inbound", settings.inbound_default),
        };
        let _ = writeln!(out, "\tchain {chain} {{");
        let _ =
            writeln!(out, "\t\tct state established,related ct mark & {ADMITTED_MARK:#x} == {ADMITTED_MARK:#x} accept");
        let _ = writeln!(out, "\t\tmeta l4proto ipv6-icmp icmpv6 type {{ {ICMPV6_CONTROL} }} accept");
        for lookup in lookups.get(&direction).into_iter().flatten() {
            let _ = writeln!(out, "\t\t{lookup}");
        }
        // An allowing default admits, as a rule does: it serves.
        let _ = writeln!(out, "\t\t{}\n\t}}", nft_verdict_of_rule(default));
    }
    // ...jumped to from the hooks fw's TC hooks cover: what this host sends
    // and receives through the interface, and what it forwards out of or
    // in through it. Forwarded packets meet both directions, at two
    // priorities: an accept ends one base chain, not the hook.
    let (out_dev, in_dev) = (nft_scope("oifname", options), nft_scope("iifname", options));
    for (chain, hook, priority, rule) in [
        ("output", "output", "filter", format!("{out_dev} jump egress")),
        ("input", "input", "filter", format!("{in_dev} jump inbound")),
        ("forward_in", "forward", "filter - 1", format!("{in_dev} jump inbound")),
        ("forward_out", "forward", "filter", format!("{out_dev} jump egress")),
    ] {
        let _ = writeln!(
            out,
            "\tchain {chain} {{\n\t\ttype filter hook {hook} priority {priority}; policy accept;\n\t\t{rule}\n\t}}"
        );
    }
    out += "}\n";
    Ok(out)
}

fn nft_verdict_of_rule(action: Action) -> &'static str {
    match action {
        Action::Allow => "jump admit",
        Action::Deny => "drop",
    }
}

fn nft_proto(proto: u8) -> String {
    match proto {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        SCTP => "sctp".into(),
        ICMP => "icmp".into(),
        ICMPV6 => "ipv6-icmp".into(),
        other => other.to_string(),
    }
}

/// The rules of one class chain: per protocol, the port segments that have a
/// decision of their own, then the class's "any protocol" decision.
fn class_chain_body(entries: &[&PortEntry]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut protos: Vec<u8> = entries.iter().filter_map(|e| e.proto).collect();
    protos.sort_unstable();
    protos.dedup();
    for proto in protos {
        let blocks: Vec<&PortEntry> = entries.iter().copied().filter(|e| e.proto == Some(proto)).collect();
        let mut by_action: Vec<(Action, Vec<String>)> = Vec::new();
        for (first, last, action) in port_segments(&blocks) {
            let text = if first == last { first.to_string() } else { format!("{first}-{last}") };
            match by_action.iter_mut().find(|(a, _)| *a == action) {
                Some((_, list)) => list.push(text),
                None => by_action.push((action, vec![text])),
            }
        }
        // The port field is the destination port, or ICMP type << 8 | code:
        // the first 16 bits of the ICMP header.
        let field = if proto == ICMP || proto == ICMPV6 { "@th,0,16" } else { "th dport" };
        by_action.sort_by_key(|(a, _)| *a);
        for (action, ports) in by_action {
            lines.push(format!(
                "meta l4proto {} {field} {{ {} }} {}",
                nft_proto(proto),
                ports.join(", "),
                nft_verdict_of_rule(action)
            ));
        }
    }
    if let Some(any) = entries.iter().find(|e| e.proto.is_none()) {
        lines.push(nft_verdict_of_rule(any.value.action()).to_string());
    }
    lines
}

/// Disjoint port segments (first, last, action) where the longest of
/// `blocks` (aligned prefixes of one protocol) decides.
fn port_segments(blocks: &[&PortEntry]) -> Vec<(u16, u16, Action)> {
    let ranges: Vec<(u128, u8, Action)> =
        blocks.iter().map(|b| (u128::from(b.port), 16 - b.port_prefix_len, b.value.action())).collect();
    flatten(&ranges).into_iter().map(|(f, l, a)| (f as u16, l as u16, a)).collect()
}

/// Nested prefixes (first value, host bits, label) -> disjoint, merged
/// intervals (first, last, label) where each point gets the label of the
/// longest prefix containing it. Prefixes never partly overlap.
fn flatten<T: Copy + PartialEq>(prefixes: &[(u128, u8, T)]) -> Vec<(u128, u128, T)> {
    let last_of = |start: u128, host_bits: u8| {
        if host_bits >= 128 {
            u128::MAX
        } else {
            start | ((1u128 << host_bits) - 1)
        }
    };
    let mut sorted: Vec<(u128, u128, T)> = prefixes.iter().map(|&(s, h, t)| (s, last_of(s, h), t)).collect();
    // By start, the larger (enclosing) prefix first.
    sorted.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out: Vec<(u128, u128, T)> = Vec::new();
    let push = |out: &mut Vec<(u128, u128, T)>, first: u128, last: u128, label: T| match out.last_mut() {
        Some(prev) if prev.2 == label && prev.1.checked_add(1) == Some(first) => prev.1 = last,
        _ => out.push((first, last, label)),
    };
    // Enclosing prefixes (last, label); `cursor`: the first point not yet
    // written (None once u128::MAX was written).
    let mut stack: Vec<(u128, T)> = Vec::new();
    let mut cursor: Option<u128> = Some(0);
    for (first, last, label) in sorted {
        while let Some(&(top_last, top_label)) = stack.last() {
            if top_last >= first {
                break;
            }
            if let Some(c) = cursor.filter(|c| *c <= top_last) {
                push(&mut out, c, top_last, top_label);
            }
            cursor = cursor.map(|c| c.max(top_last.wrapping_add(1))).filter(|_| top_last != u128::MAX);
            stack.pop();
        }
        if let (Some(&(_, top_label)), Some(c)) = (stack.last(), cursor) {
            if c < first {
                push(&mut out, c, first - 1, top_label);
            }
        }
        cursor = Some(first);
        stack.push((last, label));
    }
    while let Some((top_last, top_label)) = stack.pop() {
        if let Some(c) = cursor.filter(|c| *c <= top_last) {
            push(&mut out, c, top_last, top_label);
        }
        cursor = if top_last == u128::MAX { None } else { cursor.map(|c| c.max(top_last + 1)) };
    }
    out
}

/// The phase as `iptables-restore --noflush` (or `ip6tables-restore
/// --noflush`) input: chains `fw-egress` and `fw-inbound` of its own
/// (flushed and refilled on every load), jumped to from the top of OUTPUT,
/// INPUT and FORWARD. A pass RETURNs, so the table's other rules (Docker's)
/// still decide after fw's, as netfilter does after fw's TC hooks.
pub fn iptables(policy: &Policy, phase: &str, family: Family, options: &Options) -> Result<String, CompileError> {
    let unknown = || CompileError::UnknownPhase {
        phase: phase.to_string(),
        known: policy.phases.iter().map(|p| p.name.clone()).collect(),
    };
    let settings = policy.phase(phase).ok_or_else(unknown)?.settings;
    let rules = policy.rules_of_phase(phase).ok_or_else(unknown)?;
    let tool = if family == Family::Ipv4 { "iptables" } else { "ip6tables" };
    let (out_dev, in_dev) = match &options.iface {
        Some(iface) => (format!("-o {iface}"), format!("-i {iface}")),
        None => (format!("! -o {LOOPBACK}"), format!("! -i {LOOPBACK}")),
    };
    let jumps = [
        format!("OUTPUT {out_dev} -j fw-egress"),
        format!("INPUT {in_dev} -j fw-inbound"),
        format!("FORWARD {out_dev} -j fw-egress"),
        format!("FORWARD {in_dev} -j fw-inbound"),
    ];
    let mut out = header(policy, phase, tool, options);
    let _ = writeln!(
        out,
        "# load with `{tool}-restore --noflush`: only the fw-* chains are replaced, nothing else.\n\
         # The jumps below are inserted at the top of OUTPUT, INPUT and FORWARD; before loading\n\
         # again, remove the previous ones:"
    );
    for jump in &jumps {
        let _ = writeln!(out, "#   {tool} -D {jump}");
    }
    out += "*filter\n:fw-egress - [0:0]\n:fw-inbound - [0:0]\n";
    for jump in &jumps {
        let _ = writeln!(out, "-I {}", jump.replacen(' ', " 1 ", 1));
    }
    for direction in Direction::ALL {
        let (chain, addr_flag, default) = match direction {
            Direction::Egress => ("fw-egress", "-d", settings.egress_default),
            Direction::Inbound => ("fw-inbound", "-s", settings.inbound_default),
        };
        let _ = writeln!(
            out,
            "-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -m connmark --mark {ADMITTED_MARK:#x}/{ADMITTED_MARK:#x} -j RETURN"
        );
        if family == Family::Ipv6 {
            for ty in (130..=137).chain([143]) {
                let _ = writeln!(out, "-A {chain} -p ipv6-icmp -m icmp6 --icmpv6-type {ty} -j RETURN");
            }
        }
        let of_direction = || rules.iter().copied().filter(|r| r.direction == direction);
        let ordered = of_direction()
            .filter(|r| r.action == Action::Deny)
            .chain(of_direction().filter(|r| r.action == Action::Allow));
        for rule in ordered {
            write_iptables_rule(&mut out, chain, addr_flag, rule, family);
        }
        // Admitted (by a rule above, or now by an allowing default): pass.
        if default == Action::Allow {
            let _ = writeln!(out, "-A {chain} -j CONNMARK --or-mark {ADMITTED_MARK:#x}");
        }
        let _ = writeln!(out, "-A {chain} -m connmark --mark {ADMITTED_MARK:#x}/{ADMITTED_MARK:#x} -j RETURN");
        let _ = writeln!(out, "-A {chain} -j DROP");
    }
    out += "COMMIT\n";
    Ok(out)
}

fn write_iptables_rule(out: &mut String, chain: &str, addr_flag: &str, rule: &Rule, family: Family) {
    let peers: Vec<&IpNet> = rule
        .peers
        .iter()
        .filter(|n| matches!((n, family), (IpNet::V4(_), Family::Ipv4) | (IpNet::V6(_), Family::Ipv6)))
        .collect();
    if peers.is_empty() {
        return;
    }
    // An allow marks the connection admitted and goes on (CONNMARK does
    // not end the chain); the mark decides at the end of the chain.
    let target = if rule.action == Action::Allow {
        format!("CONNMARK --or-mark {ADMITTED_MARK:#x}")
    } else {
        "DROP".to_string()
    };
    let matches: Vec<String> = match &rule.protocols {
        Protocols::Any => vec![String::new()],
        Protocols::Only(list) => list.iter().flat_map(|p| protocol_matches(p.proto, &p.ports, family)).collect(),
    };
    if matches.is_empty() {
        return;
    }
    let _ = writeln!(out, "# rule {} ({})", rule.name.replace('\n', " "), rule.direction.as_str());
    for peer in peers {
        let addr = if peer.prefix_len() == 0 { String::new() } else { format!(" {addr_flag} {peer}") };
        for m in &matches {
            let _ = writeln!(out, "-A {chain}{addr}{m} -j {target}");
        }
    }
}

/// `-p PROTO` plus port matches: multiport lists of at most 15 slots (a
/// range takes two), or ICMP types and codes. Empty for a protocol of the
/// other family.
fn protocol_matches(proto: u8, ports: &[PortRange], family: Family) -> Vec<String> {
    match (proto, family) {
        (ICMP, Family::Ipv4) => icmp_matches(" -p icmp -m icmp --icmp-type", ports),
        (ICMPV6, Family::Ipv6) => icmp_matches(" -p ipv6-icmp -m icmp6 --icmpv6-type", ports),
        (ICMP | ICMPV6, _) => Vec::new(),
        _ => {
            let name = nft_proto(proto);
            if ports == [PortRange::ALL] {
                return vec![format!(" -p {name}")];
            }
            let mut lists: Vec<(usize, Vec<String>)> = Vec::new();
            for r in ports {
                let (slots, text) =
                    if r.first == r.last { (1, r.first.to_string()) } else { (2, format!("{}:{}", r.first, r.last)) };
                match lists.last_mut() {
                    Some((used, list)) if *used + slots <= 15 => {
                        *used += slots;
                        list.push(text);
                    }
                    _ => lists.push((slots, vec![text])),
                }
            }
            lists
                .into_iter()
                .map(|(_, list)| match list.as_slice() {
                    [one] => format!(" -p {name} -m {name} --dport {one}"),
                    _ => format!(" -p {name} -m multiport --dports {}", list.join(",")),
                })
                .collect()
        }
    }
}

/// ICMP `type << 8 | code` ranges as `--icmp-type T` (a whole type) or `T/C`.
fn icmp_matches(prefix: &str, ranges: &[PortRange]) -> Vec<String> {
    if ranges == [PortRange::ALL] {
        return vec![prefix.rsplit_once(" -m").map_or(prefix, |(p, _)| p).to_string()];
    }
    let mut out = Vec::new();
    for r in ranges {
        for ty in (r.first >> 8)..=(r.last >> 8) {
            let (lo, hi) = (ty << 8, ty << 8 | 0xff);
            if r.first <= lo && hi <= r.last {
                out.push(format!("{prefix} {ty}"));
            } else {
                for code in r.first.max(lo)..=r.last.min(hi) {
                    out.push(format!("{prefix} {ty}/{}", code & 0xff));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse_str_with_resolver, Vars};

    fn policy(yaml: &str) -> Policy {
        let vars = Vars::from_pairs::<&str, &str>([]);
        parse_str_with_resolver(yaml, "t.yaml", &vars, &|h| Err(format!("no DNS ({h})"))).unwrap().policy
    }

    const SMALL: &str = r#"
name: small
phases:
  runtime:
    inbound:
      - { name: https, proto: tcp, ports: [443] }
    egress:
      - { name: no-smtp, to: [any], proto: tcp, ports: [25], action: deny }
      - { name: corp, to: [198.18.0.0/16, "2001:db8::/32"], proto: [tcp, udp], ports: [443, "8000-8100"] }
      - { name: host, to: [198.18.5.5], proto: any }
      - { name: ping, to: [198.19.0.0/24], proto: icmp, ports: [8] }
"#;

    #[test]
    fn flatten_gives_each_point_its_longest_prefix() {
        // 0/0 -> a, 16/4 (16..=31) -> b, 20/2 (20..=23) -> c, 40/3 -> a.
        let got = flatten(&[(0, 8, 'a'), (16, 4, 'b'), (20, 2, 'c'), (40, 3, 'a')]);
        assert_eq!(got, vec![(0, 15, 'a'), (16, 19, 'b'), (20, 23, 'c'), (24, 31, 'b'), (32, 255, 'a')]);
        // The whole space, with the last point inside a prefix.
        let got = flatten(&[(0, 128, 'x'), (u128::MAX - 1, 1, 'y')]);
        assert_eq!(got, vec![(0, u128::MAX - 2, 'x'), (u128::MAX - 1, u128::MAX, 'y')]);
    }

    #[test]
    fn nft_keeps_precedence_and_state() {
        let text = nft(&policy(SMALL), "runtime", &Options { iface: Some("veth0".into()) }).unwrap();
        assert!(text.contains("ct state established,related ct mark & 0x1 == 0x1 accept"), "{text}");
        // 198.18.5.5 has its own class: smtp denied before anything is allowed.
        assert!(text.contains("meta l4proto tcp th dport { 25 } drop"), "{text}");
        assert!(text.contains("th dport { 443, 8000-8100 } jump admit"), "{text}");
        assert!(text.contains("@th,0,16 { 2048-2303 } jump admit"), "{text}");
        assert!(text.contains("ip daddr vmap @egress4"), "{text}");
        assert!(text.contains("ip6 daddr vmap @egress6"), "{text}");
        assert!(text.contains("ip saddr vmap @inbound4"), "{text}");
        // The egress default closes the egress chain; the inbound default
        // admits (it serves).
        let egress = &text[text.find("chain egress").unwrap()..text.find("chain inbound").unwrap()];
        assert!(egress.trim_end().ends_with("drop\n\t}"), "{egress}");
        let inbound = &text[text.find("chain inbound").unwrap()..text.find("chain output").unwrap()];
        assert!(inbound.trim_end().ends_with("jump admit\n\t}"), "{inbound}");
        // Elements never overlap: 198.18.5.5 sits between two halves of /16.
        assert!(text.contains("198.18.0.0-198.18.5.4 : jump"), "{text}");
        assert!(text.contains("198.18.5.5 : jump"), "{text}");
        assert!(text.contains("198.18.5.6-198.18.255.255 : jump"), "{text}");
    }

    /// Issue 12, finding 6: the exports filtered loopback (OpenVidu Server
    /// to Kurento, 127.0.0.1:8888) and left forwarded traffic alone, where
    /// fw enforces on one interface, forwarded packets included.
    #[test]
    fn finding6_exports_have_fws_scope() {
        let bound = Options { iface: Some("veth0".into()) };
        let text = nft(&policy(SMALL), "runtime", &bound).unwrap();
        for hook in [
            "chain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t\toifname \"veth0\" jump egress\n\t}",
            "chain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tiifname \"veth0\" jump inbound\n\t}",
            "chain forward_in {\n\t\ttype filter hook forward priority filter - 1; policy accept;\n\t\tiifname \"veth0\" jump inbound\n\t}",
            "chain forward_out {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\toifname \"veth0\" jump egress\n\t}",
        ] {
            assert!(text.contains(hook), "missing {hook:?} in:\n{text}");
        }
        let anywhere = nft(&policy(SMALL), "runtime", &Options::default()).unwrap();
        assert!(anywhere.contains("oifname != \"lo\" jump egress") && anywhere.contains("iifname != \"lo\" jump inbound"), "{anywhere}");
        assert!(anywhere.contains("# scope: every interface but loopback"), "{anywhere}");

        let ipt = iptables(&policy(SMALL), "runtime", Family::Ipv4, &bound).unwrap();
        for jump in [
            "-I OUTPUT 1 -o veth0 -j fw-egress",
            "-I INPUT 1 -i veth0 -j fw-inbound",
            "-I FORWARD 1 -o veth0 -j fw-egress",
            "-I FORWARD 1 -i veth0 -j fw-inbound",
        ] {
            assert!(ipt.contains(jump), "missing {jump:?} in:\n{ipt}");
        }
        // Nothing but fw's own chains: no flush of the table, no policy of
        // a built-in chain, no ACCEPT that would skip the rules after fw's.
        assert!(ipt.contains("load with `iptables-restore --noflush`"), "{ipt}");
        assert!(!ipt.lines().any(|l| l.starts_with(":INPUT") || l.starts_with(":OUTPUT") || l.starts_with(":FORWARD")), "{ipt}");
        assert!(!ipt.contains("-j ACCEPT"), "{ipt}");
        let anywhere = iptables(&policy(SMALL), "runtime", Family::Ipv4, &Options::default()).unwrap();
        assert!(anywhere.contains("-I OUTPUT 1 ! -o lo -j fw-egress") && anywhere.contains("-I INPUT 1 ! -i lo -j fw-inbound"), "{anywhere}");
    }

    #[test]
    fn iptables_is_linear_deny_first() {
        let text = iptables(&policy(SMALL), "runtime", Family::Ipv4, &Options { iface: Some("veth0".into()) }).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("-A fw-egress")).collect();
        assert_eq!(
            lines,
            [
                "-A fw-egress -m conntrack --ctstate ESTABLISHED,RELATED -m connmark --mark 0x1/0x1 -j RETURN",
                "-A fw-egress -p tcp -m tcp --dport 25 -j DROP",
                "-A fw-egress -d 198.18.0.0/16 -p tcp -m multiport --dports 443,8000:8100 -j CONNMARK --or-mark 0x1",
                "-A fw-egress -d 198.18.0.0/16 -p udp -m multiport --dports 443,8000:8100 -j CONNMARK --or-mark 0x1",
                "-A fw-egress -d 198.18.5.5/32 -j CONNMARK --or-mark 0x1",
                "-A fw-egress -d 198.19.0.0/24 -p icmp -m icmp --icmp-type 8 -j CONNMARK --or-mark 0x1",
                "-A fw-egress -m connmark --mark 0x1/0x1 -j RETURN",
                "-A fw-egress -j DROP",
            ]
        );
        assert!(
            text.contains(
                "-A fw-inbound -p tcp -m tcp --dport 443 -j CONNMARK --or-mark 0x1\n\
                 -A fw-inbound -j CONNMARK --or-mark 0x1\n\
                 -A fw-inbound -m connmark --mark 0x1/0x1 -j RETURN\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("COMMIT\n"));

        let v6 = iptables(&policy(SMALL), "runtime", Family::Ipv6, &Options::default()).unwrap();
        assert!(
            v6.contains("-A fw-egress -d 2001:db8::/32 -p udp -m multiport --dports 443,8000:8100 -j CONNMARK --or-mark 0x1"),
            "{v6}"
        );
        assert!(v6.contains("--icmpv6-type 135 -j RETURN"));
        assert!(!v6.contains("198.18."));
        assert!(!v6.contains("icmp-type 8"));
    }

    #[test]
    fn multiport_lists_hold_at_most_15_slots_and_icmp_codes_split() {
        let ranges: Vec<PortRange> =
            (0..10).map(|i| PortRange { first: 1000 + i * 10, last: 1000 + i * 10 + 1 }).collect();
        let m = protocol_matches(TCP, &ranges, Family::Ipv4);
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m[0].matches(':').count(), 7);
        let icmp = icmp_matches(" -p icmp -m icmp --icmp-type", &[PortRange { first: 0x0303, last: 0x0304 }]);
        assert_eq!(icmp, [" -p icmp -m icmp --icmp-type 3/3", " -p icmp -m icmp --icmp-type 3/4"]);
        assert_eq!(icmp_matches(" -p icmp -m icmp --icmp-type", &[PortRange::ALL]), [" -p icmp"]);
    }
}
