//! Tracked flows, keyed the same way from both directions: `local` is this
//! host's side (source on egress, destination on ingress), so a reply finds
//! the entry its request created with one hash lookup.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    /// Big-endian; ICMP echo uses the identifier as both ports.
    pub local_port: [u8; 2],
    pub remote_port: [u8; 2],
    /// IPv4 addresses use the first 4 bytes, the rest stays zero.
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowValue {
    /// Generation whose policy admitted the flow; another generation re-checks it.
    pub generation: u32,
    /// Rule that admitted it.
    pub rule: u32,
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen_ns: u64,
    /// [`FLOW_INBOUND`], [`FLOW_FIN`]...
    pub flags: u8,
    pub _pad: [u8; 7],
}

/// The flow was opened by a peer (admitted by an inbound rule).
pub const FLOW_INBOUND: u8 = 1;
/// A FIN or RST was seen: the flow expires sooner.
pub const FLOW_FIN: u8 = 2;
