//! The IPv4 table packets look addresses up in (`fw_common::dir4`) past
//! its budget: a /16 whose chunk or hosts do not fit is marked for the
//! `FW_ADDR4` trie, and packets to it are judged exactly as before. The
//! differential run never fills the table (its policies are small), so
//! this loads the object with a table of one chunk and 32 hosts per phase.

use fw_common::{dir4, Direction};
use fw_user::kernel::loader::{Capacity, LoadOptions};

use crate::{
    kernel::{Kernel, TC_ACT_SHOT, TC_ACT_UNSPEC},
    packets::*,
};

// 198.18.8.0/26 is 64 hosts, more than the 32 a phase may have: /16
// 198.18 goes to the trie, and 198.19, next in address order, gets the
// one chunk.
const POLICY: &str = r#"
name: addr4
phases:
  runtime:
    egress_default: drop
    egress:
      - { name: near, to: ["198.18.7.0/24"], proto: udp, ports: [53] }
      - { name: hosts, to: ["198.18.8.0/26"], proto: tcp, ports: [443] }
      - { name: far, to: ["198.19.9.0/24"], proto: udp, ports: [53] }
"#;

#[test]
fn a_slash_16_beyond_the_table_is_judged_by_the_trie() {
    crate::require_root();
    let options = LoadOptions {
        capacity: Capacity { mid_chunks: 1, addr_entries: 64, ..Capacity::default() },
        ..LoadOptions::here().expect("load options")
    };
    let mut k = Kernel::load_with(&options);
    let compiled = crate::policies::compile_yaml(POLICY, "addr4.yaml", "runtime");
    // Twice, so that the second generation uses the other slot's chunk.
    for (generation, previous) in [(1, None), (2, Some(1))] {
        k.switch(&compiled, generation, previous);
        let top =
            k.policy.addr4_top.get(&dir4::top_index(generation, Direction::Egress as u8), 0).expect("FW_ADDR4_TOP");
        assert_eq!(top[0xc612], dir4::TRIE, "generation {generation}: 198.18/16 is left to the trie");
        assert_eq!(top[0xc613] & dir4::CHUNK, dir4::CHUNK, "generation {generation}: 198.19/16 has the chunk");
        let run = |f: &[u8]| k.run(Direction::Egress, f).expect("test run");
        for (what, f, verdict) in [
            ("near, in the trie", local_udp4([198, 18, 7, 5], 53), TC_ACT_UNSPEC),
            ("near, another port", local_udp4([198, 18, 7, 5], 54), TC_ACT_SHOT),
            ("next to near", local_udp4([198, 18, 6, 5], 53), TC_ACT_SHOT),
            ("a host, in the trie", local_syn4([198, 18, 8, 63], 443), TC_ACT_UNSPEC),
            ("past the hosts", local_syn4([198, 18, 8, 64], 443), TC_ACT_SHOT),
            ("far, in the chunk", local_udp4([198, 19, 9, 200], 53), TC_ACT_UNSPEC),
            ("next to far", local_udp4([198, 19, 10, 1], 53), TC_ACT_SHOT),
        ] {
            assert_eq!(run(&f), verdict, "generation {generation}: {what}: {}", hex(&f));
        }
    }
}
