//! Cgroup socket hooks: a `connect()` or `sendmsg()` that the egress policy
//! denies fails at once with EPERM instead of timing out on a silently
//! dropped SYN (nginx's public-IP autodiscovery in the OpenVidu thread).
//!
//! The TC egress program stays the enforcer of record for every packet;
//! these hooks only make the answer fast, so they defer (allow) whenever
//! they cannot judge exactly:
//! * sockets of another network namespace (the policy is this namespace's);
//! * destinations that do not leave through the enforced interface
//!   (`FW_BYPASS4/6`: loopback, local addresses, other interfaces' routes);
//! * protocols other than TCP and UDP;
//! * sockets bound to a port an inbound rule serves to that peer: their
//!   sends may be replies to flows only the TC programs see (a media server
//!   answering a client's ICE check from port 40000); under an allowing
//!   inbound default, UDP sockets bound outside the ephemeral range too
//!   (see `serves`).
//! Phase switches and audit mode apply as for packets; `reject: false` in a
//! phase turns the refusals off.
//!
//! In a phase with `dns:`, DNS (UDP/TCP port 53) is steered first, before
//! any of the above: to one of the phase's resolvers it goes to the
//! daemon's DNS proxy on loopback instead (one port per resolver, so the
//! proxy knows whom the application asked), which learns the answer's
//! addresses into the kernel before it releases the answer; to anything
//! else it is refused. The daemon's own sockets are left alone (its
//! upstream queries; a proxy redirected to itself cut a host's egress,
//! cilium/cilium#45077). `recvmsg4/6` and `getpeername4/6` turn the
//! proxy's address back into the resolver's, so the application sees the
//! answer come from the server it asked, as Cilium's socket load balancer
//! does for services (`bpf/bpf_sock.c`, `cil_sock4_recvmsg`: reverse
//! translation of `user_ip4`/`user_port`).

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_netns_cookie, generated},
    macros::{cgroup_sock_addr, map},
    maps::{lpm_trie::Key, Array, LpmTrie},
    programs::SockAddrContext,
    EbpfContext,
};
use fw_common::{
    event::EVENT_FROM_SOCKET,
    names::{DnsProxy, DNS_PORT, DOT_PORT, MAX_RESOLVERS4, MAX_RESOLVERS6},
    policy::proto,
    Action, Direction, Reason,
};

use crate::{events, flow, policy, stats, verdict::Verdict};

/// Network namespace cookie of the enforced interface; set at load time.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// The ephemeral port range of that namespace (Linux's default until the
/// loader writes the one it reads).
#[unsafe(no_mangle)]
static EPHEMERAL_FIRST: u16 = 32768;
#[unsafe(no_mangle)]
static EPHEMERAL_LAST: u16 = 60999;

#[map(name = "FW_BYPASS4")]
static FW_BYPASS4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(4096, 0);

#[map(name = "FW_BYPASS6")]
static FW_BYPASS6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(4096, 0);

/// Where the daemon's DNS proxy listens (`fw_common::names::DnsProxy`).
#[map(name = "FW_DNS_PROXY")]
static FW_DNS_PROXY: Array<DnsProxy> = Array::with_max_entries(1, 0);

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

// `restore_resolver` spells the slots out.
const _: () = assert!(MAX_RESOLVERS4 == 4 && MAX_RESOLVERS6 == 2);

/// 127.0.0.1 and ::1 as the kernel stores them (network order in memory).
const LOOPBACK4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
const LOOPBACK6_LAST: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

#[cgroup_sock_addr(recvmsg4)]
pub fn fw_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_resolver(&ctx, 4);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn fw_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_resolver(&ctx, 6);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn fw_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_resolver(&ctx, 4);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn fw_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_resolver(&ctx, 6);
    ALLOW
}

/// An address seen by the application (a datagram's source, a connected
/// socket's peer) that is the proxy's port for resolver `i` becomes
/// resolver `i`, port 53. Everything else is left as it is.
#[inline(always)]
fn restore_resolver(ctx: &SockAddrContext, family: u8) {
    // SAFETY: the kernel passes a valid, writable bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Some(proxy) = FW_DNS_PROXY.get(0) else { return };
    if proxy.port == 0 {
        return;
    }
    let loopback = if family == 4 {
        sa.user_ip4 == LOOPBACK4
    } else {
        sa.user_ip6[0] == 0 && sa.user_ip6[1] == 0 && sa.user_ip6[2] == 0 && sa.user_ip6[3] == LOOPBACK6_LAST
    };
    let port = u16::from_be(sa.user_port as u16);
    if !loopback || port < proxy.port {
        return;
    }
    let index = port - proxy.port;
    let Some(active) = crate::policy::active() else { return };
    let Some(resolvers) = crate::policy::resolvers(active.generation) else { return };
    // Constant indexes only: the verifier must see every array access in
    // bounds (a computed `index - 4` loses its range).
    if family == 4 {
        let a = match index {
            0 if resolvers.count4 > 0 => resolvers.v4[0],
            1 if resolvers.count4 > 1 => resolvers.v4[1],
            2 if resolvers.count4 > 2 => resolvers.v4[2],
            3 if resolvers.count4 > 3 => resolvers.v4[3],
            _ => return,
        };
        sa.user_ip4 = u32::from_ne_bytes(a);
    } else {
        let a = match index {
            4 if resolvers.count6 > 0 => resolvers.v6[0],
            5 if resolvers.count6 > 1 => resolvers.v6[1],
            _ => return,
        };
        sa.user_ip6 = [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ];
    }
    sa.user_port = u32::from(DNS_PORT.to_be());
}

/// DNS in a phase with `dns:`: `Some(verdict)` when this decides the call
/// (redirected to the proxy, let through, or refused), `None` when it is
/// not DNS of such a phase. UDP/TCP 53 to a resolver goes to the proxy;
/// DNS over TLS (TCP 853) to a resolver goes as it is (it cannot be
/// proxied); either to anything else is refused.
#[inline(always)]
fn steer_dns(ctx: &SockAddrContext, family: u8, ip_proto: u8, dst: &[u8; 16], dport: u16) -> Option<i32> {
    let tls = dport == DOT_PORT && ip_proto == proto::TCP;
    if dport != DNS_PORT && !tls {
        return None;
    }
    let active = crate::policy::active()?;
    let resolvers = crate::policy::resolvers(active.generation)?;
    let proxy = FW_DNS_PROXY.get(0).copied().unwrap_or_default();
    if proxy.tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == proxy.tgid {
        return Some(ALLOW);
    }
    let peer = policy::Peer { family, addr: dst };
    match crate::policy::resolver_index(resolvers, peer) {
        Some(_) if tls => return Some(ALLOW),
        // No proxy (no daemon): the query cannot be learned from, so it
        // fails (fail closed) rather than reach the resolver unseen; in
        // audit mode nothing is refused: it goes to the resolver as asked,
        // reported (`fw learn` applies its phase before its proxy listens).
        Some(_) if proxy.port == 0 && active.phase.audit != 0 => {
            report(ctx, &Verdict::new(Reason::PassAudit, crate::verdict::NO_RULE), family, ip_proto, dst, dport);
            return Some(ALLOW);
        }
        Some(_) if proxy.port == 0 => {}
        Some(index) => {
            // SAFETY: the kernel passes a valid, writable bpf_sock_addr.
            let sa = unsafe { &mut *ctx.sock_addr };
            if family == 4 {
                sa.user_ip4 = LOOPBACK4;
            } else {
                sa.user_ip6 = [0, 0, 0, LOOPBACK6_LAST];
            }
            sa.user_port = u32::from((proxy.port + index).to_be());
            return Some(ALLOW);
        }
        None if active.phase.reject == 0 => return Some(ALLOW),
        None if active.phase.audit != 0 => {
            report(ctx, &Verdict::new(Reason::PassAudit, crate::verdict::NO_RULE), family, ip_proto, dst, dport);
            return Some(ALLOW);
        }
        None => {}
    }
    let refused = Verdict::drop(Reason::DropSocket);
    stats::count(Direction::Egress, &refused, 0);
    report(ctx, &refused, family, ip_proto, dst, dport);
    Some(REFUSE)
}

#[cgroup_sock_addr(connect4)]
pub fn fw_connect4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, 4)
}

#[cgroup_sock_addr(connect6)]
pub fn fw_connect6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, 6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn fw_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, 4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn fw_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, 6)
}

#[inline(always)]
fn judge(ctx: &SockAddrContext, family: u8) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr for this program type.
    let sa = unsafe { &*ctx.sock_addr };
    // SAFETY: the helper only reads the socket's namespace.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    // SAFETY: reading a load-time constant the loader rewrote.
    if cookie != unsafe { core::ptr::read_volatile(&NETNS_COOKIE) } {
        return ALLOW;
    }
    let ip_proto = sa.protocol as u8;
    if ip_proto != proto::TCP && ip_proto != proto::UDP {
        return ALLOW;
    }
    // The address bytes as they are in memory (network order), IPv4 in the
    // first 4 of 16; built from integers, as a zeroed byte array would
    // cost a memset call (see `mem`). bpfel: the low bytes come first.
    let dst: [u8; 16] = if family == 4 {
        u128::from(sa.user_ip4).to_le_bytes()
    } else {
        let w = sa.user_ip6;
        (u128::from(w[0]) | u128::from(w[1]) << 32 | u128::from(w[2]) << 64 | u128::from(w[3]) << 96).to_le_bytes()
    };
    // user_port holds the port in network byte order in its first 2 bytes.
    let dport = u16::from_be(sa.user_port as u16);
    if let Some(verdict) = steer_dns(ctx, family, ip_proto, &dst, dport) {
        return verdict;
    }
    if family == 4 {
        if FW_BYPASS4.get(&Key::new(32, [dst[0], dst[1], dst[2], dst[3]])).is_some() {
            return ALLOW;
        }
    } else if FW_BYPASS6.get(&Key::new(128, dst)).is_some() {
        return ALLOW;
    }
    let Some(active) = policy::active() else { return ALLOW };
    if active.phase.reject == 0 {
        return ALLOW;
    }
    let peer = policy::Peer { family, addr: &dst };
    let verdict = policy::decide(&active, Direction::Egress, peer, ip_proto, dport);
    if verdict.reason == Reason::PassAudit {
        report(ctx, &verdict, family, ip_proto, &dst, dport);
        return ALLOW;
    }
    if !verdict.reason.is_drop() {
        return ALLOW;
    }
    // SAFETY: `sk` is always set for sock_addr programs; checked anyway.
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    if !sk.is_null() {
        // SAFETY: non-null socket pointer from the context.
        let local_port = unsafe { (*sk).src_port } as u16;
        if local_port != 0 && serves(&active, peer, ip_proto, local_port) {
            return ALLOW;
        }
    }
    let refused = Verdict::new(Reason::DropSocket, verdict.rule);
    stats::count(Direction::Egress, &refused, 0);
    report(ctx, &refused, family, ip_proto, &dst, dport);
    REFUSE
}

/// Does this host serve `peer` on `local_port`, so that a send from it may
/// answer a flow only the TC programs see? An inbound rule that admits the
/// peer says so. Without one, under an allowing inbound default, a UDP
/// port may serve too (the default serves every port), but every UDP
/// socket has a port by the time it sends, autobound or not, and this hook
/// cannot tell a reply from a first datagram. The ephemeral range tells
/// them apart where it can: a port outside it was bound on purpose, by a
/// service (defer to TC, which sees the flows); a port inside it is
/// almost always autobound, by a client (judge the send: a denied first
/// datagram fails with EPERM). A service bound inside the ephemeral range
/// that no inbound rule names has its replies refused here
/// (docs/policy.md); `fw check` warns about the overlap of named ones.
#[inline(always)]
fn serves(active: &policy::Active, peer: policy::Peer, ip_proto: u8, local_port: u16) -> bool {
    match policy::inbound_rule_allows(active, peer, ip_proto, local_port) {
        Some(allowed) => allowed,
        None => ip_proto == proto::UDP && active.phase.inbound_default() == Action::Allow && !ephemeral(local_port),
    }
}

/// Is `port` in this namespace's `net.ipv4.ip_local_port_range` (read when
/// the object was loaded), where autobound sockets get their ports?
#[inline(always)]
fn ephemeral(port: u16) -> bool {
    // SAFETY: reading load-time constants the loader rewrote.
    let (first, last) =
        unsafe { (core::ptr::read_volatile(&EPHEMERAL_FIRST), core::ptr::read_volatile(&EPHEMERAL_LAST)) };
    first <= port && port <= last
}

#[inline(always)]
fn report(_ctx: &SockAddrContext, verdict: &Verdict, family: u8, ip_proto: u8, dst: &[u8; 16], dport: u16) {
    let now = flow::now_ns();
    if !events::within_budget(verdict, dst, dport, ip_proto, now) {
        return;
    }
    events::emit(verdict, now, |e| {
        e.direction = Direction::Egress as u8;
        e.family = family;
        e.proto = ip_proto;
        e.flags =
            EVENT_FROM_SOCKET | if verdict.reason == Reason::PassAudit { fw_common::event::EVENT_AUDIT } else { 0 };
        e.dst = *dst;
        e.dst_port = dport;
        e.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        // Straight into the (zeroed) record: aya's wrapper returns a fresh
        // array, which costs a memset (see `mem`).
        // SAFETY: `comm` is 16 writable bytes; the helper NUL-terminates.
        unsafe { generated::bpf_get_current_comm(e.comm.as_mut_ptr().cast(), e.comm.len() as u32) };
        // SAFETY: a helper without preconditions in this program type.
        e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    });
}
