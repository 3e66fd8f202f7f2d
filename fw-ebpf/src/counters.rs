//! Per-CPU counters: per (direction, reason) and per rule. Per-CPU so that
//! two cores never contend for (or tear) one counter; userspace sums them.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use fw_common::{
    maps::MAX_RULES,
    stats::{stats_index, STATS_ENTRIES},
    Counter, Direction,
};

use crate::verdict::{Verdict, NO_RULE};

#[map(name = "FW_STATS")]
static FW_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "FW_RULE_STATS")]
static FW_RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES, 0);

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

/// Counts a verdict, under the phase slot of the active generation (see
/// `fw_common::stats`).
#[inline(always)]
pub fn count(direction: Direction, verdict: &Verdict, bytes: u32) {
    bump(&FW_STATS, stats_index(crate::policy::active_slot(), direction, verdict.reason), bytes);
    if verdict.rule != NO_RULE {
        bump(&FW_RULE_STATS, verdict.rule, bytes);
    }
}
