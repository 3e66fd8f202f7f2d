//! The port hash packets look ports up in first (`fw_common::port_hash`)
//! past its budget: a class whose entries do not fit is left whole to the
//! `FW_PORTS` trie, and its packets are judged exactly as a hashed class's.
//! The differential run never fills the hash (its policies are small), so
//! this loads the object with a hash of no room, room for one class, and
//! the default, and judges the same packets in each, in two generations.

use std::collections::BTreeSet;

use fw_common::{port_hash::PortHashKey, Direction};
use fw_user::kernel::loader::{Capacity, LoadOptions};

use crate::{
    kernel::{Kernel, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::*,
};

// Class of 198.18.7/24: an exact port, a range, a whole protocol (4 hash
// entries: its any-protocol entry, the UDP and ICMP heads, port 53).
// Class of 198.19.9/24: any protocol but TCP 25 (3 entries: its
// any-protocol entry, the TCP head, port 25).
const POLICY: &str = r#"
name: ports
phases:
  runtime:
    egress_default: drop
    egress:
      - { name: dns, to: ["198.18.7.0/24"], proto: udp, ports: [53] }
      - { name: media, to: ["198.18.7.0/24"], proto: udp, ports: ["1000-1100"] }
      - { name: ping, to: ["198.18.7.0/24"], proto: icmp }
      - { name: smtp, to: ["198.19.9.0/24"], proto: tcp, ports: [25], action: deny }
      - { name: web, to: ["198.19.9.0/24"], proto: any }
"#;

fn echo4(dst: [u8; 4]) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(crate::gen::LOCAL4), v4(dst), ICMP), &icmp(8, 0, echo_rest(7, 1), &[]), 0)
}

#[test]
fn a_class_beyond_the_port_hash_is_judged_by_the_trie() {
    crate::require_root();
    let compiled = crate::policies::compile_yaml(POLICY, "ports.yaml", "runtime");
    // FW_PORTS_HASH capacity (half per phase) -> classes hashed.
    for (capacity, hashed) in [(2, 0), (8, 1), (Capacity::default().port_hash_entries, 2)] {
        let options = LoadOptions {
            capacity: Capacity { port_hash_entries: capacity, ..Capacity::default() },
            ..LoadOptions::here().expect("load options")
        };
        let mut k = Kernel::load_with(&options);
        for (generation, previous) in [(1, None), (2, Some(1))] {
            k.switch(&compiled, generation, previous);
            let keys: Vec<PortHashKey> = k.policy.ports_hash.keys().map(|k| k.expect("FW_PORTS_HASH key")).collect();
            assert!(keys.iter().all(|k| k.generation() == generation), "the old generation's keys are collected");
            let classes: BTreeSet<[u8; 4]> = keys.iter().map(|k| k.class).collect();
            assert_eq!(classes.len(), hashed, "capacity {capacity}, generation {generation}: {keys:?}");
            let run = |f: &[u8]| k.run(Direction::Egress, f).expect("test run");
            for (what, f, verdict) in [
                ("an exact port", local_udp4([198, 18, 7, 5], 53), TC_ACT_UNSPEC),
                ("next to it", local_udp4([198, 18, 7, 5], 54), TC_ACT_SHOT),
                ("in the range", local_udp4([198, 18, 7, 5], 1050), TC_ACT_UNSPEC),
                ("past the range", local_udp4([198, 18, 7, 5], 1101), TC_ACT_SHOT),
                ("a whole protocol", echo4([198, 18, 7, 5]), TC_ACT_UNSPEC),
                ("a protocol without entries", local_syn4([198, 18, 7, 5], 53), TC_ACT_SHOT),
                ("an exact deny", local_syn4([198, 19, 9, 5], 25), TC_ACT_SHOT),
                ("another port of its protocol", local_syn4([198, 19, 9, 5], 443), TC_ACT_UNSPEC),
                ("any protocol", local_udp4([198, 19, 9, 5], 25), TC_ACT_UNSPEC),
                ("no class", local_udp4([198, 19, 10, 5], 53), TC_ACT_SHOT),
            ] {
                assert_eq!(run(&f), verdict, "capacity {capacity}, generation {generation}: {what}: {}", hex(&f));
            }
        }
    }
}
