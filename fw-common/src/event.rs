//! Drop events, sent through the `FW_EVENTS` ring buffer.
//!
//! Versioned: the record starts with [`EVENT_VERSION`], and userspace
//! refuses versions it does not know. Rate-limited in the kernel per
//! (reason, rule) and CPU: at most the load-time budget per second each; the
//! counters stay exact whatever is suppressed.

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

/// Per-(reason, rule) rate state, per CPU.
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
    #[test]
    fn the_event_layout_is_fixed() {
        assert_eq!(core::mem::size_of::<super::DropEvent>(), 88);
    }
}
