//! Why a packet passed or was dropped: one append-only number space shared by
//! the kernel counters, `fw drops`, and (later) events and metrics. Numbers
//! are never reused; a retired reason stays as `UnusedN`.
//!
//! Pass reasons are below [`Reason::FIRST_DROP`], drop reasons from it on.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Reason {
    /// An allow rule matched.
    PassRule = 0,
    /// The packet belongs to a tracked flow.
    PassFlow = 1,
    /// Not IPv4 or IPv6 (ARP, LLDP...): outside the policy's scope.
    PassNonIp = 2,
    /// No rule matched and the phase default allows.
    PassDefault = 3,
    /// Audit mode: the policy would have dropped it.
    PassAudit = 4,
    /// ICMP that the stack needs regardless of policy (neighbour discovery,
    /// errors quoting a tracked flow).
    PassIcmpControl = 5,
    /// A later fragment of a datagram whose first fragment passed.
    PassFragment = 6,
    /// DNS (UDP/TCP 53) to one of the phase's `dns.resolvers`: the DNS
    /// proxy's queries.
    PassResolver = 7,

    /// A deny rule matched.
    DropRule = 16,
    /// No rule matched and the phase default denies.
    DropDefault = 17,
    /// Frame shorter than its Ethernet/VLAN header.
    DropTruncatedL2 = 18,
    /// Shorter than its IPv4/IPv6 header.
    DropTruncatedL3 = 19,
    /// Shorter than its TCP/UDP/SCTP/ICMP header.
    DropTruncatedL4 = 20,
    /// IPv4 IHL < 5, total length beyond the packet, wrong version, or a bad
    /// IPv6 payload length.
    DropBadIpHeader = 21,
    /// IPv6 extension header chain unknown or longer than the parser walks.
    DropIpv6ExtChain = 22,
    /// A later fragment whose first fragment was not seen or did not pass.
    DropFragment = 23,
    /// Too many VLAN tags.
    DropVlanDepth = 24,
    /// A packet from a served port to a peer that never connected.
    DropSpoofedReply = 25,
    /// A `connect()` or `sendmsg()` the cgroup socket hook refused with
    /// EPERM (a call, not a packet: nothing was sent).
    DropSocket = 26,
    /// No policy generation is active (maps not written): fail closed.
    DropNoPolicy = 27,
}

impl Reason {
    pub const FIRST_DROP: u8 = 16;
    /// Counter slots per direction in `FW_STATS`.
    pub const SLOTS: u32 = 32;

    pub const ALL: [Reason; 20] = [
        Reason::PassRule,
        Reason::PassFlow,
        Reason::PassNonIp,
        Reason::PassDefault,
        Reason::PassAudit,
        Reason::PassIcmpControl,
        Reason::PassFragment,
        Reason::PassResolver,
        Reason::DropRule,
        Reason::DropDefault,
        Reason::DropTruncatedL2,
        Reason::DropTruncatedL3,
        Reason::DropTruncatedL4,
        Reason::DropBadIpHeader,
        Reason::DropIpv6ExtChain,
        Reason::DropFragment,
        Reason::DropVlanDepth,
        Reason::DropSpoofedReply,
        Reason::DropSocket,
        Reason::DropNoPolicy,
    ];

    #[inline(always)]
    pub const fn is_drop(self) -> bool {
        self as u8 >= Self::FIRST_DROP
    }

    pub fn from_u8(v: u8) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| *r as u8 == v)
    }

    /// Stable, machine-friendly name (counters, JSON, metric labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::PassRule => "pass_rule",
            Reason::PassFlow => "pass_flow",
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassDefault => "pass_default",
            Reason::PassAudit => "pass_audit",
            Reason::PassIcmpControl => "pass_icmp_control",
            Reason::PassFragment => "pass_fragment",
            Reason::PassResolver => "pass_resolver",
            Reason::DropRule => "drop_rule",
            Reason::DropDefault => "drop_default",
            Reason::DropTruncatedL2 => "drop_truncated_l2",
            Reason::DropTruncatedL3 => "drop_truncated_l3",
            Reason::DropTruncatedL4 => "drop_truncated_l4",
            Reason::DropBadIpHeader => "drop_bad_ip_header",
            Reason::DropIpv6ExtChain => "drop_ipv6_ext_chain",
            Reason::DropFragment => "drop_fragment",
            Reason::DropVlanDepth => "drop_vlan_depth",
            Reason::DropSpoofedReply => "drop_spoofed_reply",
            Reason::DropSocket => "drop_socket",
            Reason::DropNoPolicy => "drop_no_policy",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_fits_its_slot_and_round_trips() {
        for r in Reason::ALL {
            assert!((r as u32) < Reason::SLOTS);
            assert_eq!(Reason::from_u8(r as u8), Some(r));
            assert_eq!(r.is_drop(), r.as_str().starts_with("drop_"));
        }
    }
}
