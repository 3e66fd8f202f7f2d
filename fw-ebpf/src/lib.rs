//! The parts of the kernel program that need no kernel: the header parser
//! and its helpers; and the IPv4 table, IPv6 hash and port lookups
//! (`addr4`, `addr6`, `ports`) and the counting (`counters`), which the
//! lookup benchmark's object (`fw-lookup-bench`) shares. The `fw-ebpf` binary (built for
//! bpfel-unknown-none) uses them from here, and here they are also
//! ordinary Rust for the host, so `cargo test -p fw-ebpf --lib` tests them
//! without root or a kernel
//! (truncations, VLAN tags, extension headers, fragments, ICMP quotes).
//!
//! fw-user also names this crate as a build dependency, so that cargo
//! rebuilds fw-user (and the object it embeds) when fw-ebpf changes.
#![cfg_attr(target_arch = "bpf", no_std)]
// `allows-misaligned-mem-access` for the parser (see parse::parse_skb).
#![cfg_attr(target_arch = "bpf", feature(bpf_target_feature))]

pub mod addr4;
pub mod addr6;
pub mod counters;
pub mod mem;
pub mod parse;
pub mod ports;
