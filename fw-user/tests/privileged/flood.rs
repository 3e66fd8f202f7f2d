//! Finding 7 of issue 11: a remote peer that floods the media ports with
//! new flows must not evict the live connections of the flow table (an
//! evicted inbound connection's replies are dropped as
//! `drop_spoofed_reply`, an evicted outbound one's re-judged). The
//! enforcer runs on the server (`near`) with a small flow table, so that a
//! bounded flood overflows it many times in well under a second.
//!
//! At the finding's scale (default tables, 1.8 M datagrams):
//! `FW_FLOOD_TABLE=262144 FW_FLOOD_FLOWS=450000` (flow table entries, and
//! flood flows per family).

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Instant,
};

use crate::harness::{
    self,
    fw::{Fw, Launch},
    metrics,
    netns::VethPair,
    packet::send_udp_flood,
    traffic::{in_netns, PASS_TIMEOUT},
    TempDir,
};

/// The flow table the enforcer is loaded with (`FW_FLOW_ENTRIES`), unless
/// `FW_FLOOD_TABLE` says otherwise.
const FLOW_ENTRIES: usize = 4096;
/// Distinct flows the flood opens, per family and per table entry, unless
/// `FW_FLOOD_FLOWS` says otherwise: together eight times the table.
const FLOOD_FLOWS_PER_TABLE: usize = 4;
/// Datagrams per flood flow: a first one that opens the flow and a second
/// that finds it, as a conversation would.
const PER_FLOW: usize = 2;
const HTTPS: u16 = 443;
const UPSTREAM: u16 = 8443;

fn policy(far4: IpAddr, far6: IpAddr) -> String {
    format!(
        r#"name: flood
phases:
  runtime:
    inbound_default: drop
    inbound:
      - {{ name: https, proto: tcp, ports: [{HTTPS}] }}
      - {{ name: media, proto: udp, ports: ["40000-65535"] }}
    egress:
      - {{ name: upstream, to: [{far4}, "{far6}"], proto: tcp, ports: [{UPSTREAM}] }}
"#
    )
}

/// One TCP connection, both ends: `a` connected, `b` accepted.
struct Conn {
    what: String,
    a: TcpStream,
    b: TcpStream,
}

/// Connects from a socket made in `a_ns` to `listener` (bound in the other
/// namespace) and accepts it.
fn connect(what: String, a_ns: &harness::netns::Netns, listener: &TcpListener) -> Conn {
    let to = listener.local_addr().expect("listener address");
    let a = in_netns(a_ns, || TcpStream::connect_timeout(&to, PASS_TIMEOUT))
        .unwrap_or_else(|e| panic!("{what}: connecting to {to}: {e}"));
    let (b, _) = listener.accept().unwrap_or_else(|e| panic!("{what}: accepting: {e}"));
    for s in [&a, &b] {
        s.set_read_timeout(Some(PASS_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(PASS_TIMEOUT)).unwrap();
    }
    Conn { what, a, b }
}

/// One message each way; `Err` names the direction that failed.
fn exchange(conn: &mut Conn, round: &str) -> Result<(), String> {
    fn one(from: &mut TcpStream, to: &mut TcpStream, text: &str) -> io::Result<()> {
        from.write_all(text.as_bytes())?;
        let mut back = vec![0u8; text.len()];
        to.read_exact(&mut back)?;
        if back != text.as_bytes() {
            return Err(io::Error::other(format!("got {:?}", String::from_utf8_lossy(&back))));
        }
        Ok(())
    }
    let (a_to_b, b_to_a) = (format!("{round}: a to b"), format!("{round}: b to a"));
    // The accepting side speaks first: on the server, that is a reply
    // leaving through egress, the packet an evicted flow loses.
    one(&mut conn.b, &mut conn.a, &b_to_a).map_err(|e| format!("{}: {b_to_a}: {e}", conn.what))?;
    one(&mut conn.a, &mut conn.b, &a_to_b).map_err(|e| format!("{}: {a_to_b}: {e}", conn.what))
}

/// `count` distinct (source port, media port) pairs.
fn flood_flows(count: usize) -> Vec<(u16, u16)> {
    assert!(count <= 25_000 * 60_000, "{count} flood flows");
    (0..count).map(|i| (1024 + (i / 25_000) as u16, 40_000 + (i % 25_000) as u16)).collect()
}

fn env_usize(name: &str) -> Option<usize> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?}: expected a number")))
}

#[test]
fn finding7_flood_cannot_evict_established_tcp() {
    harness::setup();
    let pair = VethPair::new(70);
    let dir = TempDir::new();
    let policy = dir.write("flood.yaml", &policy(pair.far4.into(), pair.far6.into()));
    let families: [(IpAddr, IpAddr, &str); 2] =
        [(pair.near4.into(), pair.far4.into(), "IPv4"), (pair.near6.into(), pair.far6.into(), "IPv6")];
    // Listeners first: nothing has to wait for a server to come up.
    let mut listeners = Vec::new();
    for &(near, far, family) in &families {
        let served = in_netns(&pair.near, || TcpListener::bind(SocketAddr::new(near, HTTPS)))
            .unwrap_or_else(|e| panic!("binding {near}:{HTTPS}: {e}"));
        let upstream = in_netns(&pair.far, || TcpListener::bind(SocketAddr::new(far, UPSTREAM)))
            .unwrap_or_else(|e| panic!("binding {far}:{UPSTREAM}: {e}"));
        listeners.push((family, served, upstream));
    }
    let table = env_usize("FW_FLOOD_TABLE").unwrap_or(FLOW_ENTRIES);
    let flows_per_family = env_usize("FW_FLOOD_FLOWS").unwrap_or(FLOOD_FLOWS_PER_TABLE * table);
    let entries = table.to_string();
    let fw = Fw::start_launch(
        &pair.near,
        &pair.near_if,
        &policy,
        "runtime",
        Launch {
            extra: &["--metrics".as_ref(), "127.0.0.1:0".as_ref()],
            env: &[("FW_FLOW_ENTRIES", entries.as_ref())],
            ..Launch::default()
        },
    );
    let metrics_addr = metrics::address(&fw);

    // Connections a server lives with: a client's connection to the
    // served port, and the server's own connection upstream.
    let mut conns = Vec::new();
    for (family, served, upstream) in &listeners {
        conns.push(connect(format!("{family} inbound to :{HTTPS}"), &pair.far, served));
        conns.push(connect(format!("{family} outbound to :{UPSTREAM}"), &pair.near, upstream));
    }
    for conn in &mut conns {
        exchange(conn, "before the flood").unwrap_or_else(|e| panic!("{e}"));
    }
    let before = fw.drops();

    // The flood, while the connections stay idle.
    let started = Instant::now();
    let flows = flood_flows(flows_per_family);
    let mut sent = 0;
    for &(near, far, _) in &families {
        sent += send_udp_flood(&pair.far, far, near, &flows, PER_FLOW);
    }
    let seconds = started.elapsed().as_secs_f64();
    // The flood's first datagrams open flows (pass_rule): wait until the
    // enforcer has judged (nearly) all of them, at most 3 s.
    let opened =
        |d: &harness::fw::Drops| d.counted("inbound", "pass_rule").0 - before.counted("inbound", "pass_rule").0;
    let wanted = (2 * flows_per_family) as u64 * 9 / 10;
    let after_flood = fw.drops_when(|d| opened(d) >= wanted);
    let opened = opened(&after_flood);
    eprintln!(
        "flood: {sent} datagrams ({PER_FLOW} per flow, {} flows) in {seconds:.2} s; {opened} new flows admitted",
        2 * flows_per_family
    );
    assert!(
        opened >= 3 * table as u64,
        "the flood must open several times the table's {table} flows, it opened {opened} ({sent} datagrams sent)"
    );

    // Every connection still works both ways.
    let failures: Vec<String> = conns.iter_mut().filter_map(|conn| exchange(conn, "after the flood").err()).collect();
    let after = fw.drops();
    let spoofed = after.egress("drop_spoofed_reply").0 - before.egress("drop_spoofed_reply").0;
    assert!(
        failures.is_empty(),
        "the flood evicted live connections ({spoofed} packets dropped as drop_spoofed_reply since):\n  {}",
        failures.join("\n  ")
    );
    assert_eq!(spoofed, 0, "no reply of a live connection may be dropped as spoofed");

    // What the tables went through: the flood cycled the inbound table only.
    let m = metrics::scrape(&pair.near, metrics_addr);
    let entries = |map: &str| metrics::sample(&m, &format!("fw_map_entries{{map=\"{map}\"}}"));
    let capacity = |map: &str| metrics::sample(&m, &format!("fw_map_capacity{{map=\"{map}\"}}"));
    let inserted = |table: &str| metrics::sample(&m, &format!("fw_flows_opened_total{{table=\"{table}\"}}"));
    let promoted = metrics::sample(&m, "fw_flows_promoted_total");
    let demoted = metrics::sample(&m, "fw_flows_demoted_total");
    // Nothing else moves an entry into or out of the probation table
    // during this test: what is missing was evicted.
    let evicted = inserted("flows_in") + demoted - promoted - entries("flows_in");
    eprintln!(
        "tables: flows {}/{} (opened {}), flows_in {}/{} (opened {}, promoted {promoted}, demoted {demoted}, evicted {evicted})",
        entries("flows"),
        capacity("flows"),
        inserted("flows"),
        entries("flows_in"),
        capacity("flows_in"),
        inserted("flows_in"),
    );
    // FW_FLOW_ENTRIES sizes each family's map of the table.
    assert_eq!(capacity("flows"), 2 * table as u64);
    assert!(
        evicted >= opened - capacity("flows_in"),
        "the flood must have cycled the inbound table: {evicted} evicted of {opened} opened"
    );
    assert_eq!(promoted, 2, "the two inbound connections, promoted on their handshake");
    assert_eq!(demoted, 0, "no connection closed");
    assert!(
        entries("flows") < 16,
        "the flood must not land in the table of established flows ({} entries)",
        entries("flows")
    );
}
