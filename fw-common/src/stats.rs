//! Counters. `FW_STATS` is indexed by [`stats_index`]; `FW_RULE_STATS` by rule id.
//!
//! `FW_STATS` keeps the counters of the two phase slots apart (the slot of
//! the generation active when the packet was judged, `generation & 1`, as
//! in `FW_PHASES`): a switch moves to the other slot, so what was dropped
//! before and after it is told apart exactly, whenever it is read.

use crate::{policy::Direction, reason::Reason};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Entries of `FW_STATS`: one per reason, for each direction, for each of
/// the two phase slots.
pub const STATS_ENTRIES: u32 = Reason::SLOTS * 2 * 2;

/// The counter of `reason` in `direction` for packets judged while a
/// generation of phase slot `slot` (`generation & 1`) was active.
#[inline(always)]
pub const fn stats_index(slot: u32, direction: Direction, reason: Reason) -> u32 {
    (slot & 1) * Reason::SLOTS * 2 + direction as u32 * Reason::SLOTS + reason as u32
}
