//! The counters of every verdict (`fw_ebpf::counters`), in the maps
//! userspace reads.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use fw_common::{maps::MAX_RULES, stats::STATS_ENTRIES, Counter, Direction};

use crate::verdict::Verdict;

#[map(name = "FW_STATS")]
static FW_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);

#[map(name = "FW_RULE_STATS")]
static FW_RULE_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(MAX_RULES, 0);

const COUNTERS: fw_ebpf::counters::Maps = fw_ebpf::counters::Maps { reasons: &FW_STATS, rules: &FW_RULE_STATS };

/// Counts a verdict, under the phase slot of the active generation.
#[inline(always)]
pub fn count(direction: Direction, verdict: &Verdict, bytes: u32) {
    let slot = crate::policy::active_slot();
    fw_ebpf::counters::count(&COUNTERS, slot, direction, verdict.reason, verdict.rule, bytes);
}
