//! Why a packet passed or was dropped: one append-only number space shared by
//! the kernel counters, `fw drops`, and (later) events and metrics. Numbers
//! are never reused; a retired reason stays as `UnusedN`.
//!
//! Pass reasons are below [`Reason::FIRST_DROP`], drop reasons from it on.

/// The one list of reasons: the enum, [`Reason::ALL`] and
/// [`Reason::as_str`] are generated from it, so none can miss a reason.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $number:literal => $name:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u8)]
        pub enum Reason {
            $($(#[$doc])* $variant = $number,)*
        }

        impl Reason {
            /// Every reason, in number order.
            pub const ALL: [Reason; [$($number),*].len()] = [$(Reason::$variant),*];

            /// Stable, machine-friendly name (counters, JSON, metric labels).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
    };
}

reasons! {
    /// An allow rule matched.
    PassRule = 0 => "pass_rule",
    /// The packet belongs to a tracked flow.
    PassFlow = 1 => "pass_flow",
    /// Not IPv4 or IPv6 (ARP, LLDP...): outside the policy's scope.
    PassNonIp = 2 => "pass_non_ip",
    /// No rule matched and the phase default allows.
    PassDefault = 3 => "pass_default",
    /// Audit mode: the policy would have dropped it.
    PassAudit = 4 => "pass_audit",
    /// ICMP that the stack needs regardless of policy (neighbour discovery,
    /// errors quoting a tracked flow).
    PassIcmpControl = 5 => "pass_icmp_control",
    /// A later fragment of a datagram whose first fragment passed.
    PassFragment = 6 => "pass_fragment",
    /// DNS (UDP/TCP 53) to one of the phase's `dns.resolvers`: the DNS
    /// proxy's queries.
    PassResolver = 7 => "pass_resolver",

    /// A deny rule matched.
    DropRule = 16 => "drop_rule",
    /// No rule matched and the phase default denies.
    DropDefault = 17 => "drop_default",
    /// Frame shorter than its Ethernet/VLAN header.
    DropTruncatedL2 = 18 => "drop_truncated_l2",
    /// Shorter than its IPv4/IPv6 header.
    DropTruncatedL3 = 19 => "drop_truncated_l3",
    /// Shorter than its TCP/UDP/SCTP/ICMP header.
    DropTruncatedL4 = 20 => "drop_truncated_l4",
    /// IPv4 IHL < 5, total length beyond the packet, wrong version, or a bad
    /// IPv6 payload length.
    DropBadIpHeader = 21 => "drop_bad_ip_header",
    /// IPv6 extension header chain unknown or longer than the parser walks.
    DropIpv6ExtChain = 22 => "drop_ipv6_ext_chain",
    /// A later fragment whose first fragment was not seen or did not pass.
    DropFragment = 23 => "drop_fragment",
    /// Too many VLAN tags.
    DropVlanDepth = 24 => "drop_vlan_depth",
    /// A packet from a served port to a peer that never connected.
    DropSpoofedReply = 25 => "drop_spoofed_reply",
    /// A `connect()` or `sendmsg()` the cgroup socket hook refused with
    /// EPERM (a call, not a packet: nothing was sent).
    DropSocket = 26 => "drop_socket",
    /// No policy generation is active (maps not written): fail closed.
    DropNoPolicy = 27 => "drop_no_policy",
}

impl Reason {
    pub const FIRST_DROP: u8 = 16;
    /// Counter slots per direction in `FW_STATS`.
    pub const SLOTS: u32 = 32;

    #[inline(always)]
    pub const fn is_drop(self) -> bool {
        self as u8 >= Self::FIRST_DROP
    }

    pub fn from_u8(v: u8) -> Option<Reason> {
        Self::ALL.iter().copied().find(|r| *r as u8 == v)
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

    #[test]
    fn numbers_ascend_and_names_are_unique() {
        for pair in Reason::ALL.windows(2) {
            assert!((pair[0] as u8) < (pair[1] as u8), "{pair:?}");
        }
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
            }
        }
    }
}
