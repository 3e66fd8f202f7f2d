//! The port lookup without the trie, for most packets: `FW_PORTS_HASH`, a
//! hash written from the same entries as the `FW_PORTS` trie (issue 16,
//! item 2: the port trie was the largest lookup left on a new flow's path,
//! about 125 ns at 100,000 rules against 15 ns for the IPv4 table in front
//! of it).
//!
//! A class is either hashed whole or not at all. For a hashed class:
//!
//! ```text
//! {gen, class, proto, PROTO}        every protocol with entries of 72 bits or
//!                                   more: the answer when the port matches no
//!                                   longer entry (its 72-bit entry, else the
//!                                   class's 64-bit one, else none), and what
//!                                   to ask first: EXACT (exact ports below),
//!                                   RANGES (the trie, for port ranges)
//! {gen, class, proto, PORT, port}   every exact port (an 88-bit entry)
//! {gen, class, 0, CLASS}            always: the class's 64-bit entry or none
//! ```
//!
//! The lookup: the PROTO head; on a hit, the exact port when it says
//! EXACT, then its answer unless it says RANGES; on a miss, the CLASS
//! entry (the protocol has no entry of its own, so any-protocol decides).
//! Both missing means the class was not hashed (it did not fit the map):
//! the trie answers, as it does under RANGES. An exact entry is the
//! longest match there is, and a head's answer is what the trie gives a
//! port no longer entry covers, so every way gives the trie's answer.
//!
//! A protocol whose longer entries all agree with its answer says neither
//! flag and holds no exact ports: one lookup (`proto: [icmp, icmpv6]` with
//! no ICMP types, a whole-protocol rule). Per class the hash holds at most
//! one entry more than twice the class's trie entries.

use crate::policy::PolicyValue;

/// What a key holds, the byte after the protocol.
pub mod kind {
    /// The class's any-protocol answer; written for every hashed class.
    pub const CLASS: u8 = 0;
    /// A protocol's head.
    pub const PROTO: u8 = 1;
    /// One exact port of a protocol.
    pub const PORT: u8 = 2;
}

/// Flags of a PROTO head (`PortHashValue::then`).
pub mod then {
    /// Look the exact port up first.
    pub const EXACT: u8 = 1;
    /// Some entry covers a range of ports: a port that is not exact goes
    /// to the trie.
    pub const RANGES: u8 = 2;
}

/// 12 bytes, hashed as raw bytes: every field a byte array or a byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct PortHashKey {
    pub generation: [u8; 4],
    pub class: [u8; 4],
    pub proto: u8,
    pub kind: u8,
    pub port: [u8; 2],
}

impl PortHashKey {
    #[inline(always)]
    pub const fn new(generation: u32, class: u32, proto: u8, kind: u8, port: u16) -> Self {
        Self { generation: generation.to_be_bytes(), class: class.to_be_bytes(), proto, kind, port: port.to_be_bytes() }
    }
    pub const fn generation(&self) -> u32 {
        u32::from_be_bytes(self.generation)
    }
}

/// A rule (or none) and, in a PROTO head, what to ask before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct PortHashValue {
    pub rule: u32,
    /// [`crate::Action`] as u8, 0 when no rule decides.
    pub action: u8,
    /// [`then`] flags (PROTO heads only).
    pub then: u8,
    pub _pad: [u8; 2],
}

impl PortHashValue {
    pub const NONE: PortHashValue = PortHashValue { rule: 0, action: 0, then: 0, _pad: [0; 2] };

    pub const fn new(answer: Option<PolicyValue>, then: u8) -> Self {
        match answer {
            Some(v) => Self { rule: v.rule, action: v.action, then, _pad: [0; 2] },
            None => Self { then, ..Self::NONE },
        }
    }

    /// The deciding rule, `None` when no rule matches.
    #[inline(always)]
    pub const fn answer(&self) -> Option<PolicyValue> {
        if self.action == 0 {
            None
        } else {
            Some(PolicyValue { rule: self.rule, action: self.action, _pad: [0; 3] })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Action;

    #[test]
    fn sizes_and_answers() {
        assert_eq!(core::mem::size_of::<PortHashKey>(), 12);
        assert_eq!(core::mem::size_of::<PortHashValue>(), 8);
        assert_eq!(PortHashValue::NONE.answer(), None);
        let v = PolicyValue::new(7, Action::Deny);
        assert_eq!(PortHashValue::new(Some(v), then::EXACT).answer(), Some(v));
        assert_eq!(PortHashValue::new(None, then::RANGES).answer(), None);
    }
}
