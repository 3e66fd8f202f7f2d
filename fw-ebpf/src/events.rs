//! Drop events: one record per denied packet or connect, sent through a
//! ring buffer, at most `EVENT_BUDGET` per second per rule (per reason for
//! drops no rule decides) and CPU. A flood costs one per-CPU array read per
//! packet past the budget, which the kernel inlines: the budgets are slots
//! of an array indexed by rule id (`fw_common::event::rule_rate_slot`), not
//! a hash. The counters stay exact (they are kept elsewhere, for every
//! packet).
//!
//! Audit mode (`fw learn`) is budgeted per destination instead, in a
//! per-CPU LRU hash: what it learns is destinations, so a busy one (a
//! download, one event per new connection since audit flows are tracked)
//! cannot use up the budget of the others, and every destination sends at
//! least its first event.

use aya_ebpf::{
    macros::map,
    maps::{LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use fw_common::{
    event::{event_stats, rule_rate_slot, DropEvent, RateWindow, EVENT_VERSION, RULE_RATE_SLOTS},
    maps::{DEFAULT_EVENT_BUDGET, EVENTS_BYTES},
    Reason,
};

use crate::verdict::Verdict;

/// Events per second per budget and CPU; set at load time.
#[unsafe(no_mangle)]
static EVENT_BUDGET: u32 = DEFAULT_EVENT_BUDGET;

#[map(name = "FW_EVENTS")]
static FW_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map(name = "FW_RULE_BUDGETS")]
static FW_RULE_BUDGETS: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(RULE_RATE_SLOTS, 0);

#[map(name = "FW_EVENT_RATE")]
static FW_EVENT_RATE: LruPerCpuHashMap<u64, RateWindow> = LruPerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "FW_EVENT_STATS")]
static FW_EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event_stats::ENTRIES, 0);

const SECOND_NS: u64 = 1_000_000_000;

#[inline(always)]
fn bump(index: u32) {
    if let Some(c) = FW_EVENT_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

/// Whether the event of `verdict` may be sent now: within its rule's (or
/// reason's) budget, or in audit mode its destination's (`peer`, `port`,
/// `proto`: the remote end). Counts it as suppressed when not.
#[inline(always)]
pub fn within_budget(verdict: &Verdict, peer: &[u8; 16], port: u16, proto: u8, now: u64) -> bool {
    // SAFETY: reading a load-time constant the loader may have rewritten.
    let budget = unsafe { core::ptr::read_volatile(&EVENT_BUDGET) };
    let within = if verdict.reason == Reason::PassAudit {
        destination_within(destination_key(peer, port, proto), now, budget)
    } else {
        match FW_RULE_BUDGETS.get_ptr_mut(rule_rate_slot(verdict.reason as u8, verdict.rule)) {
            // SAFETY: per-CPU slot, only this CPU touches it.
            Some(w) => spend(unsafe { &mut *w }, now, budget),
            None => false,
        }
    };
    if !within {
        bump(event_stats::SUPPRESSED);
    }
    within
}

/// Takes one event from `window`'s budget, starting a new window when a
/// second has passed since the current one started.
#[inline(always)]
fn spend(window: &mut RateWindow, now: u64, budget: u32) -> bool {
    if now.wrapping_sub(window.start_ns) >= SECOND_NS {
        window.start_ns = now;
        window.emitted = 0;
    }
    if window.emitted >= budget {
        return false;
    }
    window.emitted += 1;
    true
}

/// A would-drop's budget key: the destination (address, port, protocol)
/// folded into 64 bits.
#[inline(always)]
fn destination_key(dst: &[u8; 16], port: u16, proto: u8) -> u64 {
    let a = u64::from_ne_bytes([dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], dst[6], dst[7]]);
    let b = u64::from_ne_bytes([dst[8], dst[9], dst[10], dst[11], dst[12], dst[13], dst[14], dst[15]]);
    let mixed = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(29) ^ (u64::from(port) << 8 | u64::from(proto));
    mixed.wrapping_mul(0xff51_afd7_ed55_8ccd)
}

/// The budget of an audited destination: its first event always passes.
#[inline(always)]
fn destination_within(key: u64, now: u64, budget: u32) -> bool {
    match FW_EVENT_RATE.get_ptr_mut(&key) {
        // SAFETY: per-CPU value from a successful lookup.
        Some(w) => spend(unsafe { &mut *w }, now, budget),
        None => {
            let w = RateWindow { start_ns: now, emitted: 1, _pad: 0 };
            let _ = FW_EVENT_RATE.insert(&key, &w, 0);
            budget > 0
        }
    }
}

/// Sends the event `build` fills in; call it only for an event
/// [`within_budget`] let through. Returns whether it was sent. (It returns
/// a value because a BPF subprogram must not exit with a stack pointer
/// left in R0.)
#[inline(never)]
pub fn emit(verdict: &Verdict, now: u64, build: impl FnOnce(&mut DropEvent)) -> bool {
    let Some(mut entry) = FW_EVENTS.reserve::<DropEvent>(0) else {
        bump(event_stats::LOST);
        return false;
    };
    // SAFETY: ring buffer records are 8-aligned; DropEvent's size is a
    // multiple of 8 and all zeros is a valid DropEvent.
    let event = unsafe {
        crate::mem::zero(entry.as_mut_ptr());
        entry.assume_init_mut()
    };
    event.version = EVENT_VERSION;
    event.reason = verdict.reason as u8;
    event.rule = verdict.rule;
    event.time_ns = now;
    build(event);
    entry.submit(0);
    bump(event_stats::EMITTED);
    true
}
