//! The IPv6 hash packets look addresses up in (`fw_common::addr6`): each
//! of its paths (a host, a /64, a /64 left to the trie, a /64 it does not
//! hold with and without prefixes shorter than /64, `::/0`) judges as the
//! trie does, in phases written with the hash and without it, across
//! generations. Only phases of many IPv6 entries get the hash, so this
//! lowers the threshold to send a small policy through it (the
//! differential run does the same for every other random policy).

use fw_common::{
    addr6::{NetKey, HASH_FROM_ENTRIES},
    dir4, AddrKey6, Direction,
};
use fw_user::kernel::loader::LoadOptions;

use crate::{
    kernel::{Kernel, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::*,
};

// `wide` has a /32 (a /64 the hash does not hold goes to the trie);
// `narrow` has none, and ::/0 (such a /64 is ::/0's without the trie).
const POLICY: &str = r#"
name: addr6
phases:
  wide:
    egress_default: drop
    egress:
      - { name: wide, to: ["2001:db8::/32"], proto: udp, ports: [123] }
      - { name: host, to: ["2001:db8:1::7/128"], proto: udp, ports: [53] }
      - { name: net, to: ["2001:db8:2::/64"], proto: tcp, ports: [443] }
      - { name: blocked, to: ["2001:db8:2::9/128"], proto: tcp, ports: [443], action: deny }
      - { name: mid, to: ["2001:db8:3::100/120"], proto: udp, ports: [53] }
  narrow:
    egress_default: drop
    egress:
      - { name: any, to: ["::/0"], proto: udp, ports: [9] }
      - { name: host-n, to: ["2001:db8:1::7/128"], proto: udp, ports: [53] }
      - { name: net-n, to: ["2001:db8:2::/64"], proto: tcp, ports: [443] }
      - { name: blocked-n, to: ["2001:db8:2::9/128"], proto: tcp, ports: [443], action: deny }
      - { name: mid-n, to: ["2001:db8:3::100/120"], proto: udp, ports: [53] }
"#;

fn a(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().expect("an IPv6 address").octets()
}

#[test]
fn the_ipv6_hash_judges_as_the_trie() {
    crate::require_root();
    let wide = crate::policies::compile_yaml(POLICY, "addr6.yaml", "wide");
    let narrow = crate::policies::compile_yaml(POLICY, "addr6.yaml", "narrow");
    let (pass, drop) = (TC_ACT_UNSPEC, TC_ACT_SHOT);
    let common = [
        ("a host", local_udp6(a("2001:db8:1::7"), 53), pass),
        ("next to the host", local_udp6(a("2001:db8:1::8"), 53), drop),
        ("in the /64", local_syn6(a("2001:db8:2::5"), 443), pass),
        ("a denied host in the /64", local_syn6(a("2001:db8:2::9"), 443), drop),
        ("in the /120, left to the trie", local_udp6(a("2001:db8:3::1ff"), 53), pass),
        ("past the /120", local_udp6(a("2001:db8:3::200"), 53), drop),
        ("outside everything", local_udp6(a("2001:db9::1"), 123), drop),
    ];
    let wide_only = [
        ("the host's /64, under the /32", local_udp6(a("2001:db8:1::8"), 123), pass),
        ("the /120's /64, under the /32", local_udp6(a("2001:db8:3::200"), 123), pass),
        ("a /64 not in the hash, under the /32", local_udp6(a("2001:db8:9::1"), 123), pass),
        ("a /64 not in the hash, another port", local_udp6(a("2001:db8:9::1"), 9), drop),
    ];
    let narrow_only = [
        ("a /64 not in the hash, ::/0", local_udp6(a("2001:db8:9::1"), 9), pass),
        ("a /64 not in the hash, another port", local_udp6(a("2001:db8:9::1"), 123), drop),
        ("the host's /64, ::/0", local_udp6(a("2001:db8:1::8"), 9), pass),
    ];
    for hash_from in [0, HASH_FROM_ENTRIES] {
        let hashed = hash_from == 0;
        let mut k = Kernel::load_with(&LoadOptions::here().expect("load options"));
        k.policy.addr6_hash_from = hash_from;
        let mut previous = None;
        for (generation, phase) in [(1, &wide), (2, &narrow), (3, &wide)] {
            k.switch(phase, generation, previous);
            previous = Some(generation);
            let settings = k.policy.phases.get(&(generation & 1), 0).expect("FW_PHASES");
            assert_eq!(settings.addr6_hash != 0, hashed, "generation {generation}: the phase's flag");
            let nets: Vec<NetKey> = k.policy.addr6_nets.keys().map(|k| k.expect("FW_ADDR6_NETS key")).collect();
            let hosts: Vec<AddrKey6> = k.policy.addr6_hosts.keys().map(|k| k.expect("FW_ADDR6_HOSTS key")).collect();
            assert!(nets.iter().all(|k| k.generation() == generation), "old /64s collected: {nets:?}");
            assert!(hosts.iter().all(|k| u32::from_be_bytes(k.generation) == generation), "old hosts collected");
            // The host's, the net's and the /120's /64s; the two hosts.
            assert_eq!((nets.len(), hosts.len()), if hashed { (3, 2) } else { (0, 0) }, "generation {generation}");
            let is_wide = generation != 2;
            if hashed {
                let miss = settings.addr6_miss[Direction::Egress as usize];
                assert_eq!(miss == dir4::TRIE, is_wide, "generation {generation}: miss entry {miss:#x}");
            }
            let extra: &[_] = if is_wide { &wide_only } else { &narrow_only };
            for (what, f, verdict) in common.iter().chain(extra) {
                let got = k.run(Direction::Egress, f).expect("test run");
                assert_eq!(got, *verdict, "hash {hashed}, generation {generation}: {what}: {}", hex(f));
            }
        }
    }
}
