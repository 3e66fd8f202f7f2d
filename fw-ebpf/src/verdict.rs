//! The outcome of one packet: a reason (pass or drop) and the deciding rule.

use fw_common::Reason;

/// Sentinel rule id: no rule decided (default, parse error, non-IP).
pub const NO_RULE: u32 = fw_ebpf::counters::NO_RULE;

#[derive(Clone, Copy)]
pub struct Verdict {
    pub reason: Reason,
    pub rule: u32,
    /// No drop event for this one: a later packet of a flow admitted in
    /// audit mode (its first packet sent the event), counted all the same.
    pub quiet: bool,
}

impl Verdict {
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Self { reason, rule: NO_RULE, quiet: false }
    }
    #[inline(always)]
    pub const fn new(reason: Reason, rule: u32) -> Self {
        Self { reason, rule, quiet: false }
    }
}
