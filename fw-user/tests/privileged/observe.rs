//! Issue 12, finding 7: observability that misleads. The flow-count gauge
//! counted expired entries and a scrape walked the flow tables (170 ms with
//! full ones); the drops of a window around `fw switch` vanished from the
//! daemon's log, and switches, confirms and rollbacks were never logged.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use crate::harness::{
    self,
    fw::Fw,
    metrics,
    netns::VethPair,
    packet::send_udp_flood,
    poll,
    traffic::{in_netns, udp_send},
    TempDir,
};

const FLOWS: u16 = 2000;

/// Inbound UDP flows with a 15 s timeout: the live gauge counts them, then
/// none once they are idle past it, while their entries stay in the table
/// (the kernel removes an expired entry only when a lookup finds it, or
/// evicts it). And a scrape with a full probation table costs what it costs
/// with an empty one (the figures are printed: not asserted, timing).
#[test]
fn finding7_live_flow_gauges_leave_out_expired_flows() {
    harness::setup();
    let pair = VethPair::new(86);
    let dir = TempDir::new();
    let policy = dir.write(
        "observe.yaml",
        "name: observe\nphases:\n  runtime:\n    timeouts: { udp: 15s }\n    inbound:\n      \
         - { name: media, proto: udp, ports: [\"40000-65535\"] }\n",
    );
    let fw =
        Fw::start_with(&pair.near, &pair.near_if, &policy, "runtime", &["--metrics".as_ref(), "127.0.0.1:0".as_ref()]);
    let addr = metrics::address(&fw);
    let series = |m: &str, s: &str| metrics::sample(m, s);
    let scrape_ms = || {
        let t = Instant::now();
        let m = metrics::scrape(&pair.near, addr);
        (m, t.elapsed().as_secs_f64() * 1e3)
    };
    let (_, empty_ms) = scrape_ms();

    let (near, far) = (IpAddr::from(pair.near4), IpAddr::from(pair.far4));
    let flows: Vec<(u16, u16)> = (0..FLOWS).map(|i| (20000 + i, 40000 + i)).collect();
    let sent = send_udp_flood(&pair.far, far, near, &flows, 1);
    assert!(sent >= usize::from(FLOWS) * 9 / 10, "{sent} datagrams sent");
    let live = |m: &str| series(m, "fw_flows_live{table=\"flows_in\"}");
    let entries = |m: &str| series(m, "fw_map_entries{map=\"flows_in\"}");
    let mut seen = String::new();
    assert!(
        poll(Duration::from_secs(30), || {
            seen = metrics::scrape(&pair.near, addr);
            live(&seen) >= u64::from(FLOWS) * 9 / 10
        }),
        "the live gauge must count the new flows:\n{seen}"
    );
    println!("live: {} of {} entries", live(&seen), entries(&seen));
    // Idle past 15 s (and the touch second): no longer live, still there.
    assert!(
        poll(Duration::from_secs(60), || {
            seen = metrics::scrape(&pair.near, addr);
            live(&seen) == 0
        }),
        "idle past their timeout, the flows are not live:\n{seen}"
    );
    assert!(entries(&seen) >= u64::from(FLOWS) * 9 / 10, "their entries stay until found or evicted:\n{seen}");
    assert!(series(&seen, "fw_census_age_seconds") < 60, "{seen}");

    // The scrape's cost with a full probation table (65,536 entries).
    let full: Vec<(u16, u16)> =
        (0..70_000u32).map(|i| (1024 + (i / 20_000) as u16, 40000 + (i % 20_000) as u16)).collect();
    send_udp_flood(&pair.far, far, near, &full, 1);
    assert!(
        poll(Duration::from_secs(30), || {
            seen = metrics::scrape(&pair.near, addr);
            entries(&seen) >= 60_000
        }),
        "the probation table must fill:\n{seen}"
    );
    let mut costs: Vec<f64> = (0..5).map(|_| scrape_ms().1).collect();
    costs.sort_by(f64::total_cmp);
    println!(
        "scrape: {empty_ms:.1} ms with empty tables, median {:.1} ms with {} flow entries",
        costs[2],
        entries(&seen)
    );
}

/// Drops before and after a switch, a switch that is rolled back, and one
/// that is confirmed: each in the daemon's log, and each window's drops
/// under the generation that judged them.
#[test]
fn finding7_switches_confirms_rollbacks_and_their_drops_are_logged() {
    harness::setup();
    let pair = VethPair::new(87);
    let dir = TempDir::new();
    let policy = dir.write(
        "observe.yaml",
        "name: observe\nphases:\n  a:\n    egress_default: drop\n  b:\n    egress_default: drop\n    \
         egress:\n      - { name: dns, to: [any], proto: udp, ports: [53] }\n",
    );
    // A long summary interval: only the switches close a window.
    let fw = Fw::start_with(&pair.near, &pair.near_if, &policy, "a", &["--interval".as_ref(), "3600".as_ref()]);
    let far = SocketAddr::new(IpAddr::from(pair.far4), 9999);
    let status = fw.status_json();
    let gen_a = status["generation"].as_u64().expect("a generation");

    in_netns(&pair.near, || udp_send(far, 5, 10));
    let waited = fw.drops_when(|d| d.egress("drop_default").0 >= 5);
    assert_eq!(waited.egress("drop_default").0, 5, "{waited:#?}");

    let out = fw.cli(&["switch", "b", "--confirm", "3"]);
    assert!(out.status.success(), "{out:#?}");
    let gen_b = fw.status_json()["generation"].as_u64().expect("a generation");
    let switched = format!("switched to phase b (generation {gen_b}) from phase a (generation {gen_a}); rolls back at");
    assert!(fw.log_has_within(&switched, Duration::from_secs(10)), "{}", fw.log_text());
    let before = format!("up to the switch, phase a (generation {gen_a}): dropped 5: egress drop_default=5");
    assert!(fw.log_has_within(&before, Duration::from_secs(10)), "{}", fw.log_text());

    // Under b until its rollback.
    in_netns(&pair.near, || udp_send(far, 7, 10));
    let rolled = format!("the switch was not confirmed in time: rolled back to phase a (generation {gen_a})");
    assert!(fw.log_has_within(&rolled, Duration::from_secs(20)), "{}", fw.log_text());
    let during = format!("up to the switch, phase b (generation {gen_b}): dropped 7: egress drop_default=7");
    assert!(fw.log_has_within(&during, Duration::from_secs(10)), "{}", fw.log_text());

    // A switch that is confirmed.
    let out = fw.cli(&["switch", "b", "--confirm", "60"]);
    assert!(out.status.success(), "{out:#?}");
    let gen_c = fw.status_json()["generation"].as_u64().expect("a generation");
    let pending = format!("switched to phase b (generation {gen_c}) from phase a (generation {gen_a}); rolls back at");
    assert!(fw.log_has_within(&pending, Duration::from_secs(10)), "{}", fw.log_text());
    let out = fw.cli(&["confirm"]);
    assert!(out.status.success(), "{out:#?}");
    let confirmed = format!("the switch to phase b (generation {gen_c}) is confirmed");
    assert!(fw.log_has_within(&confirmed, Duration::from_secs(10)), "{}", fw.log_text());
    println!("daemon log:\n{}", fw.log_text());
}

/// Issue 16, deliver 4: an idle daemon no longer reads every deny rule's
/// counter for each summary (10,000 reads a summary with a 100,000-rule
/// policy); it reads them only once a packet was judged. This keeps what
/// the summaries say: idle windows report no drops, and the drops of a
/// deny rule after them are reported under that rule's name.
#[test]
fn idle_summaries_skip_the_rule_counters_and_still_name_the_deny_rule() {
    harness::setup();
    let pair = VethPair::new(116);
    let dir = TempDir::new();
    let mut policy = String::from("name: idle\nphases:\n  a:\n    egress_default: drop\n    egress:\n");
    // Many deny rules that never match, and the one that does, last.
    for i in 0..2000u32 {
        policy += &format!(
            "      - {{ name: d{i}, to: [\"198.19.{}.{}\"], proto: tcp, ports: [25], action: deny }}\n",
            i / 250,
            i % 250
        );
    }
    policy += "      - { name: blocked, to: [any], proto: udp, ports: [9999], action: deny }\n";
    let policy = dir.write("idle.yaml", &policy);
    let fw = Fw::start_with(&pair.near, &pair.near_if, &policy, "a", &["--interval".as_ref(), "1".as_ref()]);
    // Two idle windows (the first one may have seen the start's own packets).
    let idle =
        |log: &str| log.lines().filter(|l| l.contains("phase a (generation") && l.ends_with(": no drops")).count();
    assert!(poll(Duration::from_secs(20), || idle(&fw.log_text()) >= 2), "{}", fw.log_text());

    let far = SocketAddr::new(IpAddr::from(pair.far4), 9999);
    in_netns(&pair.near, || udp_send(far, 3, 10));
    assert!(fw.log_has_within("rule blocked=3", Duration::from_secs(20)), "{}", fw.log_text());
    // And idle again afterwards: nothing counted twice.
    let before = idle(&fw.log_text());
    assert!(poll(Duration::from_secs(20), || idle(&fw.log_text()) > before), "{}", fw.log_text());
    assert_eq!(fw.log_text().matches("rule blocked=").count(), 1, "{}", fw.log_text());
}
