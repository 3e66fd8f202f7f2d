//! The per-packet decision, the same for both hooks, in this order:
//!
//! 1. ICMPv6 neighbour discovery and MLD pass: without them IPv6 stops.
//! 2. No active policy -> drop (fail closed).
//! 3. A later fragment follows its first fragment's verdict.
//! 4. A packet of a tracked flow admitted under the active generation
//!    passes (one hash lookup for an established connection or a flow this
//!    host opened, two for a flow in probation: see `flow`). A flow
//!    admitted under another generation is re-checked against the active
//!    policy in the direction that opened it, and forgotten when no longer
//!    admitted. An inbound TCP connection in probation is promoted when its
//!    handshake completes, and demoted when it closes.
//! 5. An ICMP error quoting a tracked flow (or a later fragment of a
//!    datagram whose first fragment passed), addressed to the quoted
//!    packet's sender, passes (path MTU discovery).
//! 6. Otherwise the policy decides; a packet the policy passes (an allow
//!    rule, a phase default that allows, or audit mode) opens a flow, so
//!    its replies and later packets take step 4: "inbound_default: allow"
//!    serves every port (docs/policy.md).

use fw_common::{
    flow::{FLOW_AUDIT, FLOW_INBOUND},
    policy::proto,
    Direction, Reason,
};

use crate::{
    flow, frag,
    parse::{Frag, Packet, TCP_ACK, TCP_RST, TCP_SYN},
    policy::{self, Active},
    verdict::{Verdict, NO_RULE},
};

/// ICMPv6 the link needs whatever the policy says: without neighbour
/// discovery and MLD, IPv6 stops working. Only what cannot carry anything
/// off the link passes: MLD (130-132, 143) with hop limit 1, and router and
/// neighbour discovery (133-137) with hop limit 255 (RFC 4861) to a
/// link-local or link-scope multicast address or an on-link neighbour.
#[inline(always)]
fn is_icmpv6_control(pkt: &Packet) -> bool {
    if pkt.family != 6 || pkt.proto != proto::ICMPV6 {
        return false;
    }
    match (pkt.policy_port >> 8) as u8 {
        130..=132 | 143 => pkt.hop_limit == 1,
        133..=137 => pkt.hop_limit == 255 && policy::on_link6(&pkt.dst),
        _ => false,
    }
}

/// Packets that open a flow when a rule allows them (a flow is what lets
/// the replies pass): ICMP only echo requests; inbound TCP only a SYN
/// without ACK, the start of a connection. Without that rule, the first
/// inbound segment of a connection this host opened, cut by a phase switch,
/// would reopen it as "inbound" whenever its local port falls in a served
/// range (Linux's ephemeral ports overlap the media ports).
///
/// Outbound TCP: anything but a RST or a SYN-ACK. Both answer a segment a
/// peer sent, and a peer spoofing its addresses (from a port an egress rule
/// allows, e.g. 443 while installing) could make this host send them by
/// the thousand, each opening a flow in the protected table.
#[inline(always)]
fn opens_flow(direction: Direction, pkt: &Packet) -> bool {
    let ty = (pkt.policy_port >> 8) as u8;
    let tcp = pkt.tcp_flags;
    match pkt.proto {
        proto::ICMP => ty == 8,
        proto::ICMPV6 => ty == 128,
        proto::TCP if direction == Direction::Inbound => tcp & (TCP_SYN | TCP_ACK) == TCP_SYN,
        proto::TCP => tcp & TCP_RST == 0 && tcp & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK,
        _ => true,
    }
}

/// Not inlined, so its keys do not share a stack frame with the parser's
/// header copies (see `parse::parse_skb`). Compiled with misaligned
/// accesses allowed, like the parser: the LPM keys are packed structs, and
/// without it every address is copied into them byte by byte.
#[inline(never)]
#[target_feature(enable = "allows-misaligned-mem-access")]
pub fn judge(direction: Direction, pkt: &Packet) -> Verdict {
    if is_icmpv6_control(pkt) {
        return Verdict::new(Reason::PassIcmpControl, NO_RULE);
    }
    let Some(active) = policy::active() else { return Verdict::drop(Reason::DropNoPolicy) };
    let now = flow::now_ns();
    if pkt.frag == Frag::Later {
        return frag::follow_first(pkt, now);
    }
    // One branch on the family: each has its own tables and key size.
    let verdict = if pkt.family == 4 {
        judge_flow(&active, direction, pkt, &flow::key4(direction, pkt), now)
    } else {
        judge_flow(&active, direction, pkt, &flow::key6(direction, pkt), now)
    };
    if pkt.frag == Frag::First && !verdict.reason.is_drop() {
        frag::remember_pass(pkt, verdict.rule, now);
    }
    verdict
}

/// Steps 4 to 6 with the flow key of the packet's family.
#[inline(always)]
fn judge_flow<K: flow::Key>(active: &Active, direction: Direction, pkt: &Packet, key: &K, now: u64) -> Verdict {
    let tracked = match flow::get(key, now, active.phase) {
        Some(entry) => recheck(active, direction, pkt, key, entry, now),
        None => None,
    };
    match tracked {
        Some(v) => v,
        None => {
            let v = untracked(active, direction, pkt, now);
            if admits(v.reason) && opens_flow(direction, pkt) {
                flow::admit(key, direction, active.generation, v.rule, v.reason == Reason::PassAudit, pkt, now);
            }
            v
        }
    }
}

/// What the policy passes opens a flow (when the packet is one that opens
/// flows): an allow rule, an allowing phase default, or audit mode (whose
/// flows count their packets as would-drops, with one event per flow).
#[inline(always)]
fn admits(reason: Reason) -> bool {
    // A query of the DNS proxy to a resolver (`PassResolver`) opens a flow
    // too, so that its answer passes an inbound `drop` default.
    matches!(reason, Reason::PassRule | Reason::PassDefault | Reason::PassAudit | Reason::PassResolver)
}

/// A TCP SYN without ACK: the start of a connection, never a reply.
#[inline(always)]
fn starts_connection(pkt: &Packet) -> bool {
    pkt.proto == proto::TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Step 4: `Some(pass)` when the flow may continue, `None` when the policy
/// must judge the packet afresh.
#[inline(always)]
fn recheck<K: flow::Key>(
    active: &Active,
    direction: Direction,
    pkt: &Packet,
    key: &K,
    entry: flow::Entry,
    now: u64,
) -> Option<Verdict> {
    // SAFETY: pointer from a successful map lookup, valid for this run.
    let value = unsafe { &mut *entry.value };
    if value.generation != active.generation {
        let origin = if value.flags & FLOW_INBOUND != 0 { Direction::Inbound } else { Direction::Egress };
        let remote = policy::peer(direction, pkt);
        let v = policy::decide(active, origin, remote, pkt.proto, value.policy_port);
        if !admits(v.reason) {
            flow::forget(key, entry);
            return None;
        }
        value.generation = active.generation;
        value.rule = v.rule;
        value.flags = if v.reason == Reason::PassAudit { value.flags | FLOW_AUDIT } else { value.flags & !FLOW_AUDIT };
    }
    let rule = value.rule;
    let audit = value.flags & FLOW_AUDIT != 0;
    let closed = flow::touch(entry, now, direction, pkt);
    if entry.table == flow::Table::Probation {
        if pkt.proto == proto::TCP {
            flow::follow_handshake(key, entry, direction, pkt);
        }
    } else if closed {
        flow::demote_closing(key, entry);
    }
    if audit {
        // Counted as a would-drop, like the packet that opened the flow;
        // that one sent the event.
        return Some(Verdict { reason: Reason::PassAudit, rule, quiet: true });
    }
    Some(Verdict::new(Reason::PassFlow, rule))
}

/// Steps 5 and 6.
#[inline(always)]
fn untracked(active: &Active, direction: Direction, pkt: &Packet, now: u64) -> Verdict {
    // The error must be addressed to the quoted packet's sender: on egress
    // the peer that sent what this host reports on, on ingress this host.
    // Otherwise quoting a tracked flow would carry it anywhere.
    let q = &pkt.quoted;
    if q.valid && pkt.dst == q.src {
        let tracked = if q.later {
            frag::first_passed(q.family, q.frag_proto, q.frag_id, &q.src, &q.dst, now)
        } else {
            flow::quoted_is_live(direction, q, now, active.phase)
        };
        if tracked {
            return Verdict::new(Reason::PassIcmpControl, NO_RULE);
        }
    }
    let peer = policy::peer(direction, pkt);
    let verdict = policy::decide(active, direction, peer, pkt.proto, pkt.policy_port);
    if direction == Direction::Egress
        && verdict.reason == Reason::DropDefault
        && !starts_connection(pkt)
        && is_served(active, pkt, peer)
    {
        // Sent from a port this host serves, to a peer that has no flow:
        // not a reply to anything. Named apart so operators see it. (A SYN
        // from such a port is a connection this host opens, from an
        // ephemeral port inside a served range: the default drops it, and
        // says so.)
        return Verdict::drop(Reason::DropSpoofedReply);
    }
    verdict
}

/// Does an inbound rule admit `peer` to this packet's source port?
#[inline(always)]
fn is_served(active: &Active, pkt: &Packet, peer: policy::Peer) -> bool {
    if pkt.proto == proto::ICMP || pkt.proto == proto::ICMPV6 {
        return false;
    }
    policy::inbound_rule_allows(active, peer, pkt.proto, pkt.ports.src) == Some(true)
}
