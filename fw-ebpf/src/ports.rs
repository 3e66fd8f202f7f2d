//! The deciding rule of {class, protocol, port}: `FW_PORTS_HASH` first
//! (`fw_common::port_hash`), the `FW_PORTS` trie for port ranges and for
//! classes the hash could not hold. Shared with the lookup benchmark
//! (`fw-lookup-bench`), which times it against the trie alone.

use aya_ebpf::maps::{lpm_trie::Key, HashMap, LpmTrie};
use fw_common::{
    policy::PORT_KEY_FULL_BITS,
    port_hash::{kind, then, PortHashKey, PortHashValue},
    PolicyValue, PortKey,
};

pub struct Maps {
    pub hash: &'static HashMap<PortHashKey, PortHashValue>,
    pub trie: &'static LpmTrie<PortKey, PolicyValue>,
}

/// No rule matches: what [`rule`] returns then. Otherwise it returns
/// `rule << 8 | action` (an action is never 0), one scalar: the verifier
/// joins every path of the lookup into it.
pub const NO_RULE: u64 = 0;

/// The deciding rule packed as [`NO_RULE`] says, [`unpack`] reads it.
///
/// One hash lookup for a protocol whose entries agree, two for an exact
/// port or an any-protocol answer; the trie after the head for a port
/// inside a range, after two misses for a class left to it.
#[inline(always)]
pub fn rule(maps: &Maps, generation: u32, class: u32, proto: u8, port: u16) -> u64 {
    let hashed = hashed(maps, generation, class, proto, port);
    if hashed != TRIE {
        return hashed;
    }
    let key = Key::new(PORT_KEY_FULL_BITS, PortKey::new(generation, class, proto, port));
    match maps.trie.get(&key) {
        Some(v) => pack(v.rule, v.action),
        None => NO_RULE,
    }
}

#[inline(always)]
pub fn unpack(packed: u64) -> Option<PolicyValue> {
    if packed == NO_RULE {
        return None;
    }
    Some(PolicyValue { rule: (packed >> 8) as u32, action: packed as u8, _pad: [0; 3] })
}

#[inline(always)]
fn pack(rule: u32, action: u8) -> u64 {
    if action == 0 {
        NO_RULE
    } else {
        u64::from(rule) << 8 | u64::from(action)
    }
}

/// [`hashed`]: the trie must answer. No packed rule has all these bits.
const TRIE: u64 = u64::MAX;

/// The hash's answer, packed, or [`TRIE`]. Apart from the trie lookup so
/// that the two keys' lifetimes do not overlap and share a stack slot: the
/// calls into here share 512 bytes of stack.
#[inline(always)]
fn hashed(maps: &Maps, generation: u32, class: u32, proto: u8, port: u16) -> u64 {
    // One key, changed between the lookups.
    let mut key = PortHashKey::new(generation, class, proto, kind::PROTO, 0);
    // SAFETY (each `get`): the value is read at once.
    let Some(head) = (unsafe { maps.hash.get(&key) }) else {
        key.proto = 0;
        key.kind = kind::CLASS;
        return match unsafe { maps.hash.get(&key) } {
            Some(any) => pack(any.rule, any.action),
            None => TRIE,
        };
    };
    let (flags, answer) = (head.then, pack(head.rule, head.action));
    if flags & then::EXACT != 0 {
        key.kind = kind::PORT;
        key.port = port.to_be_bytes();
        if let Some(v) = unsafe { maps.hash.get(&key) } {
            return pack(v.rule, v.action);
        }
    }
    if flags & then::RANGES == 0 {
        answer
    } else {
        TRIE
    }
}
