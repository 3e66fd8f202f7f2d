//! Flow state a real server lives with (issue 12): keepalives, closing
//! connections, ping under the inbound default, path MTU discovery of
//! fragmented IPv6, a connection this host opens from a port inside a
//! served range, and audit mode's flows. Each case goes through the
//! reference model and the kernel (`Directed`), against the outcome the
//! design prescribes; time passes by ageing the flow in both.

use fw_common::{
    event::event_stats,
    flow::{FLOW_AUDIT, FLOW_FIN_IN, FLOW_FIN_OUT},
    Direction, FlowKey, Reason,
};

use crate::{
    gen::{LOCAL4, LOCAL6},
    known::Directed,
    model::{flow_key, Table, NO_RULE},
    packets::*,
};

const SEC: u64 = 1_000_000_000;
/// Linux's default `net.ipv4.tcp_keepalive_time`: the first probe of an
/// idle connection with SO_KEEPALIVE.
const TCP_KEEPALIVE_TIME: u64 = 7200 * SEC;

const PEER: [u8; 4] = [203, 0, 113, 9];
const PEER6: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0009;
const WEBHOOK: [u8; 4] = [198, 18, 0, 20];
const RESOLVER6: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0053;

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, ack: u32, data: usize) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(src), v4(dst), TCP), &tcp_acking(sport, dport, flags, ack, data), 0)
}

fn key4(proto: u8, lport: u16, remote: [u8; 4], rport: u16) -> FlowKey {
    flow_key(4, proto, &v4(LOCAL4), &v4(remote), lport, rport)
}

impl Directed {
    /// Time passes for one flow: its last-seen time moves `by` into the
    /// past, in the kernel and in the model alike.
    fn age(&mut self, key: &FlowKey, by: u64) {
        let mut found = false;
        for table in [Table::Protected, Table::Probation] {
            let kernel = self.d.kernel.flows(table).into_iter().find(|(k, _)| k == key);
            if let Some((_, mut value)) = kernel {
                value.last_seen_ns = value.last_seen_ns.wrapping_sub(by);
                self.d.kernel.insert_flow(table, key, &value);
                found = true;
            }
            if let Some(value) = self.d.state.table_mut(table).get_mut(key) {
                value.last_seen_ns = value.last_seen_ns.wrapping_sub(by);
            }
        }
        if !found {
            self.fail(format!("ageing {key:?}: the kernel has no such flow"));
        }
    }

    /// The marks the kernel holds for `key`, if it holds it.
    fn flags(&self, key: &FlowKey) -> Option<u8> {
        [Table::Protected, Table::Probation]
            .into_iter()
            .flat_map(|t| self.d.kernel.flows(t))
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.flags)
    }

    fn expect_in(&mut self, what: &str, key: &FlowKey, table: Table) {
        let held: Vec<Table> = [Table::Protected, Table::Probation]
            .into_iter()
            .filter(|t| self.d.kernel.flows(*t).iter().any(|(k, _)| k == key))
            .collect();
        if held != [table] {
            self.fail(format!("{what}: the kernel holds the flow in {held:?}, the design in {table:?}"));
        }
    }

    /// An inbound connection from `PEER:port` to 443, its handshake
    /// complete (promoted).
    fn accept(&mut self, port: u16, rule: u32) {
        let (e, i) = (Direction::Egress, Direction::Inbound);
        self.expect("syn", i, &tcp4(PEER, LOCAL4, port, 443, TCP_SYN, 0, 0), Reason::PassRule, rule);
        let synack = tcp4(LOCAL4, PEER, 443, port, TCP_SYN | TCP_ACK, TCP_SEQ.wrapping_add(1), 0);
        self.expect("syn-ack", e, &synack, Reason::PassFlow, rule);
        let ack = tcp4(PEER, LOCAL4, port, 443, TCP_ACK, TCP_SEQ.wrapping_add(1), 0);
        self.expect("the handshake's ack", i, &ack, Reason::PassFlow, rule);
        self.expect_in("established", &key4(TCP, 443, PEER, port), Table::Protected);
    }
}

const SERVER: &str = r#"
name: server
phases:
  runtime:
    inbound_default: drop
    egress_default: drop
    inbound:
      - { name: https, proto: tcp, ports: [443] }
    egress:
      - { name: webhook, to: ["198.18.0.20"], proto: tcp, ports: [443] }
"#;
const HTTPS: u32 = 0;
const HOOK: u32 = 1;

/// Finding 1: the flow of an idle connection outlived Linux's default
/// keepalive time by nothing (7,200 s, strictly greater, last-seen
/// refreshed at most once a second): the first keepalive probe found it
/// expired, and the server's probe from 443 was dropped as a spoofed
/// reply. Established TCP now keeps 5 days (conntrack's default), and a
/// phase sets its own.
#[test]
fn finding1_idle_tcp_survives_the_first_keepalive() {
    crate::require_root();
    let mut t = Directed::with_policy(SERVER);
    let (e, i) = (Direction::Egress, Direction::Inbound);

    // A connection to this server, idle for the keepalive time (and the
    // second by which last-seen may lag the last packet).
    t.accept(40000, HTTPS);
    let conn = key4(TCP, 443, PEER, 40000);
    t.age(&conn, TCP_KEEPALIVE_TIME + SEC / 2);
    let probe = tcp4(LOCAL4, PEER, 443, 40000, TCP_ACK, TCP_SEQ.wrapping_add(1), 0);
    t.expect("the server's first keepalive probe", e, &probe, Reason::PassFlow, HTTPS);
    let answer = tcp4(PEER, LOCAL4, 40000, 443, TCP_ACK, TCP_SEQ.wrapping_add(1), 0);
    t.expect("the client's answer", i, &answer, Reason::PassFlow, HTTPS);

    // A connection this host opened, idle as long: the peer's probe.
    let hook = key4(TCP, 45000, WEBHOOK, 443);
    t.expect("webhook syn", e, &tcp4(LOCAL4, WEBHOOK, 45000, 443, TCP_SYN, 0, 0), Reason::PassRule, HOOK);
    let hook_ack = tcp4(WEBHOOK, LOCAL4, 443, 45000, TCP_SYN | TCP_ACK, 1, 0);
    t.expect("webhook syn-ack", i, &hook_ack, Reason::PassFlow, HOOK);
    t.age(&hook, TCP_KEEPALIVE_TIME + SEC / 2);
    let peer_probe = tcp4(WEBHOOK, LOCAL4, 443, 45000, TCP_ACK, 1, 0);
    t.expect("the webhook's keepalive probe", i, &peer_probe, Reason::PassFlow, HOOK);

    // Four days idle: still there. Past five days (and the second): gone,
    // and the server's segment is what it then is, a reply to nothing.
    t.age(&conn, 4 * 86_400 * SEC);
    t.expect("after four idle days", e, &probe, Reason::PassFlow, HTTPS);
    t.age(&conn, 5 * 86_400 * SEC + 2 * SEC);
    t.expect("after five idle days", e, &probe, Reason::DropSpoofedReply, NO_RULE);
    t.finish();

    // A phase with its own timeout: 30 s idle at most.
    let short = SERVER
        .replace("    egress_default: drop\n", "    egress_default: drop\n    timeouts: { tcp_established: 30s }\n");
    let mut t = Directed::with_policy(&short);
    t.accept(40001, HTTPS);
    let conn = key4(TCP, 443, PEER, 40001);
    let probe = tcp4(LOCAL4, PEER, 443, 40001, TCP_ACK, TCP_SEQ.wrapping_add(1), 0);
    t.age(&conn, 29 * SEC);
    t.expect("29 s idle under a 30 s timeout", e, &probe, Reason::PassFlow, HTTPS);
    t.age(&conn, 32 * SEC);
    t.expect("32 s idle under a 30 s timeout", e, &probe, Reason::DropSpoofedReply, NO_RULE);
    t.finish();
}

/// Finding 2: after a FIN or a RST a flow kept the 10 s closing timeout
/// for good. A reply 12 s after the peer's shutdown(SHUT_WR) was dropped,
/// and a 4-tuple reused a second after a RST died after 10 s idle.
/// Half-closed is open the other way; a new SYN (or data after a RST)
/// clears the closing marks.
#[test]
fn finding2_a_closing_connection_reopens_and_half_close_is_open() {
    crate::require_root();
    let mut t = Directed::with_policy(SERVER);
    let (e, i) = (Direction::Egress, Direction::Inbound);
    let ack = TCP_SEQ.wrapping_add(1);

    // The client half-closes (shutdown(SHUT_WR)); the server answers 12 s
    // later, and again an hour later. Still protected: half-closed is open.
    t.accept(40000, HTTPS);
    let conn = key4(TCP, 443, PEER, 40000);
    t.expect(
        "the client's fin",
        i,
        &tcp4(PEER, LOCAL4, 40000, 443, TCP_FIN | TCP_ACK, ack, 0),
        Reason::PassFlow,
        HTTPS,
    );
    t.expect_in("half-closed", &conn, Table::Protected);
    t.age(&conn, 12 * SEC);
    let reply = tcp4(LOCAL4, PEER, 443, 40000, TCP_ACK | 0x08, ack, 100);
    t.expect("the reply 12 s after the client's fin", e, &reply, Reason::PassFlow, HTTPS);
    t.age(&conn, 3600 * SEC);
    t.expect("the reply an hour later", e, &reply, Reason::PassFlow, HTTPS);
    // The server closes too: closed, back to probation, 10 s.
    t.expect(
        "the server's fin",
        e,
        &tcp4(LOCAL4, PEER, 443, 40000, TCP_FIN | TCP_ACK, ack, 0),
        Reason::PassFlow,
        HTTPS,
    );
    t.expect_in("closed", &conn, Table::Probation);
    if t.flags(&conn).map(|f| f & (FLOW_FIN_IN | FLOW_FIN_OUT)) != Some(FLOW_FIN_IN | FLOW_FIN_OUT) {
        let flags = t.flags(&conn);
        t.fail(format!("a FIN each way must be marked: {flags:?}"));
    }
    t.expect("the last ack", i, &tcp4(PEER, LOCAL4, 40000, 443, TCP_ACK, ack, 0), Reason::PassFlow, HTTPS);
    t.age(&conn, 12 * SEC);
    t.expect("12 s after closing", e, &reply, Reason::DropSpoofedReply, NO_RULE);

    // Reset, then the same 4-tuple a second later (carrier-grade NAT
    // reuses ports): the new handshake clears the marks and promotes it.
    t.accept(40001, HTTPS);
    let conn = key4(TCP, 443, PEER, 40001);
    t.expect("the client's rst", i, &tcp4(PEER, LOCAL4, 40001, 443, TCP_RST, 0, 0), Reason::PassFlow, HTTPS);
    t.expect_in("reset", &conn, Table::Probation);
    t.age(&conn, SEC);
    t.expect(
        "a new syn on the same 4-tuple",
        i,
        &tcp4(PEER, LOCAL4, 40001, 443, TCP_SYN, 0, 0),
        Reason::PassFlow,
        HTTPS,
    );
    let synack = tcp4(LOCAL4, PEER, 443, 40001, TCP_SYN | TCP_ACK, ack, 0);
    t.expect("its syn-ack", e, &synack, Reason::PassFlow, HTTPS);
    t.expect("its ack", i, &tcp4(PEER, LOCAL4, 40001, 443, TCP_ACK, ack, 0), Reason::PassFlow, HTTPS);
    t.expect_in("the new connection", &conn, Table::Protected);
    t.age(&conn, 11 * SEC);
    let data = tcp4(LOCAL4, PEER, 443, 40001, TCP_ACK | 0x08, ack, 100);
    t.expect("11 s idle on the new connection", e, &data, Reason::PassFlow, HTTPS);

    // A RST that did not close the connection (out of its window): the
    // data that follows clears the mark.
    let hook = key4(TCP, 45000, WEBHOOK, 443);
    t.expect("webhook syn", e, &tcp4(LOCAL4, WEBHOOK, 45000, 443, TCP_SYN, 0, 0), Reason::PassRule, HOOK);
    t.expect("a stray rst", i, &tcp4(WEBHOOK, LOCAL4, 443, 45000, TCP_RST, 0, 0), Reason::PassFlow, HOOK);
    t.expect("data after it", i, &tcp4(WEBHOOK, LOCAL4, 443, 45000, TCP_ACK, 1, 200), Reason::PassFlow, HOOK);
    t.age(&hook, 11 * SEC);
    t.expect("11 s later", e, &tcp4(LOCAL4, WEBHOOK, 45000, 443, TCP_ACK, 1, 0), Reason::PassFlow, HOOK);
    t.d.check_state();
    t.finish();
}

const OPEN_INBOUND: &str = r#"
name: ce-like
phases:
  runtime:
    egress_default: drop
    inbound:
      - { name: https, proto: tcp, ports: [443] }
"#;

/// Finding 3: under "inbound_default: allow" `fw explain ADDR/icmp
/// --inbound` said "allow by the phase default", yet an echo request the
/// default passed opened no flow and the echo reply was dropped. The
/// inbound default now serves: what it passes opens a flow (in
/// probation), so the replies pass, ping included.
#[test]
fn finding3_the_inbound_default_serves_ping_and_unserved_ports() {
    crate::require_root();
    let mut t = Directed::with_policy(OPEN_INBOUND);
    let (e, i) = (Direction::Egress, Direction::Inbound);
    let monitor = [198, 18, 9, 9];
    let ping = frame(&[], &Ip::new(false, v4(monitor), v4(LOCAL4), ICMP), &icmp(8, 0, echo_rest(7, 1), &[0; 8]), 0);
    t.expect("an echo request", i, &ping, Reason::PassDefault, NO_RULE);
    let pong = frame(&[], &Ip::new(false, v4(LOCAL4), v4(monitor), ICMP), &icmp(0, 0, echo_rest(7, 1), &[0; 8]), 0);
    t.expect("its echo reply", e, &pong, Reason::PassFlow, NO_RULE);
    t.expect_in("an echo served", &flow_key(4, ICMP, &v4(LOCAL4), &v4(monitor), 7, 7), Table::Probation);
    let monitor6 = (PEER6 + 0x100).to_be_bytes();
    let ping6 =
        frame(&[], &Ip::new(true, monitor6, LOCAL6.to_be_bytes(), ICMPV6), &icmp(128, 0, echo_rest(8, 1), &[0; 8]), 0);
    t.expect("an ipv6 echo request", i, &ping6, Reason::PassDefault, NO_RULE);
    let pong6 =
        frame(&[], &Ip::new(true, LOCAL6.to_be_bytes(), monitor6, ICMPV6), &icmp(129, 0, echo_rest(8, 1), &[0; 8]), 0);
    t.expect("its echo reply", e, &pong6, Reason::PassFlow, NO_RULE);
    // A port no rule names: served all the same.
    let query = frame(&[], &Ip::new(false, v4(PEER), v4(LOCAL4), UDP), &udp(5000, 9999, 8), 0);
    t.expect("a datagram to an unserved port", i, &query, Reason::PassDefault, NO_RULE);
    let answer = frame(&[], &Ip::new(false, v4(LOCAL4), v4(PEER), UDP), &udp(9999, 5000, 8), 0);
    t.expect("its answer", e, &answer, Reason::PassFlow, NO_RULE);
    t.expect(
        "a tcp connection to an unserved port",
        i,
        &tcp4(PEER, LOCAL4, 41000, 8080, TCP_SYN, 0, 0),
        Reason::PassDefault,
        NO_RULE,
    );
    t.expect("its syn-ack", e, &tcp4(LOCAL4, PEER, 8080, 41000, TCP_SYN | TCP_ACK, 1, 0), Reason::PassFlow, NO_RULE);
    // Still closed: what this host starts, and what answers nothing.
    t.expect(
        "a connection this host opens",
        e,
        &tcp4(LOCAL4, PEER, 41001, 8080, TCP_SYN, 0, 0),
        Reason::DropDefault,
        NO_RULE,
    );
    t.expect(
        "a late segment of nothing",
        e,
        &tcp4(LOCAL4, PEER, 8081, 41000, TCP_ACK, 1, 0),
        Reason::DropDefault,
        NO_RULE,
    );
    t.d.check_state();
    t.finish();
}

const V6_CLIENT: &str = r#"
name: v6-client
phases:
  runtime:
    inbound_default: drop
    egress_default: drop
    egress:
      - { name: echo, to: ["2001:db8::53", "198.18.0.53"], proto: udp, ports: [7] }
"#;

/// Finding 4: under `inbound_default: drop` path MTU discovery failed for
/// fragmented IPv6: the packet-too-big message quotes the first fragment,
/// whose Next Header is the fragment header (44), and the quote matched
/// no flow. Quotes are now parsed through their extension headers; a
/// quoted later fragment belongs to the datagram whose first fragment
/// passed.
#[test]
fn finding4_packet_too_big_for_a_fragmented_ipv6_datagram_passes() {
    crate::require_root();
    let mut t = Directed::with_policy(V6_CLIENT);
    let (e, i) = (Direction::Egress, Direction::Inbound);
    let (local, server) = (LOCAL6.to_be_bytes(), RESOLVER6.to_be_bytes());
    let router = (PEER6 + 0xfe).to_be_bytes();
    // A 3,000-byte UDP echo in fragments, the first one carrying UDP.
    let mut first = Ip::new(true, local, server, UDP);
    first.v6_ext = vec![Ext::Fragment { offset: 0, more: true, id: 0x4242 }];
    let first_frag = first.packet(&udp(33000, 7, 1392));
    t.expect("the first fragment", e, &frame(&[], &first, &udp(33000, 7, 1392), 0), Reason::PassRule, 0);
    let mut later = Ip::new(true, local, server, UDP);
    later.v6_ext = vec![Ext::Fragment { offset: 175, more: true, id: 0x4242 }];
    let later_body = vec![0x5a; 1400];
    let later_frag = later.packet(&later_body);
    t.expect("a later fragment", e, &frame(&[], &later, &later_body, 0), Reason::PassFragment, 0);
    // The router's packet-too-big for each (as much of the fragment as
    // fits in 1,280 bytes).
    let ptb = |quoted: &[u8]| {
        let ip = Ip::new(true, router, local, ICMPV6);
        frame(&[], &ip, &icmp(2, 0, 1280u32.to_be_bytes(), &quoted[..quoted.len().min(1232)]), 0)
    };
    t.expect("packet too big quoting the first fragment", i, &ptb(&first_frag), Reason::PassIcmpControl, NO_RULE);
    t.expect("packet too big quoting a later fragment", i, &ptb(&later_frag), Reason::PassIcmpControl, NO_RULE);
    // Behind a hop-by-hop header too.
    let mut hop = first.clone();
    hop.v6_ext.insert(0, Ext::Generic { ty: 0, len8: 0 });
    t.expect(
        "quoting options and a first fragment",
        i,
        &ptb(&hop.packet(&udp(33000, 7, 64))),
        Reason::PassIcmpControl,
        NO_RULE,
    );
    // A quote of a fragment of no datagram that passed is the policy's.
    let mut stranger = later.clone();
    stranger.v6_ext = vec![Ext::Fragment { offset: 175, more: true, id: 0x4343 }];
    t.expect(
        "quoting a fragment of another datagram",
        i,
        &ptb(&stranger.packet(&later_body)),
        Reason::DropDefault,
        NO_RULE,
    );
    // IPv4: fragmentation needed quoting a later fragment.
    let mut later4 = Ip::new(false, v4(LOCAL4), v4([198, 18, 0, 53]), UDP);
    later4.v4_id = 0x77;
    later4.v4_frag = 0x2000;
    t.expect("an ipv4 first fragment", e, &frame(&[], &later4, &udp(33001, 7, 1472), 0), Reason::PassRule, 0);
    later4.v4_frag = 0x2000 | 185;
    let quoted4 = later4.packet(&[0x5a; 8]);
    let need =
        frame(&[], &Ip::new(false, v4([198, 18, 0, 254]), v4(LOCAL4), ICMP), &icmp(3, 4, [0, 0, 5, 0xdc], &quoted4), 0);
    t.expect("frag needed quoting a later ipv4 fragment", i, &need, Reason::PassIcmpControl, NO_RULE);
    t.d.check_state();
    t.finish();
}

const MEDIA: &str = r#"
name: media
phases:
  runtime:
    egress_default: drop
    inbound:
      - { name: media, proto: [tcp, udp], ports: ["40000-65535"] }
"#;

/// Finding 7 (the kernel's part): a connection this host opens from an
/// ephemeral port inside a served range (Linux picks 32768-60999) was
/// reported as a spoofed reply. A SYN starts a connection: the egress
/// default drops it, and says so; a segment that is not a SYN, from that
/// port to a peer that never reached it, is still a spoofed reply.
#[test]
fn finding7_a_connection_from_an_ephemeral_port_is_no_spoofed_reply() {
    crate::require_root();
    let mut t = Directed::with_policy(MEDIA);
    let e = Direction::Egress;
    t.expect("a syn from 45000", e, &tcp4(LOCAL4, PEER, 45000, 443, TCP_SYN, 0, 0), Reason::DropDefault, NO_RULE);
    t.expect(
        "an ack from 45000 to a stranger",
        e,
        &tcp4(LOCAL4, PEER, 45000, 443, TCP_ACK, 1, 0),
        Reason::DropSpoofedReply,
        NO_RULE,
    );
    t.finish();
}

const LEARNING: &str = "name: learning\nphases:\n  runtime:\n    mode: audit\n";

/// Finding 5 (the kernel's part): in audit mode (`fw learn`) every packet
/// of an outbound connection was an event, and the server's replies to
/// clients that the inbound default let in were would-drops, learned as
/// egress rules to the clients' ports. Now what the inbound default
/// passes is served (the replies are flows), and a would-drop opens a
/// flow whose later packets are counted without an event each.
#[test]
fn finding5_audit_mode_sends_one_event_per_flow_and_serves_clients() {
    crate::require_root();
    let mut t = Directed::with_policy(LEARNING);
    let (e, i) = (Direction::Egress, Direction::Inbound);
    let emitted = |t: &Directed| t.d.kernel.event_stat(event_stats::EMITTED);
    let before = emitted(&t);
    // A client of this host's service on 8080.
    t.expect("a client's syn", i, &tcp4(PEER, LOCAL4, 38392, 8080, TCP_SYN, 0, 0), Reason::PassDefault, NO_RULE);
    t.expect(
        "the server's syn-ack",
        e,
        &tcp4(LOCAL4, PEER, 8080, 38392, TCP_SYN | TCP_ACK, 1, 0),
        Reason::PassFlow,
        NO_RULE,
    );
    t.expect("the server's data", e, &tcp4(LOCAL4, PEER, 8080, 38392, TCP_ACK, 1, 500), Reason::PassFlow, NO_RULE);
    // A download this host starts: one would-drop event, then flows.
    let dl = key4(TCP, 50000, WEBHOOK, 443);
    t.expect("the download's syn", e, &tcp4(LOCAL4, WEBHOOK, 50000, 443, TCP_SYN, 0, 0), Reason::PassAudit, NO_RULE);
    t.expect(
        "the download's syn-ack",
        i,
        &tcp4(WEBHOOK, LOCAL4, 443, 50000, TCP_SYN | TCP_ACK, 1, 0),
        Reason::PassAudit,
        NO_RULE,
    );
    for n in 0..5 {
        t.expect(
            &format!("the download's ack {n}"),
            e,
            &tcp4(LOCAL4, WEBHOOK, 50000, 443, TCP_ACK, 1, 0),
            Reason::PassAudit,
            NO_RULE,
        );
    }
    if t.flags(&dl).is_none_or(|f| f & FLOW_AUDIT == 0) {
        let flags = t.flags(&dl);
        t.fail(format!("the download must be an audit flow: {flags:?}"));
    }
    let events = emitted(&t) - before;
    if events != 1 {
        t.fail(format!("{events} drop events for one outbound connection and one client, expected 1"));
    }
    t.d.check_state();
    t.finish();
}
