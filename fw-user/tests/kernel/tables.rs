//! The two flow tables (finding 7 of issue 11): where a flow is admitted,
//! when an inbound TCP connection is promoted, which table a lookup trusts,
//! and that a flood of inbound flows cycles only the probation table.

use fw_common::{
    flow::{flow_stats, FLOW_INBOUND, FLOW_SYN_ACK},
    stats::stats_index,
    Direction, FlowKey, FlowValue, Reason,
};
use fw_user::kernel::loader::{Capacity, LoadOptions};

use crate::{
    gen::LOCAL4,
    kernel::{coarse_now, Kernel, TC_ACT_SHOT, TC_ACT_UNSPEC},
    known::Directed,
    model::{flow_key, Table},
    packets::*,
};

const POLICY: &str = r#"
name: tables
phases:
  runtime:
    inbound:
      - { name: https, proto: tcp, ports: [443] }
      - { name: media, proto: udp, ports: ["40000-65535"] }
    egress:
      - { name: web, to: [any], proto: tcp, ports: [80] }
      - { name: dns, to: ["198.18.0.53"], proto: udp, ports: [53] }
"#;
// Rule ids are file order: https 0, media 1, web 2, dns 3.
const HTTPS: u32 = 0;
const WEB: u32 = 2;
const DNS: u32 = 3;

const PEER: [u8; 4] = [203, 0, 113, 9];
const WEB_SERVER: [u8; 4] = [198, 51, 100, 7];
const RESOLVER: [u8; 4] = [198, 18, 0, 53];

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8, ack: u32) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(src), v4(dst), TCP), &tcp_acking(sport, dport, flags, ack, 0), 0)
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(src), v4(dst), UDP), &udp(sport, dport, 4), 0)
}

/// The key of a flow between this host's `lport` and `remote:rport`.
fn key4(proto: u8, lport: u16, remote: [u8; 4], rport: u16) -> FlowKey {
    flow_key(4, proto, &v4(LOCAL4), &v4(remote), lport, rport)
}

/// Which table of the kernel holds `key`: `Some` of exactly one.
fn kernel_table(k: &Kernel, key: &FlowKey) -> Result<Option<Table>, String> {
    let held: Vec<Table> = [Table::Protected, Table::Probation]
        .into_iter()
        .filter(|t| k.flows(*t).iter().any(|(k2, _)| k2 == key))
        .collect();
    match held[..] {
        [] => Ok(None),
        [t] => Ok(Some(t)),
        _ => Err(format!("{key:?} is in both tables")),
    }
}

impl Directed {
    /// The kernel must hold `key` in `table` (`None`: in neither).
    fn expect_table(&mut self, what: &str, key: &FlowKey, table: Option<Table>) {
        match kernel_table(&self.d.kernel, key) {
            Ok(t) if t == table => {}
            Ok(t) => self.fail(format!("{what}: the kernel holds the flow in {t:?}, the design {table:?}")),
            Err(e) => self.fail(format!("{what}: {e}")),
        }
    }
}

#[test]
fn flow_tables_promote_inbound_tcp_on_its_handshake_and_trust_the_protected_table() {
    crate::require_root();
    let mut t = Directed::with_policy(POLICY);
    let (e, i) = (Direction::Egress, Direction::Inbound);
    let conn = key4(TCP, 443, PEER, 40000);

    // An inbound connection waits in probation until its handshake ends.
    t.expect("syn", i, &tcp4(PEER, LOCAL4, 40000, 443, TCP_SYN, 0), Reason::PassRule, HTTPS);
    t.expect_table("after the syn", &conn, Some(Table::Probation));
    // A blind spoofer's ACK right behind its SYN: no SYN-ACK was sent yet.
    let blind = tcp4(PEER, LOCAL4, 40000, 443, TCP_ACK, TCP_SEQ.wrapping_add(1));
    t.expect("ack before any syn-ack", i, &blind, Reason::PassFlow, HTTPS);
    t.expect_table("after an ack before the syn-ack", &conn, Some(Table::Probation));
    t.expect(
        "syn-ack",
        e,
        &tcp4(LOCAL4, PEER, 443, 40000, TCP_SYN | TCP_ACK, TCP_SEQ.wrapping_add(1)),
        Reason::PassFlow,
        HTTPS,
    );
    match t.d.kernel.flows(Table::Probation).iter().find(|(k, _)| *k == conn) {
        Some((_, v)) if v.flags & FLOW_SYN_ACK != 0 && v.syn_ack_seq == TCP_SEQ => {}
        other => t.fail(format!("the syn-ack's sequence number must be recorded: {other:?}")),
    }
    // An acknowledgment of anything but exactly the SYN-ACK promotes nothing.
    for (what, flags, ack) in [
        ("ack of another number", TCP_ACK, TCP_SEQ.wrapping_add(2)),
        ("rst acking the syn-ack", TCP_RST | TCP_ACK, TCP_SEQ.wrapping_add(1)),
    ] {
        let reason = Reason::PassFlow;
        t.expect(what, i, &tcp4(PEER, LOCAL4, 40000, 443, flags, ack), reason, HTTPS);
        t.expect_table(what, &conn, Some(Table::Probation));
    }
    // From empty tables again (the RST marked the flow closing): the whole
    // handshake.
    t.d.reset();
    t.expect("syn again", i, &tcp4(PEER, LOCAL4, 40000, 443, TCP_SYN, 0), Reason::PassRule, HTTPS);
    t.expect(
        "syn-ack again",
        e,
        &tcp4(LOCAL4, PEER, 443, 40000, TCP_SYN | TCP_ACK, TCP_SEQ.wrapping_add(1)),
        Reason::PassFlow,
        HTTPS,
    );
    t.expect("the handshake's ack", i, &blind, Reason::PassFlow, HTTPS);
    t.expect_table("after the handshake", &conn, Some(Table::Protected));
    t.expect(
        "the server's data",
        e,
        &tcp4(LOCAL4, PEER, 443, 40000, TCP_ACK, TCP_SEQ.wrapping_add(1)),
        Reason::PassFlow,
        HTTPS,
    );
    t.d.check_state();
    // Closed, it goes back to probation: a peer that opens and closes
    // connections in a loop cycles that table only. Half-closed (one FIN)
    // it is still open the other way, and stays (issue 12, finding 2).
    t.expect(
        "the client's fin",
        i,
        &tcp4(PEER, LOCAL4, 40000, 443, TCP_FIN | TCP_ACK, TCP_SEQ.wrapping_add(1)),
        Reason::PassFlow,
        HTTPS,
    );
    t.expect_table("half-closed", &conn, Some(Table::Protected));
    t.expect(
        "the server's fin",
        e,
        &tcp4(LOCAL4, PEER, 443, 40000, TCP_FIN | TCP_ACK, TCP_SEQ.wrapping_add(1)),
        Reason::PassFlow,
        HTTPS,
    );
    t.expect_table("after the second fin", &conn, Some(Table::Probation));
    t.expect("the last ack", i, &blind, Reason::PassFlow, HTTPS);
    t.expect_table("closed", &conn, Some(Table::Probation));
    // A flow this host opened stays protected while it closes.
    let web_conn = key4(TCP, 5556, WEB_SERVER, 80);
    t.expect("web syn", e, &tcp4(LOCAL4, WEB_SERVER, 5556, 80, TCP_SYN, 0), Reason::PassRule, WEB);
    t.expect("web rst", i, &tcp4(WEB_SERVER, LOCAL4, 80, 5556, TCP_RST | TCP_ACK, 1), Reason::PassFlow, WEB);
    t.expect_table("outbound, reset", &web_conn, Some(Table::Protected));
    t.d.check_state();

    // What inbound packets open waits in probation; what this host opens
    // is protected at once.
    let media = key4(UDP, 40002, PEER, 5004);
    t.expect("media", i, &udp4(PEER, LOCAL4, 5004, 40002), Reason::PassRule, 1);
    t.expect_table("inbound udp", &media, Some(Table::Probation));
    t.expect("media reply", e, &udp4(LOCAL4, PEER, 40002, 5004), Reason::PassFlow, 1);
    t.expect_table("inbound udp, answered", &media, Some(Table::Probation));
    let query = key4(UDP, 5353, RESOLVER, 53);
    t.expect("dns query", e, &udp4(LOCAL4, RESOLVER, 5353, 53), Reason::PassRule, DNS);
    t.expect_table("outbound udp", &query, Some(Table::Protected));

    // Outbound TCP: a RST or a SYN-ACK answers a peer and opens nothing
    // (a spoofing peer could have them sent by the thousand); anything
    // else this host sends opens its flow.
    let web = key4(TCP, 5555, WEB_SERVER, 80);
    for (what, flags) in [("rst", TCP_RST | TCP_ACK), ("syn-ack", TCP_SYN | TCP_ACK)] {
        let f = tcp4(LOCAL4, WEB_SERVER, 5555, 80, flags, 1);
        t.expect(&format!("outbound {what}"), e, &f, Reason::PassRule, WEB);
        t.expect_table(&format!("after an outbound {what}"), &web, None);
    }
    t.expect("outbound syn", e, &tcp4(LOCAL4, WEB_SERVER, 5555, 80, TCP_SYN, 0), Reason::PassRule, WEB);
    t.expect_table("after an outbound syn", &web, Some(Table::Protected));
    t.d.check_state();

    // A key in both tables (a promotion racing a lookup on another CPU):
    // the protected entry decides, in the kernel as in the model.
    t.d.reset();
    let both = key4(UDP, 40004, PEER, 5006);
    let entry = |rule: u32| FlowValue {
        last_seen_ns: coarse_now(),
        generation: t.d.active.generation,
        rule,
        policy_port: 40004,
        flags: FLOW_INBOUND,
        _pad1: 0,
        syn_ack_seq: 0,
    };
    let (protected, probation) = (entry(7), entry(9));
    t.d.insert_flow(Table::Probation, both, probation);
    t.d.insert_flow(Table::Protected, both, protected);
    t.expect("a key in both tables", i, &udp4(PEER, LOCAL4, 5006, 40004), Reason::PassFlow, 7);
    t.d.check_state();
    t.finish();
}

/// A flood of new inbound flows, 40 times the probation table, two
/// datagrams per flow: the established connection and the flow this host
/// opened stay, and their packets pass as flows.
#[test]
fn an_inbound_flood_cycles_only_the_probation_table() {
    crate::require_root();
    let options = LoadOptions {
        capacity: Capacity { flow_entries: 256, ..Capacity::default() },
        ..LoadOptions::here().expect("load options")
    };
    let probation = options.capacity.inbound_flow_entries();
    let mut k = Kernel::load_with(&options);
    let compiled = crate::policies::compile_yaml(POLICY, "tables.yaml", "runtime");
    k.switch(&compiled, 1, None);
    let run = |k: &Kernel, d: Direction, f: &[u8]| k.run(d, f).expect("test run");
    let (e, i) = (Direction::Egress, Direction::Inbound);

    for (d, f) in [
        (i, tcp4(PEER, LOCAL4, 40000, 443, TCP_SYN, 0)),
        (e, tcp4(LOCAL4, PEER, 443, 40000, TCP_SYN | TCP_ACK, TCP_SEQ.wrapping_add(1))),
        (i, tcp4(PEER, LOCAL4, 40000, 443, TCP_ACK, TCP_SEQ.wrapping_add(1))),
        (e, udp4(LOCAL4, RESOLVER, 5353, 53)),
    ] {
        assert_eq!(run(&k, d, &f), TC_ACT_UNSPEC, "setting up: {}", hex(&f));
    }
    let flows = 40 * probation as usize;
    for n in 0..flows {
        let peer = [203, 0, 113, (n % 200) as u8 + 10];
        let f = udp4(peer, LOCAL4, 1024 + (n / 200) as u16, 40000 + (n % 20000) as u16);
        for _ in 0..2 {
            assert_eq!(run(&k, i, &f), TC_ACT_UNSPEC, "flood datagram {n}");
        }
    }

    let pass_flow = |k: &Kernel, d: Direction| k.stat(stats_index(1, d, Reason::PassFlow)).packets;
    let before = (pass_flow(&k, e), pass_flow(&k, i));
    let reply = tcp4(LOCAL4, PEER, 443, 40000, TCP_ACK | 0x08, TCP_SEQ.wrapping_add(1));
    assert_eq!(
        run(&k, e, &reply),
        TC_ACT_UNSPEC,
        "the established connection's reply after the flood (dropped: its flow was evicted)"
    );
    assert_eq!(run(&k, i, &udp4(RESOLVER, LOCAL4, 53, 5353)), TC_ACT_UNSPEC);
    assert_eq!((pass_flow(&k, e), pass_flow(&k, i)), (before.0 + 1, before.1 + 1), "both must pass as flows");
    let protected = k.flows(Table::Protected);
    assert_eq!(protected.len(), 2, "only the connection and the query are protected: {protected:?}");
    let in_probation = k.flows(Table::Probation).len();
    assert!(in_probation <= probation as usize, "{in_probation} entries in a table of {probation}");
    assert_eq!(k.flow_stat(flow_stats::OPENED_IN), flows as u64 + 1, "the syn and the flood");
    assert_eq!(k.flow_stat(flow_stats::PROMOTED), 1);
    assert_eq!(k.flow_stat(flow_stats::OPENED), 1, "the dns query");
    assert_eq!(k.flow_stat(flow_stats::DEMOTED), 0);
    // And a reply from the served port to a peer with no flow is still a
    // spoofed reply.
    let spoof = tcp4(LOCAL4, PEER, 443, 40001, TCP_ACK, 1);
    assert_eq!(run(&k, e, &spoof), TC_ACT_SHOT);
}
