//! The interface's life (issue 11, finding 3): an enforced interface that is
//! deleted and created again with the same name must be enforced again
//! before `fw status` says so, by the running daemon or by a daemon started
//! after it; and readiness (finding 11): `fw run` tells systemd READY=1 only
//! once it enforces.

use std::{
    ffi::OsStr,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::harness::{
    self,
    fw::{pin_dir, run_bounded, Fw, Launch, FW},
    netns::{Netns, VethPair},
    poll,
    traffic::{in_netns, tcp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

/// Allowed by rule `allow-tcp`.
const ALLOWED: u16 = 8080;
/// No rule: the egress default (drop).
const DEFAULT: u16 = 8081;
/// Denied by rule `deny-tcp`.
const DENIED: u16 = 9090;
/// Served by the near host (rule `served`): its replies leave only because
/// the ingress program recorded the flow, so this checks both hooks.
const SERVED: u16 = 7443;

fn policy(pair: &VethPair) -> String {
    let (v4, v6) = (pair.far4, pair.far6);
    format!(
        r#"name: lifecycle
phases:
  test:
    inbound:
      - {{ name: served, proto: tcp, ports: [{SERVED}] }}
    egress:
      - {{ name: allow-tcp, to: [{v4}, "{v6}"], proto: tcp, ports: [{ALLOWED}] }}
      - {{ name: deny-tcp, to: [any], proto: tcp, ports: [{DENIED}], action: deny }}
"#
    )
}

/// A veth pair, echo servers on both sides bound to the unspecified address
/// (so they outlive the interface and its addresses), and the policy.
struct Site {
    // Declaration order is drop order: servers, then files, then namespaces.
    _servers: Vec<Echo>,
    policy: PathBuf,
    dir: TempDir,
    pair: VethPair,
}

impl Site {
    fn new(x: u8) -> Self {
        harness::setup();
        let pair = VethPair::new(x);
        let dir = TempDir::new();
        let policy = dir.write("policy.yaml", &policy(&pair));
        // [::] is dual-stack: one socket serves IPv4 and IPv6.
        let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        let mut servers: Vec<Echo> = [ALLOWED, DEFAULT, DENIED].iter().map(|&p| Echo::tcp(&pair.far, any(p))).collect();
        servers.push(Echo::tcp(&pair.near, any(SERVED)));
        let site = Self { _servers: servers, policy, dir, pair };
        // The control: without fw, everything answers.
        for (what, _, outcome) in site.probes(|_| PASS_TIMEOUT) {
            assert_eq!(outcome, Outcome::Echoed, "without fw: {what}");
        }
        site
    }

    /// Every probe, both families: (what, from, to, passes under the policy).
    fn targets(&self) -> Vec<(String, &Netns, SocketAddr, bool)> {
        let mut out = Vec::new();
        for (far, near) in [
            (IpAddr::from(self.pair.far4), IpAddr::from(self.pair.near4)),
            (IpAddr::from(self.pair.far6), IpAddr::from(self.pair.near6)),
        ] {
            for (port, passes) in [(ALLOWED, true), (DEFAULT, false), (DENIED, false)] {
                let addr = SocketAddr::new(far, port);
                out.push((format!("near -> {addr}"), &self.pair.near, addr, passes));
            }
            let served = SocketAddr::new(near, SERVED);
            out.push((format!("far -> {served} (served)"), &self.pair.far, served, true));
        }
        out
    }

    /// Connects to each target from its namespace: (what, should pass, outcome).
    fn probes(&self, timeout: impl Fn(bool) -> Duration) -> Vec<(String, bool, Outcome)> {
        self.targets()
            .into_iter()
            .map(|(what, ns, addr, passes)| {
                let limit = timeout(passes);
                let outcome = in_netns(ns, || tcp_echo(addr, limit));
                (what, passes, outcome)
            })
            .collect()
    }

    /// The policy holds: allowed and served connections echo, denied ones
    /// time out.
    fn assert_enforced(&self, when: &str) {
        for (what, passes, outcome) in self.probes(|passes| if passes { PASS_TIMEOUT } else { DROP_TIMEOUT }) {
            let expected = if passes { Outcome::Echoed } else { Outcome::TimedOut };
            assert_eq!(outcome, expected, "{when}: {what}");
        }
    }

    fn iface(&self) -> &str {
        &self.pair.near_if
    }
}

/// `fw status` exits 1 and names the missing interface.
fn assert_reports_missing(fw: &Fw, iface: &str) {
    let status = fw.status();
    assert_eq!(status.status.code(), Some(1), "fw status with {iface} deleted: {status:#?}");
    let expected = format!("interface {iface} missing: not enforcing");
    assert!(status.stdout.contains(&expected), "fw status must say {expected:?}: {status:#?}");
}

/// Waits (bounded) until `fw status` exits 0 again.
fn wait_enforcing(fw: &Fw, what: &str) {
    assert!(
        poll(Duration::from_secs(20), || fw.status().status.success()),
        "{what}: fw status did not exit 0 within 20 s: {:#?}\nfw run printed:\n{}",
        fw.status(),
        fw.log_text()
    );
}

/// GET /metrics from inside `ns`.
fn scrape(ns: &Netns, addr: SocketAddr) -> String {
    in_netns(ns, || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connecting to /metrics");
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: fw\r\n\r\n").unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).expect("reading /metrics");
        reply
    })
}

fn metrics_addr(fw: &Fw) -> SocketAddr {
    assert!(
        poll(Duration::from_secs(5), || fw.log_text().contains("/metrics")),
        "fw run must say where the metrics are:\n{}",
        fw.log_text()
    );
    fw.log_text()
        .lines()
        .find_map(|l| l.split("http://").nth(1)?.strip_suffix("/metrics").map(str::to_string))
        .expect("the metrics address")
        .parse()
        .expect("a socket address")
}

/// Finding 3: the daemon notices the deletion at once (log line, `fw
/// status` exit 1, metric), and attaches the enforcer to the re-created
/// interface before `fw status` exits 0 again.
#[test]
fn finding3_recreated_interface_is_enforced_again() {
    let site = Site::new(110);
    let fw = Fw::start_with(
        &site.pair.near,
        site.iface(),
        &site.policy,
        "test",
        &[OsStr::new("--metrics"), OsStr::new("127.0.0.1:0")],
    );
    let metrics = metrics_addr(&fw);
    site.assert_enforced("before the interface is deleted");
    assert!(scrape(&site.pair.near, metrics).lines().any(|l| l == "fw_interface_up 1"));

    site.pair.delete_link();
    assert_reports_missing(&fw, site.iface());
    let gone = format!("interface {} is gone", site.iface());
    assert!(
        fw.log_has_within(&gone, Duration::from_secs(10)),
        "the daemon must log {gone:?} at once; it printed:\n{}",
        fw.log_text()
    );
    let m = scrape(&site.pair.near, metrics);
    assert!(m.lines().any(|l| l == "fw_interface_up 0"), "while {} is gone:\n{m}", site.iface());

    let recreated = Instant::now();
    site.pair.recreate_link();
    wait_enforcing(&fw, "after the interface was created again");
    println!("re-created, up and addressed, and enforced again (fw status 0) within {:?}", recreated.elapsed());
    let back = format!("interface {} is back", site.iface());
    assert!(
        fw.log_has_within(&back, Duration::from_secs(5)),
        "the daemon must log {back:?}; it printed:\n{}",
        fw.log_text()
    );
    site.assert_enforced("after the interface was created again");
    let m = scrape(&site.pair.near, metrics);
    assert!(m.lines().any(|l| l == "fw_interface_up 1"), "after re-creation:\n{m}");
    println!("fw run printed:\n{}", fw.log_text());
}

/// Finding 3, the restart half: the daemon is killed while the interface is
/// gone; the interface comes back with a new index; `fw run` started again
/// adopts the instance, attaches the enforcer to the new interface and
/// enforces.
#[test]
fn finding3_restarted_daemon_adopts_a_recreated_interface() {
    let site = Site::new(112);
    let mut fw = Fw::start(&site.pair.near, site.iface(), &site.policy, "test");
    site.assert_enforced("before the interface is deleted");

    site.pair.delete_link();
    fw.kill_run_process();
    site.pair.recreate_link();
    assert_reports_missing(&fw, site.iface());

    fw.start_again();
    assert!(
        fw.log_text().contains("adopted the pinned enforcer"),
        "fw run must adopt the instance:\n{}",
        fw.log_text()
    );
    site.assert_enforced("after a restart on the re-created interface");
    println!("fw run printed:\n{}", fw.log_text());
}

/// An instance started by an fw that did not pin its programs (before the
/// fix): a defunct link still holds its program, and that is where a
/// restarted daemon takes it from.
#[test]
fn finding3_an_instance_without_program_pins_is_enforced_again() {
    let site = Site::new(113);
    let mut fw = Fw::start(&site.pair.near, site.iface(), &site.policy, "test");
    fw.kill_run_process();
    for program in ["prog_egress", "prog_ingress"] {
        std::fs::remove_file(pin_dir(fw.name()).join(program)).expect("removing a program pin");
    }
    site.pair.delete_link();
    site.pair.recreate_link();
    fw.start_again();
    site.assert_enforced("after a restart on the re-created interface");
    for program in ["prog_egress", "prog_ingress"] {
        assert!(pin_dir(fw.name()).join(program).exists(), "{program} is pinned again");
    }
}

/// Fail closed: when the enforcer cannot be attached to the re-created
/// interface (here the pinned egress program was replaced by a map), `fw
/// run` fails in one line and leaves every pin; `fw status` keeps saying
/// the interface is not enforced.
#[test]
fn finding3_adopt_that_cannot_attach_fails_in_one_line_and_keeps_the_pins() {
    let site = Site::new(115);
    let mut fw = Fw::start(&site.pair.near, site.iface(), &site.policy, "test");
    fw.kill_run_process();
    site.pair.delete_link();
    site.pair.recreate_link();
    let dir = pin_dir(fw.name());
    let map = std::fs::read_dir(&dir)
        .expect("the pin directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("FW_")))
        .expect("a pinned map");
    std::fs::remove_file(dir.join("prog_egress")).unwrap();
    std::fs::hard_link(&map, dir.join("prog_egress")).expect("linking a map pin where the program was");
    let before: Vec<_> = {
        let mut names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        names
    };

    let mut cmd = site.pair.near.command(FW);
    cmd.args(fw.run_args());
    let out = run_bounded(cmd, Duration::from_secs(30));
    let line = out.one_line_error();
    assert!(line.contains(&format!("the enforcer is not attached to {}", site.iface())), "{line}");
    let mut after: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.file_name())).collect();
    after.sort();
    assert_eq!(before, after, "a failed adopt must leave every pin");
    assert_reports_missing(&fw, site.iface());
}

/// Pins of an older fw, whose flow tables had another layout (one
/// `FW_FLOWS` for both families, before the per-family `FW_FLOWS4` and
/// `FW_FLOWS6`), are never adopted: `fw run` fails in one line naming the
/// fix, leaves every pin, and the old instance goes on enforcing.
#[test]
fn an_instance_of_another_fw_version_is_not_adopted_and_keeps_enforcing() {
    let site = Site::new(117);
    let mut fw = Fw::start(&site.pair.near, site.iface(), &site.policy, "test");
    fw.kill_run_process();
    let dir = pin_dir(fw.name());
    // What an older fw left: its protected flow table under the old name.
    std::fs::rename(dir.join("FW_FLOWS4"), dir.join("FW_FLOWS")).expect("renaming the FW_FLOWS4 pin");
    let pins = || {
        let mut names: Vec<_> =
            std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok().map(|e| e.file_name())).collect();
        names.sort();
        names
    };
    let before = pins();

    let mut cmd = site.pair.near.command(FW);
    cmd.args(fw.run_args());
    let out = run_bounded(cmd, Duration::from_secs(30));
    let line = out.one_line_error();
    assert!(line.contains("was started by another version of fw") && line.contains("fw stop"), "{line}");
    assert_eq!(before, pins(), "a refused adopt must leave every pin");
    site.assert_enforced("after the refused adopt");
}

/// Finding 11 (readiness): with NOTIFY_SOCKET set, `fw run` sends READY=1
/// only once the enforcer is pinned and enforcing, with a STATUS= line.
#[test]
fn finding11_ready_is_sent_once_enforcing() {
    let site = Site::new(114);
    let socket_path = site.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
    // A bounded wait for the message, not a sleep.
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut fw = Fw::launch(
        &site.pair.near,
        site.iface(),
        &site.policy,
        "test",
        Launch { env: &[("NOTIFY_SOCKET", socket_path.as_os_str())], ..Launch::default() },
    );
    let mut buf = [0u8; 4096];
    let mut received = String::new();
    while !received.lines().any(|l| l == "READY=1") {
        let n = socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!("no READY=1 from fw run ({e}); it sent {received:?} and printed:\n{}", fw.log_text())
        });
        received.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // At this moment the instance must already be pinned and enforcing.
    let status = fw.status();
    assert!(status.status.success(), "READY=1 came before fw status exits 0: {status:#?}");
    assert!(fw.exited().is_none(), "fw run exited after READY=1:\n{}", fw.log_text());
    let status_line = received.lines().find(|l| l.starts_with("STATUS=")).unwrap_or_default();
    assert!(
        status_line.contains("enforcing") && status_line.contains(site.iface()),
        "STATUS= must say what is enforced where: {received:?}"
    );
    fw.wait_ready();
    site.assert_enforced("after READY=1");
}

/// A `fw run` whose stdout reader went away (a journal stream closed, `fw
/// run | head`) must keep running: it serves DNS and times rollbacks, and
/// enforcement without its daemon loses both. Before, the next summary line
/// (`println!` on a pipe with no reader, SIGPIPE ignored) panicked and the
/// daemon exited.
#[test]
fn finding_a_daemon_whose_stdout_reader_is_gone_keeps_running() {
    harness::setup();
    let pair = VethPair::new(119);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", &policy(&pair));
    let name = harness::unique_name();
    let mut child = fw_lab::process::Guarded::spawn_piped(
        pair.near
            .command(FW)
            .args(["run", "--iface", &pair.near_if, "--phase", "test", "--name", &name, "--interval", "1"])
            .args(["--cgroup", "none", "--policy"])
            .arg(&policy),
    )
    .expect("starting fw run");
    let (stdout, _) = child.wait_for_line("enforcing", Duration::from_secs(60)).expect("fw run enforces");
    // The reader goes away: the daemon's next line meets a closed pipe.
    drop(stdout);
    // Drops make the daemon print a summary line every second.
    for _ in 0..3 {
        let _ = in_netns(&pair.near, || tcp_echo(SocketAddr::new(pair.far4.into(), DENIED), DROP_TIMEOUT));
    }
    let exited = poll(Duration::from_secs(4), || !matches!(child.0.try_wait(), Ok(None)));
    let mut stop = pair.near.command(FW);
    stop.args(["stop", "--name", &name]);
    let stopped = run_bounded(stop, Duration::from_secs(30));
    assert!(!exited, "fw run ended once its stdout had no reader: {:?}", child.0.try_wait());
    assert!(stopped.status.success(), "{stopped:#?}");
}
