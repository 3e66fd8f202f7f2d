//! Names of the BPF maps and programs, shared so that userspace never spells
//! them differently from the kernel object (a fw-user test checks each one
//! against the built object). Kernel object names are cut at 15 characters.

/// `Array<Config>`, one entry: the active policy generation.
pub const CONFIG: &str = "FW_CONFIG";
/// `Array<PhaseConfig>`, two entries indexed by `generation & 1`.
pub const PHASES: &str = "FW_PHASES";
/// `LpmTrie<AddrKey4, u32>`: IPv4 address -> address class.
pub const ADDR4: &str = "FW_ADDR4";
/// `LpmTrie<AddrKey6, u32>`: IPv6 address -> address class.
pub const ADDR6: &str = "FW_ADDR6";
/// `HashMap<addr6::NetKey, u32>`, `HashMap<AddrKey6, u32>`: the IPv6
/// address classes of a phase with many IPv6 entries (`crate::addr6`).
pub const ADDR6_NETS: &str = "FW_ADDR6_NETS";
pub const ADDR6_HOSTS: &str = "FW_ADDR6_HOSTS";
/// `Array<dir4::Top>`, `Array<dir4::Chunk>`, `HashMap<AddrKey4, u32>`: the
/// IPv4 address classes packets look up (`crate::dir4`).
pub const ADDR4_TOP: &str = "FW_ADDR4_TOP";
pub const ADDR4_MID: &str = "FW_ADDR4_MID";
pub const ADDR4_HOSTS: &str = "FW_ADDR4_HOSTS";
/// `LpmTrie<PortKey, PolicyValue>`: {class, protocol, port prefix} -> rule.
pub const PORTS: &str = "FW_PORTS";
/// `HashMap<PortHashKey, PortHashValue>`: what packets look ports up in
/// before the trie (see [`crate::port_hash`]).
pub const PORTS_HASH: &str = "FW_PORTS_HASH";
/// The protected flow table (tracked flows this host opened, and inbound
/// TCP connections once established, see [`crate::flow`]), one map per
/// address family: `LruHashMap<FlowKey4, FlowValue>` for IPv4 (a key of 16
/// bytes, where the IPv6 one needs 40: see [`crate::flow::FlowKey4`]),
/// `LruHashMap<FlowKey, FlowValue>` for IPv6.
pub const FLOWS4: &str = "FW_FLOWS4";
pub const FLOWS6: &str = "FW_FLOWS6";
/// The probation flow table (flows inbound packets opened, until
/// promoted), per family as [`FLOWS4`] and [`FLOWS6`].
pub const FLOWS4_IN: &str = "FW_FLOWS4_IN";
pub const FLOWS6_IN: &str = "FW_FLOWS6_IN";
/// The maps of each flow table, IPv4 first.
pub const FLOWS: [&str; 2] = [FLOWS4, FLOWS6];
pub const FLOWS_IN: [&str; 2] = [FLOWS4_IN, FLOWS6_IN];
/// `PerCpuArray<u64>`: inserts per flow table and promotions, see
/// [`crate::flow::flow_stats`].
pub const FLOW_STATS: &str = "FW_FLOW_STATS";
/// `LruHashMap<FragKey, FragValue>`: verdicts of first fragments.
pub const FRAGS: &str = "FW_FRAGS";
/// `PerCpuArray<Counter>`: per direction and reason, see [`crate::stats`].
pub const STATS: &str = "FW_STATS";
/// `PerCpuArray<Counter>`: per rule id.
pub const RULE_STATS: &str = "FW_RULE_STATS";
/// `LpmTrie<[u8; 4], u8>` / `LpmTrie<[u8; 16], u8>`: destinations the
/// socket hooks leave alone, because they do not leave through the enforced
/// interface (loopback, local addresses, routes via other interfaces).
pub const BYPASS4: &str = "FW_BYPASS4";
pub const BYPASS6: &str = "FW_BYPASS6";
/// `LpmTrie<[u8; 16], u8>`: the enforced interface's on-link IPv6 prefixes,
/// where neighbour discovery may go.
pub const ONLINK6: &str = "FW_ONLINK6";
/// `RingBuf` of `DropEvent`s.
pub const EVENTS: &str = "FW_EVENTS";
/// `PerCpuArray<RateWindow>`: drop events' budgets, per rule (or reason),
/// see [`crate::event::rule_rate_slot`].
pub const RULE_BUDGETS: &str = "FW_RULE_BUDGETS";
/// `LruPerCpuHashMap<u64, RateWindow>`: audit mode's would-drop events'
/// budgets, per destination.
pub const EVENT_RATE: &str = "FW_EVENT_RATE";
/// `PerCpuArray<u64>`: events emitted, suppressed, lost.
pub const EVENT_STATS: &str = "FW_EVENT_STATS";

/// `HashMap<[u8; 4], Learned>` / `HashMap<[u8; 16], Learned>`: addresses
/// the DNS proxy learned for name rules (see [`crate::names`]).
pub const NAMES4: &str = "FW_NAMES4";
pub const NAMES6: &str = "FW_NAMES6";
/// `Array<Resolvers>`, two entries indexed by `generation & 1`.
pub const RESOLVERS: &str = "FW_RESOLVERS";
/// `Array<DnsProxy>`, one entry: where the daemon's DNS proxy listens.
pub const DNS_PROXY: &str = "FW_DNS_PROXY";

/// Every map that `fw` pins, in a fixed order.
pub const ALL: [&str; 30] = [
    CONFIG,
    PHASES,
    ADDR4,
    ADDR4_TOP,
    ADDR4_MID,
    ADDR4_HOSTS,
    ADDR6,
    ADDR6_NETS,
    ADDR6_HOSTS,
    PORTS,
    PORTS_HASH,
    FLOWS4,
    FLOWS6,
    FLOWS4_IN,
    FLOWS6_IN,
    FLOW_STATS,
    FRAGS,
    STATS,
    RULE_STATS,
    EVENTS,
    RULE_BUDGETS,
    EVENT_RATE,
    EVENT_STATS,
    BYPASS4,
    BYPASS6,
    ONLINK6,
    NAMES4,
    NAMES6,
    RESOLVERS,
    DNS_PROXY,
];

/// The TC egress classifier: enforces the egress policy.
pub const PROG_EGRESS: &str = "fw_egress";
/// The TC ingress classifier: tracks (and where asked, filters) inbound flows.
pub const PROG_INGRESS: &str = "fw_ingress";
/// A classifier that does nothing: the benchmarks' floor, never attached.
pub const PROG_NOOP: &str = "fw_noop";
/// The cgroup socket hooks: fail a denied connect()/sendmsg() at once.
pub const PROG_CONNECT4: &str = "fw_connect4";
pub const PROG_CONNECT6: &str = "fw_connect6";
pub const PROG_SENDMSG4: &str = "fw_sendmsg4";
pub const PROG_SENDMSG6: &str = "fw_sendmsg6";
/// The cgroup hooks that make the DNS proxy's replies look as if they came
/// from the resolver the application asked (unconnected UDP, and
/// `getpeername()` of connected sockets).
pub const PROG_RECVMSG4: &str = "fw_recvmsg4";
pub const PROG_RECVMSG6: &str = "fw_recvmsg6";
pub const PROG_GETPEERNAME4: &str = "fw_getpeername4";
pub const PROG_GETPEERNAME6: &str = "fw_getpeername6";

/// Default capacities (entries), overridable at load time. LPM tries
/// allocate per entry (BPF_F_NO_PREALLOC), so a large maximum costs nothing
/// until used; a phase may use half, since two generations coexist during a
/// switch. 100,000 dense rules need about 560,000 port entries.
pub const DEFAULT_ADDR_ENTRIES: u32 = 1 << 19;
/// Second-level chunks of the IPv4 address table (`crate::dir4`) per phase
/// slot: one per direction and /16 that holds a prefix longer than /16
/// (1 KiB each, allocated when the map is made: 2 MiB for both slots).
pub const DEFAULT_MID_CHUNKS: u32 = 1 << 10;
pub const DEFAULT_PORT_ENTRIES: u32 = 1 << 21;
/// `FW_PORTS_HASH`, half per phase slot: room for the bench's 100,000
/// rules (269,000 entries). A hash's buckets are allocated when the map is
/// made (16 bytes each: 16 MiB here), so it is smaller than the trie it
/// speeds up: a class that does not fit is left to the trie.
pub const DEFAULT_PORT_HASH_ENTRIES: u32 = 1 << 20;
pub const DEFAULT_FLOW_ENTRIES: u32 = 1 << 18;
/// The probation table, for flows inbound packets open, is this fraction of
/// the protected one: large enough for every media session a host serves
/// at once, small enough that a flood cycling it costs little memory.
pub const INBOUND_FLOW_SHARE: u32 = 4;
pub const DEFAULT_INBOUND_FLOW_ENTRIES: u32 = DEFAULT_FLOW_ENTRIES / INBOUND_FLOW_SHARE;
pub const DEFAULT_FRAG_ENTRIES: u32 = 1 << 13;
/// Ring buffer size: room for about 10,000 events.
pub const EVENTS_BYTES: u32 = 1 << 20;
/// Default events per second per (reason, rule) and CPU (`EVENT_BUDGET`).
pub const DEFAULT_EVENT_BUDGET: u32 = 20;
/// Rule ids index `FW_RULE_STATS`; a policy may have at most this many rules.
pub const MAX_RULES: u32 = 1 << 17;
