//! fw kernel programs. This file holds only the entry points and the one
//! place where a verdict becomes a return code; the work is in the modules.
//!
//! Fail closed: any error while deciding (a map that cannot be read, a
//! header that cannot be parsed) drops the packet and counts why.
#![no_std]
#![no_main]

mod counters;
mod parse;
mod policy;
mod verdict;

use aya_ebpf::{macros::classifier, programs::TcContext};
use fw_common::{
    tc_action::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    Direction,
};

use crate::verdict::Verdict;

/// TC egress classifier: every packet this host sends through the interface.
#[classifier]
pub fn fw_egress(ctx: TcContext) -> i32 {
    let verdict = egress(&ctx);
    counters::count(Direction::Egress, &verdict, ctx.len());
    if verdict.reason.is_drop() {
        TC_ACT_SHOT
    } else {
        // TC_ACT_UNSPEC (TCX_NEXT): let any later program have its say; the
        // kernel passes the packet when none objects.
        TC_ACT_UNSPEC
    }
}

#[inline(always)]
fn egress(ctx: &TcContext) -> Verdict {
    let pkt = match parse::parse_skb(ctx) {
        Ok(parse::Parsed::Ip(pkt)) => pkt,
        Ok(parse::Parsed::NotIp) => return Verdict::pass_non_ip(),
        Err(reason) => return Verdict::drop(reason),
    };
    policy::decide(Direction::Egress, &pkt)
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
