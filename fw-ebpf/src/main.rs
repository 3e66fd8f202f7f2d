//! fw kernel programs. This file holds only the entry points and the one
//! place where a verdict becomes a return code; the work is in the modules.
//!
//! Both hooks are TC classifiers (TCX links): the same skb context, parser
//! and link pinning on egress and ingress, on every kind of interface, and
//! GRO-merged segments are judged once. See docs/datapath.md for why not XDP.
//!
//! Fail closed: any error while deciding (no policy written, a header that
//! cannot be parsed) drops the packet and counts why.
#![no_std]
#![no_main]
// `allows-misaligned-mem-access` for the parser (see parse::parse_skb).
#![feature(bpf_target_feature)]

mod datapath;
mod events;
mod flow;
mod frag;
mod policy;
mod sock;
mod stats;
mod verdict;

// The parser lives in the library so that it runs as host unit tests too.
use fw_ebpf::{mem, parse};

use aya_ebpf::{helpers::bpf_skb_cgroup_id, macros::classifier, programs::TcContext};
use aya_log_ebpf::error;
use fw_common::{
    event::EVENT_AUDIT,
    tc_action::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    Direction, Reason,
};

use crate::verdict::{Verdict, NO_RULE};

/// Egress: enforces the egress policy on every packet this host sends.
#[classifier]
pub fn fw_egress(ctx: TcContext) -> i32 {
    classify(&ctx, Direction::Egress)
}

/// Ingress: records the flows inbound rules admit (so their replies pass
/// egress) and, where the phase says `inbound_default: drop`, filters.
#[classifier]
pub fn fw_ingress(ctx: TcContext) -> i32 {
    classify(&ctx, Direction::Inbound)
}

/// Does nothing: the floor that `cargo xtask bench` measures fw against
/// (the same object, loader and test-run path). Never attached.
#[classifier]
pub fn fw_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn classify(ctx: &TcContext, direction: Direction) -> i32 {
    let mut slot = core::mem::MaybeUninit::uninit();
    let pkt = parse::Packet::zeroed_in(&mut slot);
    // SAFETY: see parse_skb: a misaligned load the CPU cannot do is refused
    // by the verifier at load (fail closed).
    let verdict = match unsafe { parse::parse_skb(ctx, pkt) }.decode() {
        // SAFETY: as for parse_skb above.
        Ok(parse::Parsed::Ip) => unsafe { datapath::judge(direction, pkt) },
        Ok(parse::Parsed::NotIp) => Verdict::new(Reason::PassNonIp, NO_RULE),
        Err(reason) => Verdict::drop(reason),
    };
    stats::count(direction, &verdict, ctx.len());
    if (verdict.reason.is_drop() || verdict.reason == Reason::PassAudit) && !verdict.quiet {
        if verdict.reason == Reason::DropNoPolicy {
            // Never expected: the loader writes a policy before attaching.
            // Forwarded by the daemon to its log (aya-log).
            error!(ctx, "no policy generation is active: dropping every packet (fail closed)");
        }
        report(ctx, direction, &verdict, pkt);
    }
    if verdict.reason.is_drop() {
        TC_ACT_SHOT
    } else {
        // TC_ACT_UNSPEC (TCX_NEXT): let any later program have its say; the
        // kernel passes the packet when none objects.
        TC_ACT_UNSPEC
    }
}

/// A drop event for `pkt` (rate-limited in `events`). Packets carry no
/// process; on egress the sending socket's cgroup names the container.
/// Only the budget is checked before the rate limit: everything else (the
/// cgroup helper call, the record) only for an event that is sent, so a
/// flood of denied packets past the budget costs one array read each.
#[inline(always)]
fn report(ctx: &TcContext, direction: Direction, verdict: &Verdict, pkt: &parse::Packet) {
    let now = flow::now_ns();
    let peer = if direction == Direction::Egress { &pkt.dst } else { &pkt.src };
    if !events::within_budget(verdict, peer, pkt.policy_port, pkt.proto, now) {
        return;
    }
    events::emit(verdict, now, |e| {
        e.direction = direction as u8;
        e.family = pkt.family;
        e.proto = pkt.proto;
        e.flags = if verdict.reason == Reason::PassAudit { EVENT_AUDIT } else { 0 };
        e.src = pkt.src;
        e.dst = pkt.dst;
        e.src_port = pkt.ports.src;
        e.dst_port = pkt.policy_port;
        e.cgroup_id = if direction == Direction::Egress {
            // SAFETY: the helper reads the skb's socket, if any; 0 otherwise.
            unsafe { bpf_skb_cgroup_id(ctx.skb.skb) }
        } else {
            0
        };
    });
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic; this is
    // never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
