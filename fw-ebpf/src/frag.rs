//! Non-first fragments carry no ports: they follow the verdict of their
//! datagram's first fragment, remembered here, and are dropped when it was
//! not seen or did not pass. Never a blanket allow.

use aya_ebpf::{macros::map, maps::LruHashMap};
use fw_common::{flow::FRAG_TIMEOUT_NS, maps::DEFAULT_FRAG_ENTRIES, FragKey, FragValue, Reason};

use crate::{parse::Packet, verdict::Verdict};

#[map(name = "FW_FRAGS")]
static FW_FRAGS: LruHashMap<FragKey, FragValue> = LruHashMap::with_max_entries(DEFAULT_FRAG_ENTRIES, 0);

#[inline(always)]
fn key(pkt: &Packet) -> FragKey {
    FragKey { family: pkt.family, proto: pkt.frag_proto, _pad: 0, id: pkt.frag_id, src: pkt.src, dst: pkt.dst }
}

/// Remembers that the first fragment of `pkt`'s datagram passed.
#[inline(always)]
pub fn remember_pass(pkt: &Packet, rule: u32, now: u64) {
    let value = FragValue { seen_ns: now, rule, _pad: 0 };
    let _ = FW_FRAGS.insert(&key(pkt), &value, 0);
}

/// Whether the first fragment of the datagram (family, protocol, id,
/// source, destination) passed within the fragment timeout: an ICMP error
/// quoting one of its later fragments belongs to it.
#[inline(always)]
pub fn first_passed(family: u8, proto: u8, id: u32, src: &[u8; 16], dst: &[u8; 16], now: u64) -> bool {
    let key = FragKey { family, proto, _pad: 0, id, src: *src, dst: *dst };
    match FW_FRAGS.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup, valid for this run.
        Some(v) => now.wrapping_sub(unsafe { (*v).seen_ns }) <= FRAG_TIMEOUT_NS,
        None => false,
    }
}

/// The verdict for a later fragment.
#[inline(always)]
pub fn follow_first(pkt: &Packet, now: u64) -> Verdict {
    match FW_FRAGS.get_ptr(&key(pkt)) {
        // SAFETY: pointer from a successful lookup, valid for this run.
        Some(v) if now.wrapping_sub(unsafe { (*v).seen_ns }) <= FRAG_TIMEOUT_NS => {
            Verdict::new(Reason::PassFragment, unsafe { (*v).rule })
        }
        _ => Verdict::drop(Reason::DropFragment),
    }
}
