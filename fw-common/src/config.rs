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
