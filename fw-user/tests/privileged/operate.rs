//! Issue 6, operating the enforcer on a media server: the OpenVidu day
//! (install, then "close all outbound"), a crash of the daemon without a
//! gap, commit-confirmed switches and their rollback, bad input that must
//! change nothing, and the switch time of a 100,000-rule policy.
//!
//! Two namespaces: `media` (the OpenVidu host, where fw enforces with the
//! shipped `openvidu-ce` policy) and `internet`, which serves DNS (UDP and
//! TCP 53), HTTP(S) (80, 443), NTP (UDP 123), a package mirror that streams
//! downloads, the OpenVidu webhook receiver, and holds the clients.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::harness::{
    self,
    fw::{fw, Drops, Finished, Fw},
    netns::VethPair,
    stream::{tcp_connect_from, Download, End, Pacer, SeqFlow, TcpSource},
    traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}
use Proto::{Tcp, Udp};

/// The webhook receiver's port (OPENVIDU_WEBHOOK_ENDPOINT).
const WEBHOOK_PORT: u16 = 8443;
/// What the internet serves to the media host: DNS, HTTP(S), NTP.
const INTERNET_SERVICES: [(Proto, u16, &str); 5] =
    [(Udp, 53, "dns/udp"), (Tcp, 53, "dns/tcp"), (Tcp, 80, "http"), (Tcp, 443, "https"), (Udp, 123, "ntp")];
/// What the media host serves to clients: HTTPS, STUN/TURN, Kurento media
/// (40000-57000) and the TURN relay range (57001-65535).
const MEDIA_SERVICES: [(Proto, u16); 5] = [(Tcp, 443), (Tcp, 3478), (Udp, 3478), (Udp, 45000), (Udp, 60000)];
/// A port nothing allows, served on the internet side as a control.
const DENIED_PORT: u16 = 9999;

/// The OpenVidu host and "the internet".
struct Ov {
    /// (proto, address, server) of every service on the internet side.
    internet: Vec<(Proto, SocketAddr, Echo)>,
    /// The same on the media host.
    media: Vec<(Proto, SocketAddr, Echo)>,
    webhook: Echo,
    webhook_addr: SocketAddr,
    /// The package mirror (port 80) of each family, streaming downloads.
    mirror: [SocketAddr; 2],
    env: PathBuf,
    dir: TempDir,
    pair: VethPair,
}

impl Ov {
    fn new(x: u8) -> Self {
        harness::setup();
        let pair = VethPair::new(x);
        // The webhook receiver and the mirror have addresses of their own.
        let webhook_ip = Ipv4Addr::new(198, 18, x, 3);
        let mirror4 = Ipv4Addr::new(198, 18, x, 4);
        let mirror6 = Ipv6Addr::new(0x2001, 0xdb8, u16::from(x), 0, 0, 0, 0, 4);
        for v4 in [webhook_ip, mirror4] {
            pair.far.ip(&["addr", "add", &format!("{v4}/24"), "dev", &pair.far_if]);
        }
        pair.far.ip(&["-6", "addr", "add", &format!("{mirror6}/64"), "dev", &pair.far_if, "nodad"]);
        let mut internet = Vec::new();
        for ip in pair.far_addrs() {
            for (proto, port) in
                INTERNET_SERVICES.iter().map(|&(p, port, _)| (p, port)).chain([(Udp, DENIED_PORT), (Tcp, DENIED_PORT)])
            {
                let addr = SocketAddr::new(ip, port);
                internet.push((proto, addr, serve(&pair.far, proto, addr)));
            }
        }
        let mut media = Vec::new();
        for ip in [IpAddr::from(pair.near4), IpAddr::from(pair.near6)] {
            for (proto, port) in MEDIA_SERVICES {
                let addr = SocketAddr::new(ip, port);
                media.push((proto, addr, serve(&pair.near, proto, addr)));
            }
        }
        let webhook_addr = SocketAddr::new(webhook_ip.into(), WEBHOOK_PORT);
        let dir = TempDir::new();
        let env = dir.write(
            "openvidu.env",
            &format!(
                "# /opt/openvidu/.env of the test's media host\n\
                 DOMAIN_OR_PUBLIC_IP={media}\n\
                 COTURN_IP={media}\n\
                 OPENVIDU_WEBHOOK_ENDPOINT=http://{webhook_addr}/webhook\n",
                media = pair.near4
            ),
        );
        Self {
            internet,
            media,
            webhook: Echo::tcp(&pair.far, webhook_addr),
            webhook_addr,
            mirror: [SocketAddr::new(mirror4.into(), 80), SocketAddr::new(mirror6.into(), 80)],
            env,
            dir,
            pair,
        }
    }

    /// `fw run --policy openvidu-ce --env-file ENV --phase PHASE` on the
    /// media host.
    fn start_fw(&self, phase: &str) -> Fw<'_> {
        Fw::start_with(
            &self.pair.near,
            &self.pair.near_if,
            "openvidu-ce",
            phase,
            &[OsStr::new("--env-file"), self.env.as_os_str()],
        )
    }

    /// The package mirrors, streaming to whoever connects until dropped.
    fn serve_mirrors(&self) -> Vec<TcpSource> {
        self.mirror.iter().map(|&a| TcpSource::new(&self.pair.far, a, None)).collect()
    }

    fn internet_service(&self, proto: Proto, port: u16, v6: bool) -> (SocketAddr, &Echo) {
        self.internet
            .iter()
            .find(|(p, a, _)| *p == proto && a.port() == port && a.is_ipv6() == v6)
            .map(|(_, a, e)| (*a, e))
            .unwrap_or_else(|| panic!("no {proto:?} service on port {port}"))
    }

    /// The media host uses each internet service of both families; returns
    /// (label, outcome, whether its server saw it).
    fn outbound(&self, timeout: Duration) -> Vec<(String, Outcome, bool)> {
        let mut results = Vec::new();
        for v6 in [false, true] {
            for (proto, port, label) in INTERNET_SERVICES {
                let (addr, echo) = self.internet_service(proto, port, v6);
                let before = echo.received();
                let outcome = in_netns(&self.pair.near, || probe(proto, addr, timeout));
                results.push((format!("{label} {addr}"), outcome, echo.received() > before));
            }
        }
        results
    }

    /// Clients on the internet use every service of the media host.
    fn clients(&self) -> Vec<(String, Outcome)> {
        self.media
            .iter()
            .map(|(proto, addr, _)| {
                let outcome = in_netns(&self.pair.far, || probe(*proto, *addr, PASS_TIMEOUT));
                (format!("{proto:?} {addr}"), outcome)
            })
            .collect()
    }

    /// OpenVidu posts a session event to its webhook; returns whether the
    /// receiver echoed it back.
    fn post_webhook(&self, timeout: Duration) -> Outcome {
        let addr = self.webhook_addr;
        in_netns(&self.pair.near, || {
            let mut conn = match TcpStream::connect_timeout(&addr, timeout) {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::TimedOut,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let body = r#"{"event":"sessionCreated","sessionId":"fwt"}"#;
            let request = format!(
                "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let result = (|| {
                conn.set_read_timeout(Some(PASS_TIMEOUT))?;
                conn.write_all(request.as_bytes())?;
                let mut back = vec![0u8; request.len()];
                conn.read_exact(&mut back)?;
                Ok::<_, std::io::Error>(back)
            })();
            match result {
                Ok(back) if back == request.as_bytes() => Outcome::Echoed,
                Ok(_) => Outcome::Failed("the webhook answered something else".into()),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        })
    }

    /// UDP to internet:53 from the media host: works in `install` only.
    fn dns_works(&self, v6: bool) -> bool {
        let (addr, _) = self.internet_service(Udp, 53, v6);
        let timeout = DROP_TIMEOUT;
        in_netns(&self.pair.near, || udp_echo(addr, timeout)) == Outcome::Echoed
    }
}

fn serve(ns: &crate::harness::netns::Netns, proto: Proto, addr: SocketAddr) -> Echo {
    match proto {
        Tcp => Echo::tcp(ns, addr),
        Udp => Echo::udp(ns, addr),
    }
}

fn probe(proto: Proto, addr: SocketAddr, timeout: Duration) -> Outcome {
    match proto {
        Tcp => tcp_echo(addr, timeout),
        Udp => udp_echo(addr, timeout),
    }
}

fn assert_all(results: &[(String, Outcome, bool)], outcome: &Outcome, seen: bool, when: &str) {
    let wrong: Vec<_> = results.iter().filter(|(_, o, s)| o != outcome || *s != seen).collect();
    assert!(wrong.is_empty(), "{when}: expected {outcome:?} (server saw it: {seen}), got: {wrong:#?}");
}

fn assert_clients_served(ov: &Ov, when: &str) {
    let wrong: Vec<_> = ov.clients().into_iter().filter(|(_, o)| *o != Outcome::Echoed).collect();
    assert!(wrong.is_empty(), "{when}: clients not served: {wrong:#?}");
}

/// Parses `fw switch`'s "in N ms" and returns N.
fn switch_ms(out: &Finished) -> f64 {
    let line = out.stdout.lines().next().unwrap_or_default();
    line.split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no switch time in {out:#?}"))
}

fn assert_ok(out: &Finished, what: &str) {
    assert!(out.status.success(), "{what} failed: {out:#?}");
}

/// Downloads of both families from the mirror, started from local ports
/// `ports` of the media host, checked flowing (1 MiB each).
fn start_downloads(ov: &Ov, ports: [u16; 2]) -> Vec<(SocketAddr, Download)> {
    ov.mirror
        .iter()
        .zip(ports)
        .map(|(&mirror, port)| {
            let conn = tcp_connect_from(&ov.pair.near, mirror, port, PASS_TIMEOUT)
                .unwrap_or_else(|e| panic!("download from {mirror} (local port {port}): {e}"));
            let download = Download::start(conn);
            assert!(
                download.wait(Duration::from_secs(5), |d| d.bytes() >= 1 << 20),
                "the download from {mirror} must flow in the install phase: {} bytes, {:?}",
                download.bytes(),
                download.end()
            );
            (mirror, download)
        })
        .collect()
}

/// After a switch to runtime: each download stalls (no byte for 500 ms, or
/// an error) within 3 s and does not resume.
fn assert_downloads_cut(downloads: &[(SocketAddr, Download)]) {
    const STALL: Duration = Duration::from_millis(500);
    for (mirror, download) in downloads {
        let stalled = download.wait(Duration::from_secs(3), |d| d.idle() >= STALL || matches!(d.end(), End::Error(_)));
        assert!(
            stalled,
            "the download from {mirror} must stall after the switch: still receiving ({} bytes, idle {:?})",
            download.bytes(),
            download.idle()
        );
    }
    let at: Vec<u64> = downloads.iter().map(|(_, d)| d.bytes()).collect();
    // A drop is expected: a short, fixed look for bytes that should not come.
    std::thread::sleep(DROP_TIMEOUT);
    for ((mirror, download), before) in downloads.iter().zip(at) {
        assert_eq!(download.bytes(), before, "the download from {mirror} resumed");
    }
}

/// The whole day: install phase, everything works; `fw switch runtime`:
/// new downloads, DNS and NTP fail, the webhook still gets its POSTs,
/// clients still reach 443, 3478 and the media ports, and a download that
/// was running is cut.
#[test]
fn operate_the_openvidu_day() {
    let ov = Ov::new(20);
    let mirrors = ov.serve_mirrors();
    let fw = ov.start_fw("install");
    let status = fw.status_json();
    assert_eq!(status["policy"], "builtin:openvidu-ce", "{status}");
    assert_eq!(status["phase"], "install", "{status}");

    // Install: DNS, HTTP(S), NTP, the webhook; clients reach the services.
    // The long downloads come from ports outside every inbound range (the
    // media ranges are the next test's subject).
    let downloads = start_downloads(&ov, [35000, 35001]);
    assert_all(&ov.outbound(PASS_TIMEOUT), &Outcome::Echoed, true, "install");
    assert_eq!(ov.post_webhook(PASS_TIMEOUT), Outcome::Echoed, "install: webhook");
    assert_clients_served(&ov, "install");

    let before = fw.drops();
    let out = fw.cli(&["switch", "runtime"]);
    assert_ok(&out, "fw switch runtime");
    println!("openvidu day: fw switch install -> runtime took {} ms", switch_ms(&out));
    assert_eq!(fw.status_json()["phase"], "runtime");

    assert_downloads_cut(&downloads);
    let after = fw.drops();
    assert!(
        after.dropped("egress") > before.dropped("egress"),
        "the cut downloads' packets must be counted as drops: {after:#?}"
    );

    let webhook_before = ov.webhook.received();
    assert_all(&ov.outbound(DROP_TIMEOUT), &Outcome::TimedOut, false, "runtime");
    // New downloads from the mirror fail as well.
    for mirror in ov.mirror {
        let out = tcp_connect_from(&ov.pair.near, mirror, 0, DROP_TIMEOUT);
        assert!(out.is_err(), "runtime: a new download from {mirror} must fail");
    }
    assert_eq!(ov.post_webhook(PASS_TIMEOUT), Outcome::Echoed, "runtime: webhook");
    assert_eq!(ov.webhook.received(), webhook_before + 1);
    assert_clients_served(&ov, "runtime");
    assert_eq!(mirrors.iter().map(TcpSource::accepted).sum::<u64>(), 2);
    let end = fw.drops();
    assert!(end.rule("webhook").packets >= 1, "{end:#?}");
    drop(downloads);
}

/// Linux picks ephemeral ports in 32768-60999, which overlaps the media
/// ranges that openvidu-ce serves (40000-65535). A download the installer
/// opened from such a port must be cut by the switch like any other: the
/// switch closes all outbound, whatever the local port.
#[test]
fn operate_a_download_from_a_port_in_the_media_range_is_cut_too() {
    let ov = Ov::new(21);
    let _mirrors = ov.serve_mirrors();
    let fw = ov.start_fw("install");
    let downloads = start_downloads(&ov, [45000, 58000]);
    assert_ok(&fw.cli(&["switch", "runtime"]), "fw switch runtime");
    assert_downloads_cut(&downloads);
}

/// Crash without a gap: a client streams through an allowed flow and a
/// process on the media host keeps trying a denied destination while the
/// daemon is killed (-9) and started again. No denied packet passes, the
/// allowed flow loses nothing, the counters continue.
#[test]
fn operate_a_daemon_crash_leaves_no_gap() {
    let ov = Ov::new(22);
    let mut fw = ov.start_fw("runtime");
    let start = fw.drops();
    let denied: Vec<(SocketAddr, &Echo)> =
        [false, true].into_iter().map(|v6| ov.internet_service(Udp, DENIED_PORT, v6)).collect();
    let media: Vec<SocketAddr> =
        ov.media.iter().filter(|(p, a, _)| *p == Udp && a.port() == 45000).map(|(_, a, _)| *a).collect();
    let flows: Vec<SeqFlow> =
        media.iter().map(|&a| SeqFlow::start(&ov.pair.far, a, Duration::from_millis(2))).collect();
    let pacers: Vec<Pacer> =
        denied.iter().map(|&(a, _)| Pacer::start(&ov.pair.near, a, Duration::from_millis(1), 30_000)).collect();
    let wait_echoes = |more: usize| {
        let goal: Vec<usize> = flows.iter().map(|f| f.echoed() + more).collect();
        let start = Instant::now();
        while flows.iter().zip(&goal).any(|(f, g)| f.echoed() < *g) {
            assert!(start.elapsed() < Duration::from_secs(5), "the allowed flows stopped");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_echoes(50);

    let before = fw.drops();
    let old_pid = fw.pid();
    let gap = fw.restart();
    assert_ne!(fw.pid(), old_pid);
    let adopted = fw.drops();
    println!("crash: the instance had no daemon for {gap:?} (kill -9 until the new daemon answered)");
    wait_echoes(100);

    let attempts: u64 = pacers.into_iter().map(Pacer::finish).sum();
    let passed: usize = denied.iter().map(|(_, e)| e.received()).sum();
    let mut streamed = 0;
    for (flow, to) in flows.into_iter().zip(&media) {
        let (sent, missing) = flow.finish();
        assert!(missing.is_empty(), "the allowed flow to {to} lost {} of {sent}: {missing:?}", missing.len());
        streamed += sent;
    }
    let end = fw.drops_when(|d| d.dropped("egress") - start.dropped("egress") >= attempts);
    println!(
        "crash: denied packets passed during the restart: {passed} of {attempts} attempts; \
         allowed datagrams echoed without a gap: {streamed}"
    );
    assert_eq!(passed, 0, "denied packets reached the internet");
    for (earlier, later, when) in
        [(&start, &before, "before"), (&before, &adopted, "across the restart"), (&adopted, &end, "after")]
    {
        for r in &earlier.reasons {
            let now = later.counted(&r.direction, &r.reason).0;
            assert!(now >= r.packets, "{} {} went back {when}: {} -> {now}", r.direction, r.reason, r.packets);
        }
    }
    assert!(before.dropped("egress") > start.dropped("egress"), "drops before the crash: {before:#?}");
    assert!(end.dropped("egress") > adopted.dropped("egress"), "drops after the restart: {end:#?}");
    assert_eq!(
        end.dropped("egress") - start.dropped("egress"),
        attempts,
        "every denied datagram counted exactly once: {end:#?}"
    );
}

/// Polls `fw status --json` until `done` holds, at most `limit`.
fn status_until(fw: &Fw, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let status = fw.status_json();
        if done(&status) || start.elapsed() > limit {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CONFIRM_SECS: &str = "3";

/// `fw switch runtime --confirm 3` (asserting it applied) from install.
fn switch_awaiting_confirmation(ov: &Ov, fw: &Fw) -> u64 {
    assert!(ov.dns_works(false) && ov.dns_works(true), "install: DNS works");
    let generation = fw.status_json()["generation"].as_u64().expect("generation");
    let out = fw.cli(&["switch", "runtime", "--confirm", CONFIRM_SECS]);
    assert_ok(&out, "fw switch --confirm");
    let status = fw.status_json();
    assert_eq!(status["phase"], "runtime", "{status}");
    assert_eq!(status["pending_confirm"]["rollback_to"], "install", "{status}");
    assert!(!ov.dns_works(false) && !ov.dns_works(true), "runtime: DNS is closed");
    generation
}

fn assert_rolled_back(ov: &Ov, fw: &Fw, generation: u64) {
    let status = status_until(fw, Duration::from_secs(8), |s| s["phase"] == "install");
    assert_eq!(status["phase"], "install", "no rollback within 8 s: {status}\n{}", fw.log_text());
    assert!(status["pending_confirm"].is_null(), "{status}");
    assert_eq!(status["generation"].as_u64(), Some(generation), "{status}");
    assert_eq!(status["enforcing"], true, "{status}");
    assert!(ov.dns_works(false) && ov.dns_works(true), "rolled back: DNS works again");
}

#[test]
fn operate_an_unconfirmed_switch_rolls_back_by_itself() {
    let ov = Ov::new(23);
    let fw = ov.start_fw("install");
    let generation = switch_awaiting_confirmation(&ov, &fw);
    assert_rolled_back(&ov, &fw, generation);
    // fw status shows the rollback from its commit point (the kernel's
    // active generation); the daemon logs it once it has recorded it.
    assert!(fw.log_has_within("rolled back", Duration::from_secs(5)), "{}", fw.log_text());
}

#[test]
fn operate_a_confirmed_switch_stays() {
    let ov = Ov::new(24);
    let fw = ov.start_fw("install");
    switch_awaiting_confirmation(&ov, &fw);
    assert_ok(&fw.cli(&["confirm"]), "fw confirm");
    // The rollback would come 3 s after the switch, within a second of the
    // daemon's tick: look until well past that.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = status_until(&fw, Duration::from_secs(5), |s| s["phase"] != "runtime");
    assert!(Instant::now() >= deadline, "the phase changed after fw confirm: {status}");
    assert_eq!(status["phase"], "runtime", "{status}");
    assert!(status["pending_confirm"].is_null(), "{status}");
    assert!(!ov.dns_works(false) && !ov.dns_works(true), "confirmed runtime: DNS stays closed");
}

#[test]
fn operate_a_rollback_survives_a_daemon_restart() {
    let ov = Ov::new(25);
    let mut fw = ov.start_fw("install");
    let generation = switch_awaiting_confirmation(&ov, &fw);
    fw.restart();
    assert_eq!(fw.status_json()["pending_confirm"]["rollback_to"], "install");
    assert_rolled_back(&ov, &fw, generation);
}

/// The verdicts of an instance in `install`: DNS passes, a port nothing
/// allows does not.
fn assert_install_verdicts(ov: &Ov, when: &str) {
    for v6 in [false, true] {
        assert!(ov.dns_works(v6), "{when}: DNS (v6 {v6}) must still work");
        let (addr, echo) = ov.internet_service(Tcp, DENIED_PORT, v6);
        let got = in_netns(&ov.pair.near, || tcp_echo(addr, DROP_TIMEOUT));
        assert_eq!(got, Outcome::TimedOut, "{when}: {addr} must still be denied");
        assert_eq!(echo.received(), 0, "{when}");
    }
}

/// Bad input changes nothing: a switch to an unknown phase, a switch to a
/// broken policy file, a second `fw run` with another policy for the same
/// name (with the first daemon alive, then dead). Each fails with one line
/// on stderr; the instance keeps its generation, phase and verdicts.
#[test]
fn operate_bad_input_changes_nothing() {
    let ov = Ov::new(26);
    let mut fw = ov.start_fw("install");
    let status = fw.status_json();
    let unchanged = |fw: &Fw, when: &str| {
        let now = fw.status_json();
        for key in ["generation", "phase", "policy", "enforcing"] {
            assert_eq!(now[key], status[key], "{when}: {key} changed: {now}");
        }
        assert_install_verdicts(&ov, when);
    };
    unchanged(&fw, "at start");

    let out = fw.cli(&["switch", "no-such-phase"]);
    let line = out.one_line_error();
    assert!(line.contains("no-such-phase"), "the error must name the phase: {line}");
    unchanged(&fw, "after a switch to an unknown phase");

    let broken = ov.dir.write(
        "broken.yaml",
        "name: broken\nphases:\n  runtime:\n    egress:\n      - { name: x, to: [198.18.0.0/15, proto: tcp\n",
    );
    let out = fw.cli(&["switch", "runtime", "--policy", broken.to_str().expect("utf-8 path")]);
    let line = out.one_line_error();
    assert!(line.contains("broken.yaml"), "the error must name the file: {line}");
    unchanged(&fw, "after a switch to a broken policy");

    let other = ov.dir.write("other.yaml", "name: other\nphases:\n  install:\n    egress_default: allow\n");
    let second = |fw: &Fw, when: &str| {
        let mut args: Vec<&OsStr> = fw.run_args().iter().map(|a| a.as_os_str()).collect();
        let at = args.iter().position(|a| *a == "--policy").expect("--policy") + 1;
        args[at] = other.as_os_str();
        let mut cmd = ov.pair.near.command(harness::fw::FW);
        cmd.args(args);
        let out = harness::fw::run_bounded(cmd, Duration::from_secs(30));
        let line = out.one_line_error().to_string();
        assert!(line.contains(fw.name()), "{when}: the error must name the instance: {line}");
        line
    };
    let pid = fw.pid();
    second(&fw, "daemon alive");
    assert_eq!(fw.status_json()["daemon_pid"].as_u64(), Some(u64::from(pid)));
    unchanged(&fw, "after a second fw run (daemon alive)");

    fw.kill_run_process();
    let line = second(&fw, "daemon dead");
    assert!(line.contains("openvidu-ce"), "the error must say what runs: {line}");
    unchanged(&fw, "after a second fw run (daemon dead)");
    fw.start_again();
    unchanged(&fw, "after the right fw run adopted it");
}

/// The control socket is root's alone (0600 in a 0700 directory), and a
/// non-root caller gets a clear one-line error from every command.
#[test]
fn operate_the_control_socket_is_root_only() {
    let ov = Ov::new(27);
    let fw = ov.start_fw("install");
    let socket = PathBuf::from(format!("/run/fw/{}.sock", fw.name()));
    let meta = std::fs::metadata(&socket).unwrap_or_else(|e| panic!("{}: {e}", socket.display()));
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", socket.display());
    assert_eq!(meta.uid(), 0);
    let dir = std::fs::metadata("/run/fw").expect("/run/fw");
    assert_eq!(dir.permissions().mode() & 0o077, 0, "/run/fw must be root-only");

    // A process of uid 65534 cannot even reach the socket. A raw
    // setresuid() changes the credentials of this one thread only.
    let denied = std::thread::spawn(move || {
        // SAFETY: a syscall on this thread's own credentials.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        std::os::unix::net::UnixStream::connect(&socket).map(|_| ())
    })
    .join()
    .expect("unprivileged thread");
    assert_eq!(
        denied.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::PermissionDenied),
        "uid 65534 must not connect to the control socket"
    );

    for args in [vec!["status"], vec!["drops", "--json"], vec!["switch", "runtime"], vec!["confirm"], vec!["stop"]] {
        let mut cmd = ov.pair.near.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", harness::fw::FW])
            .args(&args)
            .args(["--name", fw.name()]);
        let out = harness::fw::run_bounded(cmd, Duration::from_secs(30));
        let line = out.one_line_error();
        assert!(line.contains("root"), "fw {args:?} as uid 65534 must say it needs root: {line}");
    }
    assert_eq!(fw.status_json()["phase"], "install", "nothing changed");
    assert_eq!(fw.status_json()["enforcing"], true);
}

/// A generated 100,000-rule phase (dense /32s and /24s, single ports and
/// ranges straddling prefix boundaries, one deny in seven), compiled first
/// with `fw check`, then switched to on a running instance. Prints the time
/// `fw switch` reports; not a timed assertion. The verdicts prove it is the
/// policy in force.
#[test]
fn operate_switch_to_a_100k_rule_policy() {
    const RULES: usize = 100_000;
    let ov = Ov::new(28);
    let (dns4, _) = ov.internet_service(Udp, 53, false);
    let (dns6, _) = ov.internet_service(Udp, 53, true);
    let mut yaml = format!(
        "name: scale\nphases:\n  small:\n    egress:\n      \
         - {{ name: small-dns, to: [{}, \"{}\"], proto: udp, ports: [53] }}\n  big:\n    egress:\n      \
         - {{ name: dns, to: [{}, \"{}\"], proto: udp, ports: [53] }}\n",
        dns4.ip(),
        dns6.ip(),
        dns4.ip(),
        dns6.ip()
    );
    for i in 0..RULES - 1 {
        // /32s in 198.19.0.0/16, every 400th rule a /24 of 198.19.0.0/16;
        // single ports and ranges that straddle prefix boundaries.
        let cidr = if i % 400 == 0 {
            format!("198.19.{}.0/24", (i / 400) % 256)
        } else {
            format!("198.19.{}.{}", (i >> 8) & 0xff, i & 0xff)
        };
        let lo = 1000 + (i % 50_000);
        let ports = if i % 2 == 0 { lo.to_string() } else { format!("\"{lo}-{}\"", lo + 37) };
        let action = if i % 7 == 0 { ", action: deny" } else { "" };
        let _ = writeln!(yaml, "      - {{ name: r{i}, to: [\"{cidr}\"], proto: tcp, ports: [{ports}]{action} }}");
    }
    let policy = ov.dir.write("scale.yaml", &yaml);
    let policy_arg = policy.to_str().expect("utf-8 path");

    // Compiled first, to be sure it fits the maps: `fw explain` against
    // the file compiles the phase and checks its capacity like a switch
    // does (`fw check` is checked last, below).
    let started = Instant::now();
    let probe = format!("{dns4}/udp");
    let compiled = fw(&ov.pair.near, &["explain", &probe, "--policy", policy_arg, "--phase", "big", "--json"]);
    assert_ok(&compiled, "compiling the 100k-rule phase (fw explain --policy)");
    let verdict: serde_json::Value = serde_json::from_str(&compiled.stdout).expect("explain --json");
    assert_eq!(verdict["verdict"], "allow", "{verdict}");
    println!("100k rules: compiled and fits the maps (fw explain) in {:?}", started.elapsed());

    let instance = Fw::start(&ov.pair.near, &ov.pair.near_if, &policy, "small");
    let started = Instant::now();
    let out = instance.cli(&["switch", "big"]);
    let wall = started.elapsed();
    assert_ok(&out, "fw switch big");
    println!(
        "100k rules: fw switch reports {} ms (wall clock of the command {wall:?}): {}",
        switch_ms(&out),
        out.stdout.lines().next().unwrap_or_default()
    );
    let status = instance.status_json();
    assert_eq!(status["phase"], "big", "{status}");
    assert!(status["entries"]["ports"].as_u64().unwrap_or(0) > RULES as u64, "{status}");
    assert!(ov.dns_works(false) && ov.dns_works(true), "the big phase allows DNS");
    let drops: Drops = instance.drops();
    assert!(drops.rule("dns").packets >= 2, "{drops:#?}");
    let (denied, _) = ov.internet_service(Tcp, DENIED_PORT, false);
    assert_eq!(in_netns(&ov.pair.near, || tcp_echo(denied, DROP_TIMEOUT)), Outcome::TimedOut);

    // `fw check` of the same file compiles the same tables (about a second)
    // and adds the warnings: it must finish in the 30 s every fw command
    // gets here.
    let started = Instant::now();
    let check = fw(&ov.pair.near, &["check", policy_arg, "--phase", "big"]);
    assert!(check.status.code().is_some_and(|c| c < 2), "fw check of the 100k-rule policy: {}", check.stderr);
    println!("100k rules: fw check took {:?}", started.elapsed());
}
