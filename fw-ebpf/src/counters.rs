//! Per-CPU counters: per (direction, reason) and per rule. Per-CPU so that
//! two cores never contend for (or tear) one counter; userspace sums them.
//! Over the maps each object holds: `fw_egress`'s `FW_STATS` and
//! `FW_RULE_STATS` (the binary's `stats`), and the lookup benchmark's,
//! which times a packet's counting alone.

use aya_ebpf::maps::PerCpuArray;
use fw_common::{stats::stats_index, Counter, Direction, Reason};

/// The two counter maps: per (phase slot, direction, reason), per rule.
pub struct Maps {
    pub reasons: &'static PerCpuArray<Counter>,
    pub rules: &'static PerCpuArray<Counter>,
}

#[inline(always)]
fn bump(map: &PerCpuArray<Counter>, index: u32, bytes: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and BPF
        // programs are not preempted by each other on one CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(bytes);
        }
    }
}

/// The rule of a verdict no rule decided: counted under its reason only.
pub const NO_RULE: u32 = u32::MAX;

/// Counts one packet of `bytes` judged `reason` by `rule` (or
/// [`NO_RULE`]) in `direction`, under phase slot `slot` (see
/// `fw_common::stats`).
#[inline(always)]
pub fn count(maps: &Maps, slot: u32, direction: Direction, reason: Reason, rule: u32, bytes: u32) {
    bump(maps.reasons, stats_index(slot, direction, reason), bytes);
    if rule != NO_RULE {
        bump(maps.rules, rule, bytes);
    }
}
