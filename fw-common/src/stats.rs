//! Counters. `FW_STATS` is indexed by [`stats_index`]; `FW_RULE_STATS` by rule id.

use crate::{policy::Direction, reason::Reason};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Entries of `FW_STATS`: one slot per reason for each direction.
pub const STATS_ENTRIES: u32 = Reason::SLOTS * 2;

#[inline(always)]
pub const fn stats_index(direction: Direction, reason: Reason) -> u32 {
    direction as u32 * Reason::SLOTS + reason as u32
}
