//! `fw export`: a phase of a policy in another firewall's language, to
//! compare fw with it (the benchmarks do) or to migrate. Pure functions from
//! the validated policy to text; nothing here touches the kernel.
//!
//! Public API:
//! * [`nft`]`(&Policy, phase, &Options) -> Result<String, CompileError>`: an
//!   `nft -f` ruleset (table `inet fw`) written the way a good nftables
//!   ruleset is: per direction, family and verdict kind (deny, then allow)
//!   concatenated interval sets (`ip daddr . meta l4proto . th dport`, and
//!   the same with the protocol alone or ICMP type and code), one rule
//!   looking each up; the size of the rules, and looked up in O(log n);
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

use std::{collections::BTreeMap, fmt::Write as _};

use fw_common::{
    policy::proto::{ICMP, ICMPV6, SCTP, TCP, UDP},
    Action, Direction,
};
use ipnet::IpNet;

use crate::{
    policy::compile::CompileError,
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
    let unknown = || CompileError::UnknownPhase {
        phase: phase.to_string(),
        known: policy.phases.iter().map(|p| p.name.clone()).collect(),
    };
    let settings = policy.phase(phase).ok_or_else(unknown)?.settings;
    let rules = policy.rules_of_phase(phase).ok_or_else(unknown)?;
    let mut out = header(policy, phase, "nft", options);
    out += "table inet fw {\n}\ndelete table inet fw\n\ntable inet fw {\n";
    // A packet conntrack does not track (an ICMP echo reply nobody asked
    // for, an unknown ICMPv6 type) has no mark to set: reading it ends the
    // first rule, and without the second the packet fell through to the
    // default, where fw passes it.
    let _ = writeln!(out, "\tchain admit {{\n\t\tct mark set ct mark | {ADMITTED_MARK:#x} accept\n\t\taccept\n\t}}");

    // Per direction, the lookups of its chain: every deny set, then every
    // allow set (deny takes precedence whatever the file order).
    let mut lookups: Vec<(Direction, Vec<String>)> = Vec::new();
    for direction in Direction::ALL {
        let (field, name) = match direction {
            Direction::Egress => ("daddr", "egress"),
            Direction::Inbound => ("saddr", "inbound"),
        };
        let mut lines = Vec::new();
        let of_direction: Vec<&Rule> = rules.iter().copied().filter(|r| r.direction == direction).collect();
        let mut by_kind: Vec<(Action, Family, VerdictSets)> = Vec::new();
        for family in [Family::Ipv4, Family::Ipv6] {
            let (deny, allow) = decided_boxes(&own_spans(&of_direction, family));
            by_kind.push((Action::Deny, family, VerdictSets::of(&deny, family)));
            by_kind.push((Action::Allow, family, VerdictSets::of(&allow, family)));
        }
        by_kind.sort_by_key(|(action, family, _)| (*action == Action::Allow, *family == Family::Ipv6));
        for (action, family, sets) in by_kind {
            let (fam, addr_type, icmp, icmp_types) = match family {
                Family::Ipv4 => ("ip", "ipv4_addr", "icmp", "icmp_type . icmp_code"),
                Family::Ipv6 => ("ip6", "ipv6_addr", "icmpv6", "icmpv6_type . icmpv6_code"),
            };
            let set = |kind: &str| {
                format!("{name}{}_{}_{kind}", if family == Family::Ipv4 { 4 } else { 6 }, action_word(action))
            };
            let verdict = nft_verdict_of_rule(action);
            let icmp_proto = nft_proto(if family == Family::Ipv4 { ICMP } else { ICMPV6 });
            let mut kinds =
                vec![("proto".to_string(), "inet_proto", &sets.protocols, format!("{fam} {field} . meta l4proto"))];
            // A set per port protocol: two key fields rather than three,
            // and smaller sets, load faster (the kernel's concatenated
            // sets grow worse than linearly as elements are added).
            for (proto, elements) in &sets.ports {
                let name = nft_proto(*proto);
                kinds.push((
                    name.clone(),
                    "inet_service",
                    elements,
                    format!("meta l4proto {name} {fam} {field} . th dport"),
                ));
            }
            kinds.push((
                "icmp".to_string(),
                icmp_types,
                &sets.icmp,
                format!("meta l4proto {icmp_proto} {fam} {field} . {icmp} type . {icmp} code"),
            ));
            for (kind, key_type, elements, key) in kinds {
                if elements.is_empty() {
                    continue;
                }
                let set_name = set(&kind);
                let _ = writeln!(
                    out,
                    "\tset {set_name} {{\n\t\ttype {addr_type} . {key_type}\n\t\tflags interval\n\t\telements = {{"
                );
                for (i, e) in elements.iter().enumerate() {
                    let _ = writeln!(out, "\t\t\t{e}{}", if i + 1 < elements.len() { "," } else { "" });
                }
                out += "\t\t}\n\t}\n";
                lines.push(format!("{key} @{set_name} {verdict}"));
            }
        }
        lookups.push((direction, lines));
    }

    // The decision of each direction, in a chain of its own...
    for (direction, lines) in &lookups {
        let (chain, default) = match direction {
            Direction::Egress => ("egress", settings.egress_default),
            Direction::Inbound => ("inbound", settings.inbound_default),
        };
        let _ = writeln!(out, "\tchain {chain} {{");
        let _ =
            writeln!(out, "\t\tct state established,related ct mark & {ADMITTED_MARK:#x} == {ADMITTED_MARK:#x} accept");
        let _ = writeln!(out, "\t\tmeta l4proto ipv6-icmp icmpv6 type {{ {ICMPV6_CONTROL} }} accept");
        for line in lines {
            let _ = writeln!(out, "\t\t{line}");
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

fn action_word(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    }
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

/// An inclusive range of the axis `proto << 16 | port` (for ICMP the port
/// is `type << 8 | code`, as in fw's tables).
type Span = (u32, u32);

const ALL_PROTOCOLS: Span = (0, 0xff_ffff);

/// CIDR -> (deny spans, allow spans) of the rules naming it, in `family`.
fn own_spans(rules: &[&Rule], family: Family) -> BTreeMap<IpNet, (Vec<Span>, Vec<Span>)> {
    let icmp_proto = if family == Family::Ipv4 { ICMP } else { ICMPV6 };
    let mut own: BTreeMap<IpNet, (Vec<Span>, Vec<Span>)> = BTreeMap::new();
    for rule in rules {
        let mut spans = Vec::new();
        match &rule.protocols {
            Protocols::Any => spans.push(ALL_PROTOCOLS),
            Protocols::Only(list) => {
                for p in list {
                    let base = u32::from(p.proto) << 16;
                    if p.ports.as_slice() == [PortRange::ALL] {
                        spans.push((base, base | 0xffff));
                    } else if [TCP, UDP, SCTP, icmp_proto].contains(&p.proto) {
                        spans.extend(p.ports.iter().map(|r| (base | u32::from(r.first), base | u32::from(r.last))));
                    }
                    // The other family's ICMP with some types only: no
                    // packet of this family carries it.
                }
            }
        }
        let peers = rule
            .peers
            .iter()
            .map(IpNet::trunc)
            .filter(|n| matches!((n, family), (IpNet::V4(_), Family::Ipv4) | (IpNet::V6(_), Family::Ipv6)));
        for net in peers {
            let entry = own.entry(net).or_default();
            let list = if rule.action == Action::Deny { &mut entry.0 } else { &mut entry.1 };
            list.extend_from_slice(&spans);
        }
    }
    own
}

/// (CIDR, span) boxes of one verdict.
type Boxes = Vec<(IpNet, Span)>;

/// (deny boxes, allow boxes): (CIDR, span) pairs such that a packet is in
/// a deny box exactly when a deny rule matches it, and, when none does, in
/// an allow box exactly when an allow rule does.
///
/// nftables' concatenated interval sets refuse overlapping elements, and a
/// span of whole protocols goes to one set (`protocols`), a part of one
/// protocol to another (`ports`, `icmp`). CIDRs are nested or disjoint, so
/// walking them in `IpNet` order (a CIDR after every one containing it)
/// with what the enclosing CIDRs wrote to each set, a CIDR writes its
/// spans minus what they wrote to the same set (required), minus their
/// whole protocols (free: that never cuts a span in pieces). An allow span
/// that denies around it (or its own) already cover is not written at all;
/// one they cover in part is written whole rather than cut. Cost: the
/// CIDRs times their depth, the size of what is written.
fn decided_boxes(own: &BTreeMap<IpNet, (Vec<Span>, Vec<Span>)>) -> (Boxes, Boxes) {
    /// What a CIDR and those around it wrote: whole protocols and parts of
    /// protocols, denied and allowed.
    #[derive(Clone, Default)]
    struct Written {
        deny_whole: Vec<Span>,
        deny_part: Vec<Span>,
        allow_whole: Vec<Span>,
        allow_part: Vec<Span>,
    }
    let union = |a: &[Span], b: &[Span]| merge_spans(a.iter().chain(b).copied().collect());
    let (mut deny_out, mut allow_out) = (Vec::new(), Vec::new());
    let none = Written::default();
    let mut enclosing: Vec<(IpNet, Written)> = Vec::new();
    for (net, (deny, allow)) in own {
        while enclosing.last().is_some_and(|(outer, _)| !outer.contains(net)) {
            enclosing.pop();
        }
        let around = enclosing.last().map_or(&none, |(_, w)| w);
        let (deny_whole, deny_part) = split_whole(&merge_spans(deny.clone()));
        let (allow_whole, allow_part) = split_whole(&merge_spans(allow.clone()));

        let fresh_deny_whole = subtract_spans(&deny_whole, &around.deny_whole);
        let fresh_deny_part =
            subtract_spans(&subtract_spans(&deny_part, &around.deny_part), &union(&around.deny_whole, &deny_whole));
        // Everything denied here: the allows under it never decide.
        let denied = union(&union(&around.deny_whole, &around.deny_part), &union(&deny_whole, &deny_part));
        let not_denied = |spans: Vec<Span>| -> Vec<Span> {
            spans.into_iter().filter(|s| !subtract_spans(&[*s], &denied).is_empty()).collect()
        };
        let fresh_allow_whole = not_denied(subtract_spans(&allow_whole, &around.allow_whole));
        let fresh_allow_part = not_denied(subtract_spans(
            &subtract_spans(&allow_part, &around.allow_part),
            &union(&around.allow_whole, &allow_whole),
        ));
        if fresh_deny_whole.is_empty()
            && fresh_deny_part.is_empty()
            && fresh_allow_whole.is_empty()
            && fresh_allow_part.is_empty()
        {
            continue;
        }
        deny_out.extend(fresh_deny_whole.iter().chain(&fresh_deny_part).map(|&s| (*net, s)));
        allow_out.extend(fresh_allow_whole.iter().chain(&fresh_allow_part).map(|&s| (*net, s)));
        let here = Written {
            deny_whole: union(&around.deny_whole, &fresh_deny_whole),
            deny_part: union(&around.deny_part, &fresh_deny_part),
            allow_whole: union(&around.allow_whole, &fresh_allow_whole),
            allow_part: union(&around.allow_part, &fresh_allow_part),
        };
        enclosing.push((*net, here));
    }
    deny_out.sort_unstable();
    allow_out.sort_unstable();
    (deny_out, allow_out)
}

/// Sorted, disjoint spans -> (whole protocols, parts of one protocol).
fn split_whole(spans: &[Span]) -> (Vec<Span>, Vec<Span>) {
    let (mut whole, mut part) = (Vec::new(), Vec::new());
    for &(first, last) in spans {
        let (p1, p2) = (first >> 16, last >> 16);
        for proto in p1..=p2 {
            let lo = if proto == p1 { first } else { proto << 16 };
            let hi = if proto == p2 { last } else { proto << 16 | 0xffff };
            if (lo & 0xffff, hi & 0xffff) == (0, 0xffff) {
                whole.push((lo, hi));
            } else {
                part.push((lo, hi));
            }
        }
    }
    (merge_spans(whole), part)
}

/// The elements of one verdict kind's sets in one family, keyed by the
/// peer address and then:
/// * `protocols`: the protocol (`0-255` for `proto: any`, or a protocol
///   whose every port is taken);
/// * `ports`: per protocol (TCP, UDP, SCTP), the destination port;
/// * `icmp`: the family's ICMP type and code.
struct VerdictSets {
    protocols: Vec<String>,
    ports: BTreeMap<u8, Vec<String>>,
    icmp: Vec<String>,
}

impl VerdictSets {
    fn of(boxes: &[(IpNet, Span)], family: Family) -> VerdictSets {
        let icmp_proto = u32::from(if family == Family::Ipv4 { ICMP } else { ICMPV6 });
        let mut sets = VerdictSets { protocols: Vec::new(), ports: BTreeMap::new(), icmp: Vec::new() };
        for (net, (first, last)) in boxes {
            let peer = addr(net);
            let (p1, p2) = (first >> 16, last >> 16);
            // Whole protocols, merged into one range: pending (from, to).
            let mut whole: Option<(u32, u32)> = None;
            for proto in p1..=p2 {
                let lo = if proto == p1 { first & 0xffff } else { 0 };
                let hi = if proto == p2 { last & 0xffff } else { 0xffff };
                if (lo, hi) == (0, 0xffff) {
                    whole = Some(whole.map_or((proto, proto), |(from, _)| (from, proto)));
                    continue;
                }
                if proto == icmp_proto {
                    sets.icmp.extend(
                        icmp_boxes(lo, hi).into_iter().map(|(t, c)| format!("{peer} . {} . {}", range(t), range(c))),
                    );
                } else {
                    sets.ports.entry(proto as u8).or_default().push(format!("{peer} . {}", range((lo, hi))));
                }
            }
            if let Some(protocols) = whole {
                sets.protocols.push(format!("{peer} . {}", range(protocols)));
            }
        }
        sets
    }
}

/// A `type << 8 | code` span as (types, codes) boxes, at most three.
fn icmp_boxes(first: u32, last: u32) -> Vec<(Span, Span)> {
    let (t1, c1, t2, c2) = (first >> 8, first & 0xff, last >> 8, last & 0xff);
    if t1 == t2 {
        return vec![((t1, t1), (c1, c2))];
    }
    let mut boxes = vec![((t1, t1), (c1, 0xff))];
    if t1 + 1 < t2 {
        boxes.push(((t1 + 1, t2 - 1), (0, 0xff)));
    }
    boxes.push(((t2, t2), (0, c2)));
    boxes
}

fn addr(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn range((first, last): Span) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}

/// Sorted, disjoint, with adjacent spans merged.
fn merge_spans(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for (first, last) in spans {
        match out.last_mut() {
            Some(prev) if first <= prev.1.saturating_add(1) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// `spans` minus `covered`, both sorted and disjoint.
fn subtract_spans(spans: &[Span], covered: &[Span]) -> Vec<Span> {
    let mut out = Vec::new();
    let mut c = 0;
    for &(first, last) in spans {
        let mut start = first;
        while c < covered.len() && covered[c].1 < start {
            c += 1;
        }
        let mut i = c;
        let mut done = false;
        while i < covered.len() && covered[i].0 <= last {
            if covered[i].0 > start {
                out.push((start, covered[i].0 - 1));
            }
            if covered[i].1 >= last {
                done = true;
                break;
            }
            start = covered[i].1 + 1;
            i += 1;
        }
        if !done {
            out.push((start, last));
        }
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

    /// Random nested CIDRs denying and allowing spans (parts of protocols
    /// 0-3 and whole ones): no two boxes of one set (whole protocols, or
    /// parts) overlap; a point is in a deny box exactly when some deny
    /// input holds it, and otherwise in an allow box exactly when some
    /// allow input holds it.
    #[test]
    fn decided_boxes_mean_the_rules_and_never_overlap() {
        let mut x: u64 = 0x5eed;
        let mut next = |n: u64| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % n
        };
        let is_whole = |s: &Span| s.0 & 0xffff == 0 && s.1 & 0xffff == 0xffff;
        for round in 0..300 {
            let mut own: BTreeMap<IpNet, (Vec<Span>, Vec<Span>)> = BTreeMap::new();
            for _ in 0..1 + next(14) {
                let len = 24 + next(9) as u8;
                let net = IpNet::new(format!("198.18.0.{}", next(256)).parse().unwrap(), len).unwrap().trunc();
                let proto = next(4) as u32;
                let span = match next(5) {
                    0 => (proto << 16, (proto + next(2) as u32) << 16 | 0xffff),
                    _ => {
                        let first = next(40) as u32;
                        (proto << 16 | first, proto << 16 | (first + next(10) as u32))
                    }
                };
                let entry = own.entry(net).or_default();
                if next(3) == 0 {
                    entry.0.push(span)
                } else {
                    entry.1.push(span)
                }
            }
            let (deny, allow) = decided_boxes(&own);
            for boxes in [&deny, &allow] {
                for (i, (n1, s1)) in boxes.iter().enumerate() {
                    for (n2, s2) in &boxes[i + 1..] {
                        let same_set = is_whole(s1) == is_whole(s2);
                        let nets_meet = n1.contains(n2) || n2.contains(n1);
                        let spans_meet = s1.0 <= s2.1 && s2.0 <= s1.1;
                        assert!(
                            !(same_set && nets_meet && spans_meet),
                            "round {round}: {n1} {s1:?} overlaps {n2} {s2:?}"
                        );
                    }
                }
            }
            let points: Vec<u32> =
                (0..5u32).flat_map(|p| (0..55u32).chain([0xfffe, 0xffff]).map(move |port| p << 16 | port)).collect();
            for host in 0..=255u8 {
                let ip: IpNet = format!("198.18.0.{host}/32").parse().unwrap();
                for &point in &points {
                    let holds = |n: &IpNet, s: &Span| n.contains(&ip) && s.0 <= point && point <= s.1;
                    let denied = own.iter().any(|(n, (d, _))| d.iter().any(|s| holds(n, s)));
                    let allowed = own.iter().any(|(n, (_, a))| a.iter().any(|s| holds(n, s)));
                    let in_deny = deny.iter().any(|(n, s)| holds(n, s));
                    let in_allow = allow.iter().any(|(n, s)| holds(n, s));
                    assert_eq!(in_deny, denied, "round {round}: {ip} at {point:#x} (deny)");
                    if !denied {
                        assert_eq!(in_allow, allowed, "round {round}: {ip} at {point:#x} (allow)");
                    }
                }
            }
        }
    }

    #[test]
    fn nft_keeps_precedence_and_state() {
        let text = nft(&policy(SMALL), "runtime", &Options { iface: Some("veth0".into()) }).unwrap();
        assert!(text.contains("ct state established,related ct mark & 0x1 == 0x1 accept"), "{text}");
        // One lookup per verdict kind and key shape, deny before allow.
        let egress = &text[text.find("chain egress").unwrap()..text.find("chain inbound").unwrap()];
        let lookups: Vec<&str> = egress.lines().map(str::trim).filter(|l| l.contains(" @")).collect();
        assert_eq!(
            lookups,
            [
                "meta l4proto tcp ip daddr . th dport @egress4_deny_tcp drop",
                "meta l4proto tcp ip6 daddr . th dport @egress6_deny_tcp drop",
                "ip daddr . meta l4proto @egress4_allow_proto jump admit",
                "meta l4proto tcp ip daddr . th dport @egress4_allow_tcp jump admit",
                "meta l4proto udp ip daddr . th dport @egress4_allow_udp jump admit",
                "meta l4proto icmp ip daddr . icmp type . icmp code @egress4_allow_icmp jump admit",
                "meta l4proto tcp ip6 daddr . th dport @egress6_allow_tcp jump admit",
                "meta l4proto udp ip6 daddr . th dport @egress6_allow_udp jump admit",
            ],
            "{text}"
        );
        assert!(text.contains("0.0.0.0/0 . 25\n"), "{text}");
        assert!(text.contains("198.18.0.0/16 . 443,\n"), "{text}");
        assert!(text.contains("198.18.0.0/16 . 8000-8100\n"), "{text}");
        assert!(text.contains("2001:db8::/32 . 8000-8100\n"), "{text}");
        assert!(text.contains("198.18.5.5 . 0-255\n"), "{text}");
        assert!(text.contains("198.19.0.0/24 . 8 . 0-255\n"), "{text}");
        assert!(text.contains("meta l4proto tcp ip saddr . th dport @inbound4_allow_tcp jump admit"), "{text}");
        // The egress default closes the egress chain; the inbound default
        // admits (it serves).
        assert!(egress.trim_end().ends_with("drop\n\t}"), "{egress}");
        let inbound = &text[text.find("chain inbound").unwrap()..text.find("chain output").unwrap()];
        assert!(inbound.trim_end().ends_with("jump admit\n\t}"), "{inbound}");
    }

    /// Found by the differential test (exported_nft_decides_as_fw_explains_on_
    /// random_policies): an allowed ICMPv6 type conntrack does not track
    /// was dropped, as reading the mark of a packet without conntrack ends
    /// the admitting rule.
    #[test]
    fn finding_untracked_allowed_packets_are_admitted() {
        let text = nft(&policy(SMALL), "runtime", &Options::default()).unwrap();
        assert!(text.contains("\tchain admit {\n\t\tct mark set ct mark | 0x1 accept\n\t\taccept\n\t}"), "{text}");
    }

    /// Nested CIDRs with the same ports: the inner one adds only what the
    /// outer one lacks (concatenated interval sets refuse overlaps).
    #[test]
    fn nft_writes_nested_cidrs_without_overlap() {
        let yaml = r#"
name: nested
phases:
  runtime:
    egress:
      - { name: wide, to: [198.18.0.0/16], proto: tcp, ports: ["1000-2000"] }
      - { name: narrow, to: [198.18.1.0/24], proto: tcp, ports: ["1500-2500"] }
      - { name: same, to: [198.18.2.0/24], proto: tcp, ports: [1200] }
"#;
        let text = nft(&policy(yaml), "runtime", &Options::default()).unwrap();
        assert!(text.contains("198.18.0.0/16 . 1000-2000,\n"), "{text}");
        assert!(text.contains("198.18.1.0/24 . 2001-2500\n"), "{text}");
        assert!(!text.contains("198.18.2.0/24"), "{text}");
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
        assert!(
            anywhere.contains("oifname != \"lo\" jump egress") && anywhere.contains("iifname != \"lo\" jump inbound"),
            "{anywhere}"
        );
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
        assert!(
            !ipt.lines().any(|l| l.starts_with(":INPUT") || l.starts_with(":OUTPUT") || l.starts_with(":FORWARD")),
            "{ipt}"
        );
        assert!(!ipt.contains("-j ACCEPT"), "{ipt}");
        let anywhere = iptables(&policy(SMALL), "runtime", Family::Ipv4, &Options::default()).unwrap();
        assert!(
            anywhere.contains("-I OUTPUT 1 ! -o lo -j fw-egress")
                && anywhere.contains("-I INPUT 1 ! -i lo -j fw-inbound"),
            "{anywhere}"
        );
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
            v6.contains(
                "-A fw-egress -d 2001:db8::/32 -p udp -m multiport --dports 443,8000:8100 -j CONNMARK --or-mark 0x1"
            ),
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
