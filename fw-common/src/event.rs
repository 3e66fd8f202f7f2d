//! Drop events, sent through the `FW_EVENTS` ring buffer.
//!
//! Versioned: the record starts with [`EVENT_VERSION`], and userspace
//! refuses versions it does not know. Rate-limited in the kernel per rule
//! (or, for drops no rule decides, per reason) and CPU: at most the
//! load-time budget per second each (see [`rule_rate_slot`]); the counters
//! stay exact whatever is suppressed.

pub const EVENT_VERSION: u8 = 1;

/// The event comes from a cgroup socket hook (a denied `connect()` or
/// `sendmsg()`), not from a packet.
pub const EVENT_FROM_SOCKET: u8 = 1;
/// Audit mode: the packet would have been dropped and was passed.
pub const EVENT_AUDIT: u8 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DropEvent {
    pub version: u8,
    /// [`crate::Direction`] as u8.
    pub direction: u8,
    /// [`crate::Reason`] as u8.
    pub reason: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// [`EVENT_FROM_SOCKET`], [`EVENT_AUDIT`].
    pub flags: u8,
    pub _pad: u16,
    /// Deciding rule, `u32::MAX` for none.
    pub rule: u32,
    /// Process (thread group) id; 0 when unknown (packets have no process).
    pub pid: u32,
    pub src_port: u16,
    /// Destination port; ICMP: `type << 8 | code`.
    pub dst_port: u16,
    pub _pad2: u32,
    /// `bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC, to a tick.
    pub time_ns: u64,
    /// cgroup v2 id (the inode number of its directory); 0 when unknown.
    pub cgroup_id: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The task's command name, NUL-padded; empty when unknown.
    pub comm: [u8; 16],
}

/// Slots of `FW_RULE_BUDGETS`, the budgets of drop events: one per rule
/// id modulo [`RULE_RATE_RULES`], then one per reason for the drops no rule
/// decides.
pub const RULE_RATE_SLOTS: u32 = RULE_RATE_RULES + crate::Reason::SLOTS;
/// Rules with budgets of their own: rule ids are dense from 0, so in a
/// policy of up to this many rules no two share one. Beyond, rules whose
/// ids are equal modulo this share a budget (the events are samples; the
/// per-rule counters stay exact). A power of two: the slot is a mask.
pub const RULE_RATE_RULES: u32 = 4096;

/// The budget slot of a drop event in `FW_RULE_BUDGETS`: its rule's, or
/// for a drop no rule decided (`rule == u32::MAX`) its reason's. A per-CPU
/// array indexed so costs a denied packet one inlined array read, where a
/// hash of (reason, rule) keys cost a hash lookup (BENCHMARKS.md, "Drop
/// events' budgets").
#[inline(always)]
pub const fn rule_rate_slot(reason: u8, rule: u32) -> u32 {
    if rule == u32::MAX {
        RULE_RATE_RULES + (reason as u32 & (crate::Reason::SLOTS - 1))
    } else {
        rule & (RULE_RATE_RULES - 1)
    }
}

/// Rate state of one budget (a rule's, a reason's, an audited
/// destination's), per CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct RateWindow {
    /// Start of the current one-second window.
    pub start_ns: u64,
    /// Events emitted in it.
    pub emitted: u32,
    pub _pad: u32,
}

/// Indices of `FW_EVENT_STATS`.
pub mod event_stats {
    pub const EMITTED: u32 = 0;
    /// Over the per-second budget: counted, not sent.
    pub const SUPPRESSED: u32 = 1;
    /// The ring buffer was full.
    pub const LOST: u32 = 2;
    pub const ENTRIES: u32 = 3;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Reason;

    #[test]
    fn rules_of_a_policy_within_the_slots_have_budgets_of_their_own() {
        let mut taken = [false; RULE_RATE_SLOTS as usize];
        let mut take = |slot: u32| !core::mem::replace(&mut taken[slot as usize], true);
        for rule in 0..RULE_RATE_RULES {
            assert!(take(rule_rate_slot(Reason::DropRule as u8, rule)), "rule {rule} shares a slot");
        }
        for reason in Reason::ALL {
            let slot = rule_rate_slot(reason as u8, u32::MAX);
            assert!(slot < RULE_RATE_SLOTS, "{reason:?} beyond the map: {slot}");
            assert!(take(slot), "{reason:?} without a rule shares a slot with a rule or another reason");
        }
        // A rule id beyond the slots shares one (the documented trade).
        assert_eq!(rule_rate_slot(Reason::DropRule as u8, RULE_RATE_RULES + 7), 7);
        // A rule's connect() refusals (drop_socket, with the rule) and its
        // packet drops share the rule's budget.
        assert_eq!(rule_rate_slot(Reason::DropSocket as u8, 9), rule_rate_slot(Reason::DropRule as u8, 9));
    }

    #[test]
    fn the_event_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<super::DropEvent>(), 88);
    }
}
