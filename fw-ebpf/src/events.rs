//! Drop events: one record per denied packet or connect, sent through a
//! ring buffer, at most `EVENT_BUDGET` per second per (reason, rule) and
//! CPU. A flood costs one per-CPU hash lookup per packet past the budget;
//! the counters stay exact (they are kept elsewhere, for every packet).
//!
//! Audit mode (`fw learn`) is budgeted per destination instead: what it
//! learns is destinations, so a busy one (a download, one event per new
//! connection since audit flows are tracked) cannot use up the budget of
//! the others, and every destination sends at least its first event.

use aya_ebpf::{
    macros::map,
    maps::{LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use fw_common::{
    event::{event_stats, DropEvent, RateWindow, EVENT_VERSION},
    maps::{DEFAULT_EVENT_BUDGET, EVENTS_BYTES},
};

use crate::verdict::Verdict;

/// Events per second per (reason, rule) and CPU; set at load time.
#[unsafe(no_mangle)]
static EVENT_BUDGET: u32 = DEFAULT_EVENT_BUDGET;

#[map(name = "FW_EVENTS")]
static FW_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

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

/// A would-drop's budget key: the destination (address, port, protocol)
/// folded into 56 bits, under the reason's byte.
#[inline(always)]
pub fn destination_key(reason: u8, dst: &[u8; 16], port: u16, proto: u8) -> u64 {
    let a = u64::from_ne_bytes([dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], dst[6], dst[7]]);
    let b = u64::from_ne_bytes([dst[8], dst[9], dst[10], dst[11], dst[12], dst[13], dst[14], dst[15]]);
    let mixed = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.rotate_left(29) ^ (u64::from(port) << 8 | u64::from(proto));
    (u64::from(reason) << 56) | (mixed.wrapping_mul(0xff51_afd7_ed55_8ccd) >> 8)
}

/// The budget key of a drop: its (reason, rule).
#[inline(always)]
pub fn rule_key(verdict: &Verdict) -> u64 {
    (u64::from(verdict.reason as u8) << 32) | u64::from(verdict.rule)
}

/// Whether events under `key` may emit one more now.
#[inline(always)]
fn within_budget(key: u64, now: u64) -> bool {
    // SAFETY: reading a load-time constant the loader may have rewritten.
    let budget = unsafe { core::ptr::read_volatile(&EVENT_BUDGET) };
    match FW_EVENT_RATE.get_ptr_mut(&key) {
        Some(w) => {
            // SAFETY: per-CPU value from a successful lookup.
            let w = unsafe { &mut *w };
            if now.wrapping_sub(w.start_ns) >= SECOND_NS {
                w.start_ns = now;
                w.emitted = 0;
            }
            if w.emitted >= budget {
                return false;
            }
            w.emitted += 1;
            true
        }
        None => {
            let w = RateWindow { start_ns: now, emitted: 1, _pad: 0 };
            let _ = FW_EVENT_RATE.insert(&key, &w, 0);
            budget > 0
        }
    }
}

/// Sends the event `build` fills in (called only when within the budget of
/// `key`: [`rule_key`] or [`destination_key`]). Returns whether an event
/// was sent. (It returns a value because a BPF subprogram must not exit
/// with a stack pointer left in R0.)
#[inline(never)]
pub fn emit(verdict: &Verdict, key: u64, now: u64, build: impl FnOnce(&mut DropEvent)) -> bool {
    if !within_budget(key, now) {
        bump(event_stats::SUPPRESSED);
        return false;
    }
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
