//! Run-time configuration that a phase switch changes.
//!
//! A switch writes the new phase's [`PhaseConfig`] into slot
//! `new_generation & 1` of `FW_PHASES` first, then flips [`Config::generation`]
//! in `FW_CONFIG` with one 4-byte map write: every packet sees either the old
//! generation with its settings or the new one with its settings, never a mix.

use crate::policy::Action;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Config {
    /// The active policy generation. Keys of other generations never match.
    pub generation: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PhaseConfig {
    /// What happens to an egress packet that no rule matches ([`Action`] as u8).
    /// Zero (never written) reads as deny: fail closed.
    pub egress_default: u8,
    /// What happens to a new inbound flow that no inbound rule matches.
    pub inbound_default: u8,
    /// Non-zero: audit mode, denied packets are counted and passed.
    pub audit: u8,
    /// Non-zero: the cgroup socket hooks refuse a denied `connect()` or
    /// `sendmsg()` with EPERM at once (zero: `reject: false`, silent drops).
    pub reject: u8,
    /// Non-zero: IPv6 peers are looked up through the hash of /64s
    /// (`crate::addr6`), written for this generation; zero: the trie alone.
    pub addr6_hash: u8,
    pub _pad: [u8; 3],
    /// Per direction (`Direction as usize`), with [`PhaseConfig::addr6_hash`]:
    /// the entry of a /64 the hash does not hold (`crate::addr6`).
    pub addr6_miss: [u32; 2],
    /// Idle timeouts of the flows, in seconds (`timeouts:` in the phase);
    /// zero reads as the built-in default (see [`crate::flow::timeouts`]).
    /// Read by the kernel only for a flow that has been idle for a second
    /// or more, so they cost an established connection nothing.
    pub timeouts: FlowTimeouts,
}

/// Idle timeouts in seconds, per kind of flow (see docs/datapath.md, "Flow
/// state"). A flow idle for longer is forgotten: its next packet meets the
/// policy again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[repr(C)]
pub struct FlowTimeouts {
    /// TCP, open or half-closed (a FIN one way only).
    pub tcp_established: u32,
    /// TCP after a RST, or after a FIN each way.
    pub tcp_closing: u32,
    pub udp: u32,
    /// ICMP echo and every other protocol.
    pub other: u32,
}

impl FlowTimeouts {
    /// What a phase without `timeouts:` gets.
    pub const DEFAULT: FlowTimeouts = FlowTimeouts {
        tcp_established: crate::flow::timeouts::TCP_ESTABLISHED,
        tcp_closing: crate::flow::timeouts::TCP_CLOSING,
        udp: crate::flow::timeouts::UDP,
        other: crate::flow::timeouts::OTHER,
    };

    /// Each unset (zero) timeout replaced by its default, as the kernel
    /// reads them.
    pub const fn or_default(self) -> FlowTimeouts {
        const fn pick(set: u32, default: u32) -> u32 {
            if set == 0 {
                default
            } else {
                set
            }
        }
        let d = FlowTimeouts::DEFAULT;
        FlowTimeouts {
            tcp_established: pick(self.tcp_established, d.tcp_established),
            tcp_closing: pick(self.tcp_closing, d.tcp_closing),
            udp: pick(self.udp, d.udp),
            other: pick(self.other, d.other),
        }
    }
}

impl PhaseConfig {
    #[inline(always)]
    pub fn egress_default(&self) -> Action {
        Action::from_u8(self.egress_default)
    }
    #[inline(always)]
    pub fn inbound_default(&self) -> Action {
        Action::from_u8(self.inbound_default)
    }
}
