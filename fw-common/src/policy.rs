//! Policy lookup keys and values.
//!
//! A verdict is two chained longest-prefix-match lookups (for packets, the
//! IPv4 entries are laid out as `crate::dir4`'s table, and the port entries
//! as `crate::port_hash`'s hash in front of the trie, which answer the same
//! longest match):
//!
//! ```text
//! FW_ADDR4 / FW_ADDR6 key (9 / 21 bytes), prefix = 40 + CIDR length
//! +----------------+-----------+------------------------+
//! | generation: 4B | dir: 1B   | address: 4B or 16B     |
//! +----------------+-----------+------------------------+
//!   exact            exact       CIDR prefix
//! value: u32 address class (every rule whose CIDR contains the address)
//!
//! FW_PORTS key (11 bytes), prefix = 64 | 72 | 72 + port prefix length
//! +----------------+------------+-----------+------------+
//! | generation: 4B | class: 4B  | proto: 1B | port: 2B   |
//! +----------------+------------+-----------+------------+
//!   exact            exact        wildcard    prefix of a range's cover
//!                                 only with a fully wildcarded port
//! value: PolicyValue { rule, action }
//! ```
//!
//! A prefix of 64 (class only) means "any protocol"; 72 means "this protocol,
//! any port". Port ranges are stored as their minimal cover by aligned
//! power-of-two blocks (40000-65535 is 6 prefixes). For ICMP and ICMPv6 the
//! port field holds `type << 8 | code`. For protocols without ports it is 0.
//! The compiler makes the entries of one class consistent so that the longest
//! match is always the deciding rule: LPM needs no further precedence logic in
//! the kernel.

/// Bits of the address key before the address: generation (32) + direction (8).
pub const ADDR_KEY_FIXED_BITS: u32 = 40;
/// Bits of the port key that select a class: generation (32) + class (32).
pub const PORT_KEY_CLASS_BITS: u32 = 64;
/// ... plus the protocol byte.
pub const PORT_KEY_PROTO_BITS: u32 = PORT_KEY_CLASS_BITS + 8;
/// ... plus the whole port: an exact match.
pub const PORT_KEY_FULL_BITS: u32 = PORT_KEY_PROTO_BITS + 16;

/// Which way the packet goes, as seen from the protected host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Direction {
    /// Leaves the host: matched on destination address and port.
    Egress = 0,
    /// Arrives at the host: matched on source address and destination port.
    Inbound = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Egress, Direction::Inbound];
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Inbound => "inbound",
        }
    }
}

/// What a rule or a phase default does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Action {
    Allow = 1,
    Deny = 2,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Allow, Action::Deny];
    /// Anything but `Allow` reads as `Deny`: a zeroed or corrupt byte fails closed.
    #[inline(always)]
    pub const fn from_u8(v: u8) -> Action {
        if v == Action::Allow as u8 {
            Action::Allow
        } else {
            Action::Deny
        }
    }
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct AddrKey4 {
    pub generation: [u8; 4],
    pub direction: u8,
    pub addr: [u8; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct AddrKey6 {
    pub generation: [u8; 4],
    pub direction: u8,
    pub addr: [u8; 16],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(C)]
pub struct PortKey {
    pub generation: [u8; 4],
    pub class: [u8; 4],
    pub proto: u8,
    pub port: [u8; 2],
}

impl AddrKey4 {
    #[inline(always)]
    pub const fn new(generation: u32, direction: Direction, addr: [u8; 4]) -> Self {
        Self { generation: generation.to_be_bytes(), direction: direction as u8, addr }
    }
}

impl AddrKey6 {
    #[inline(always)]
    pub const fn new(generation: u32, direction: Direction, addr: [u8; 16]) -> Self {
        Self { generation: generation.to_be_bytes(), direction: direction as u8, addr }
    }
}

impl PortKey {
    #[inline(always)]
    pub const fn new(generation: u32, class: u32, proto: u8, port: u16) -> Self {
        Self { generation: generation.to_be_bytes(), class: class.to_be_bytes(), proto, port: port.to_be_bytes() }
    }
    pub const fn class(&self) -> u32 {
        u32::from_be_bytes(self.class)
    }
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// The deciding rule of a {class, protocol, port} cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
#[repr(C)]
pub struct PolicyValue {
    /// Index of the rule in the policy file (file order), and into `FW_RULE_STATS`.
    pub rule: u32,
    /// [`Action`] as u8.
    pub action: u8,
    pub _pad: [u8; 3],
}

impl PolicyValue {
    pub const fn new(rule: u32, action: Action) -> Self {
        Self { rule, action: action as u8, _pad: [0; 3] }
    }
    #[inline(always)]
    pub const fn action(&self) -> Action {
        Action::from_u8(self.action)
    }
}

/// IP protocol numbers the policy language names.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn key_sizes_match_the_layout_comment() {
        assert_eq!(size_of::<AddrKey4>() as u32 * 8, ADDR_KEY_FIXED_BITS + 32);
        assert_eq!(size_of::<AddrKey6>() as u32 * 8, ADDR_KEY_FIXED_BITS + 128);
        assert_eq!(size_of::<PortKey>() as u32 * 8, PORT_KEY_FULL_BITS);
        assert_eq!(size_of::<PolicyValue>(), 8);
    }

    #[test]
    fn unknown_action_bytes_fail_closed() {
        assert_eq!(Action::from_u8(0), Action::Deny);
        assert_eq!(Action::from_u8(1), Action::Allow);
        assert_eq!(Action::from_u8(0xff), Action::Deny);
    }
}
