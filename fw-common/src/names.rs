//! DNS names learned at run time (docs/datapath.md, "Names").
//!
//! A name rule (an egress allow rule with `to: [acme-v02.api.letsencrypt.org]`
//! or `*.opentok.com` in a phase with `dns:`) gets its own port class,
//! [`name_class`]`(rule id)`, in `FW_PORTS` under every generation whose
//! phase has the rule: the compiler writes the rule's protocols and ports
//! there, as for any address class. The daemon's DNS proxy learns the
//! addresses answered for a matching name into `FW_NAMES4`/`FW_NAMES6`
//! (address -> up to [`NAME_SLOTS`] rule ids, each with its expiry) before
//! it releases the answer to the application. A packet that opens a flow,
//! and that the static tables leave to the phase default, is then looked
//! up there: one hash lookup, and one `FW_PORTS` lookup per live slot.
//! Established flows never get there (the flow table decides first).
//!
//! The learned map is keyed by address only, not by generation: after a
//! phase switch, an address learned for rule R stays allowed exactly when
//! the new phase still has rule R (its name class has entries under the new
//! generation), and stops matching otherwise. Nothing has to be copied at
//! the switch.

/// Name classes are above every address class (those count from 0).
pub const NAME_CLASS_BASE: u32 = 1 << 31;

/// The `FW_PORTS` class of name rule `rule`.
#[inline(always)]
pub const fn name_class(rule: u32) -> u32 {
    NAME_CLASS_BASE | rule
}

/// Rules one learned address can be allowed for at once (two rules whose
/// names share a CDN address, with different ports).
pub const NAME_SLOTS: usize = 4;

/// A free slot.
pub const EMPTY_SLOT: u32 = u32::MAX;

/// Capacity of each learned-address map. The maps are not preallocated
/// (`BPF_F_NO_PREALLOC`): memory follows the addresses learned, which the
/// daemon keeps under the phase's `dns.max_addresses` (evicting the least
/// recently answered); the capacity only bounds what that setting allows.
pub const LEARNED_CAPACITY: u32 = 1 << 17;

/// Value of `FW_NAMES4`/`FW_NAMES6`: rule `rule[i]` allows the address until
/// `expires_ns[i]` (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Learned {
    pub expires_ns: [u64; NAME_SLOTS],
    pub rule: [u32; NAME_SLOTS],
}

impl Learned {
    pub const EMPTY: Learned = Learned { expires_ns: [0; NAME_SLOTS], rule: [EMPTY_SLOT; NAME_SLOTS] };
}

/// IPv4 and IPv6 resolvers a phase can name (they live in a fixed array).
pub const MAX_RESOLVERS4: usize = 4;
pub const MAX_RESOLVERS6: usize = 2;

/// `FW_RESOLVERS[generation & 1]`, written with the phase like
/// `FW_PHASES`: the phase's `dns.resolvers`. When `enabled`, the socket
/// hooks send DNS (UDP/TCP 53) to resolver `i` to the daemon's proxy on
/// loopback port `proxy_port + i` (IPv6 resolvers are `i` =
/// [`MAX_RESOLVERS4`] + j) and refuse DNS to anything else with EPERM;
/// on the wire, UDP/TCP 53 to a resolver opens a flow (the proxy's own
/// queries).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Resolvers {
    pub v4: [[u8; 4]; MAX_RESOLVERS4],
    pub v6: [[u8; 16]; MAX_RESOLVERS6],
    pub count4: u8,
    pub count6: u8,
    pub enabled: u8,
    pub _pad: u8,
}

/// `FW_DNS_PROXY[0]`, written by the daemon when its proxy listens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DnsProxy {
    /// The daemon's process id (as the initial PID namespace sees it): its
    /// sockets are never redirected, so the proxy's upstream queries reach
    /// the resolvers (a proxy redirected to itself cut a host's egress:
    /// cilium/cilium#45077).
    pub tgid: u32,
    /// First loopback port of the proxy; 0: no proxy (DNS to the resolvers
    /// from local sockets fails: names fail closed).
    pub port: u16,
    pub _pad: [u8; 2],
}

/// DNS, and the port whose packets are judged against the resolvers.
pub const DNS_PORT: u16 = 53;

/// DNS over TLS (RFC 7858). It cannot be proxied (the proxy cannot read
/// it), so in a phase with `dns:` it may reach the phase's resolvers only
/// (a stub such as systemd-resolved with DNSOverTLS talks to them) and is
/// refused elsewhere: an encrypted resolver of its own would let a process
/// resolve past the proxy (its connections to what it learned still fail,
/// as nothing was learned).
pub const DOT_PORT: u16 = 853;
