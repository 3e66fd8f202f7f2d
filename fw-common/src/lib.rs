//! Types shared by the kernel programs (`fw-ebpf`) and userspace (`fw-user`).
//!
//! Byte-order rule: every field of an LPM-trie key is a byte array in
//! big-endian (network) order, because the trie compares keys bit by bit from
//! the most significant bit of the first byte. Values that only the two sides
//! of `fw` exchange (class ids in values, rule ids, counters) are native-endian
//! integers. Every struct is `#[repr(C)]` with explicit padding so its bytes are
//! fully defined (the kernel hashes and compares keys as raw bytes).
//!
//! This crate is `no_std`; the `user` feature adds `aya::Pod` impls and
//! serde by name for the shared enums.
#![no_std]

pub mod addr6;
#[cfg(feature = "user")]
mod by_name;
pub mod config;
pub mod dir4;
pub mod event;
pub mod flow;
pub mod maps;
pub mod names;
pub mod policy;
pub mod port_hash;
pub mod reason;
pub mod stats;

pub use config::{Config, FlowTimeouts, PhaseConfig};
pub use event::{DropEvent, RateWindow};
pub use flow::{FlowKey, FlowKey4, FlowValue, FragKey, FragValue};
pub use policy::{Action, AddrKey4, AddrKey6, Direction, PolicyValue, PortKey};
pub use reason::Reason;
pub use stats::Counter;

/// Return codes of a TC classifier, copied from `include/uapi/linux/pkt_cls.h`
/// (they are the same numbers for TCX: `TCX_NEXT` = -1, `TCX_PASS` = 0,
/// `TCX_DROP` = 2).
pub mod tc_action {
    /// Let the packet continue: the next TCX program or tc filter decides,
    /// and the kernel passes it when nothing else does.
    pub const TC_ACT_UNSPEC: i32 = -1;
    /// Drop the packet.
    pub const TC_ACT_SHOT: i32 = 2;
}

/// Return codes of an XDP program, from `include/uapi/linux/bpf.h`.
pub mod xdp_action {
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is #[repr(C)], made only of integers and byte
    // arrays, with explicit padding fields, so any bit pattern is valid.
    unsafe impl aya::Pod for super::AddrKey4 {}
    unsafe impl aya::Pod for super::AddrKey6 {}
    unsafe impl aya::Pod for super::addr6::NetKey {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::port_hash::PortHashKey {}
    unsafe impl aya::Pod for super::port_hash::PortHashValue {}
    unsafe impl aya::Pod for super::PhaseConfig {}
    unsafe impl aya::Pod for super::FlowTimeouts {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::RateWindow {}
    unsafe impl aya::Pod for super::names::Learned {}
    unsafe impl aya::Pod for super::names::Resolvers {}
    unsafe impl aya::Pod for super::names::DnsProxy {}
}
