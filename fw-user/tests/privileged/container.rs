//! The image under podman (issue 17), in network namespaces the tests made
//! (`--network ns:/run/netns/NAME`, never the host's): it enforces on the
//! test's veth; `podman kill` leaves enforcement attached; a new container
//! adopts the instance with no gap; `podman stop` + `fw stop` in a
//! container removes it. The capabilities it needs, measured by dropping
//! each. And three "nodes" (an OpenVidu Pro master, two media nodes) from
//! the same image and the same shipped policies, with their own env files.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use crate::harness::{
    self,
    container::{image, podman, run_flags, Container, CAPS},
    fw::pin_dir,
    netns::{address, veth, Netns, VethPair},
    stream::Pacer,
    traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    unique_name, TempDir,
};

const ALLOWED: u16 = 8080;
const DENIED: u16 = 8081;
const DENIED_UDP: u16 = 9100;

fn tcp(ns: &Netns, to: SocketAddr, timeout: Duration) -> Outcome {
    in_netns(ns, || tcp_echo(to, timeout))
}

fn passes(ns: &Netns, to: SocketAddr) {
    assert_eq!(tcp(ns, to, PASS_TIMEOUT), Outcome::Echoed, "{to} from {} should pass", ns.name());
}

fn dropped(ns: &Netns, to: SocketAddr) {
    assert_eq!(tcp(ns, to, DROP_TIMEOUT), Outcome::TimedOut, "{to} from {} should be dropped", ns.name());
}

#[test]
fn container_enforces_survives_podman_kill_is_adopted_without_a_gap_and_stops() {
    harness::setup();
    let pair = VethPair::new(0);
    let far = |port| SocketAddr::new(pair.far4.into(), port);
    let _servers = [Echo::tcp(&pair.far, far(ALLOWED)), Echo::tcp(&pair.far, far(DENIED))];
    let denied_udp = Echo::udp(&pair.far, far(DENIED_UDP));
    let dir = TempDir::new();
    dir.write(
        "policy.yaml",
        &format!(
            "name: container\nphases:\n  runtime:\n    egress:\n      - {{ name: allowed, to: [{}], proto: tcp, ports: [{ALLOWED}] }}\n",
            pair.far4
        ),
    );
    let instance = unique_name();
    let mut c = Container::launch(
        &pair.near,
        &pair.near_if,
        &instance,
        &[(dir.path(), "/etc/fw/site")],
        &["--policy", "/etc/fw/site/policy.yaml", "--phase", "runtime"],
    );
    c.wait_enforcing();
    passes(&pair.near, far(ALLOWED));
    dropped(&pair.near, far(DENIED));
    // The host's bpffs, verified (host PID + SYS_PTRACE): no "cannot verify".
    assert!(!c.logs().contains("cannot verify"), "{}", c.logs());
    // The image's HEALTHCHECK (`fw status`, the instance named by FW_NAME
    // among all the host's) reports healthy.
    let health = podman(&["healthcheck", "run", &c.name]);
    assert!(health.status.success(), "podman healthcheck run: {health:#?}\n{}", c.logs());

    let (_, before) = c.status();
    // A datagram every 2 ms to a denied port, from before the kill until the
    // new container has adopted: not one may arrive.
    let pacer = Pacer::start(&pair.near, far(DENIED_UDP), Duration::from_millis(2), 30_000);

    let killed = podman(&["kill", &c.name]);
    assert!(killed.status.success(), "{killed:#?}");
    podman(&["wait", &c.name]);
    assert!(!c.running());
    let (code, after_kill) = c.status();
    assert_eq!(code, Some(0), "not enforcing after podman kill: {after_kill}");
    assert!(after_kill["daemon_pid"].is_null(), "{after_kill}");
    dropped(&pair.near, far(DENIED));
    passes(&pair.near, far(ALLOWED));

    c.relaunch();
    c.wait_enforcing();
    assert!(c.log_has_within("adopted the pinned enforcer", Duration::from_secs(5)), "{}", c.logs());
    let (_, adopted) = c.status();
    let sent = pacer.finish();
    assert!(sent > 0);
    assert_eq!(denied_udp.received(), 0, "{sent} datagrams to a denied port, some got through during the restart");
    // The same links, programs and generation: nothing was detached or reloaded.
    for key in ["links", "generation", "phase"] {
        assert_eq!(adopted[key], before[key], "{key} changed across the adoption");
    }
    dropped(&pair.near, far(DENIED));

    // podman stop: SIGTERM, fw exits, enforcement stays.
    let stopped = podman(&["stop", "-t", "10", &c.name]);
    assert!(stopped.status.success(), "{stopped:#?}");
    assert!(c.logs().contains("enforcement stays attached"), "{}", c.logs());
    assert_eq!(c.status().0, Some(0));
    dropped(&pair.near, far(DENIED));

    // `fw stop` in a container of the same image removes it.
    let out = c.fw_in_container(&["stop", "--name", &instance]);
    assert!(out.status.success(), "fw stop in a container: {out:#?}");
    assert_ne!(c.status().0, Some(0), "still enforcing after fw stop");
    assert!(!pin_dir(&instance).exists(), "pins left after fw stop");
    passes(&pair.near, far(DENIED));
}

/// Found by the whole suite: with other instances on the host (they share
/// /sys/fs/bpf/fw and /run/fw), the image's HEALTHCHECK, a bare `fw
/// status`, could not pick one and said "unhealthy". The container names
/// its instance once, in FW_NAME, for `fw run` and `fw status` alike.
#[test]
fn finding_healthcheck_names_its_instance_among_several() {
    harness::setup();
    let pair = VethPair::new(0);
    let other = VethPair::new(1);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", "name: other\nphases:\n  test:\n    egress: []\n");
    // Another instance on the host, whatever the rest of the suite runs.
    let _other = crate::harness::fw::Fw::start(&other.near, &other.near_if, &policy, "test");
    let c = Container::launch(&pair.near, &pair.near_if, &unique_name(), &[], &["--policy", "openvidu-ce"]);
    c.wait_enforcing();
    let health = podman(&["healthcheck", "run", &c.name]);
    assert!(health.status.success(), "podman healthcheck run with two instances on the host: {health:#?}");
}

#[test]
fn container_watch_reloads_an_edit_of_the_mounted_policy_directory() {
    harness::setup();
    let pair = VethPair::new(0);
    let far = |port| SocketAddr::new(pair.far4.into(), port);
    let _servers = [Echo::tcp(&pair.far, far(ALLOWED)), Echo::tcp(&pair.far, far(DENIED))];
    let dir = TempDir::new();
    let policy = |port: u16| {
        format!(
            "name: container\nphases:\n  runtime:\n    egress:\n      - {{ name: allowed, to: [{}], proto: tcp, ports: [{port}] }}\n",
            pair.far4
        )
    };
    let file = dir.write("policy.yaml", &policy(ALLOWED));
    let c = Container::launch(
        &pair.near,
        &pair.near_if,
        &unique_name(),
        &[(dir.path(), "/etc/fw/site")],
        &["--policy", "/etc/fw/site/policy.yaml", "--phase", "runtime", "--watch"],
    );
    c.wait_enforcing();
    dropped(&pair.near, far(DENIED));
    let before = c.status().1["generation"].clone();

    // Saved on the host the way editors save: a new file renamed over.
    let tmp = dir.write("policy.yaml.new", &policy(DENIED));
    std::fs::rename(tmp, &file).unwrap();
    let start = std::time::Instant::now();
    while c.status().1["generation"] == before {
        assert!(start.elapsed() < Duration::from_secs(2), "no reload within 2 s of the edit:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    passes(&pair.near, far(DENIED));
    dropped(&pair.near, far(ALLOWED));
    assert!(c.logs().contains("changed: reloaded phase runtime"), "{}", c.logs());
}

#[test]
fn container_needs_bpf_net_admin_and_perfmon_and_fails_closed_without_one() {
    harness::setup();
    let pair = VethPair::new(0);
    for missing in ["BPF", "NET_ADMIN", "PERFMON"] {
        let caps: Vec<&str> = CAPS.iter().copied().filter(|c| *c != missing).collect();
        let (name, instance) = (unique_name(), unique_name());
        let mut args: Vec<String> = run_flags(&name, &pair.near, &caps, &[]);
        args.insert(1, "--rm".into());
        args.push(image());
        args.extend(
            ["run", "--iface", &pair.near_if, "--name", &instance, "--cgroup", "none", "--policy", "openvidu-ce"]
                .map(String::from),
        );
        let out = podman(&args.iter().map(String::as_str).collect::<Vec<_>>());
        harness::fw::remove_leftovers(&instance);
        assert!(!out.status.success(), "fw started without CAP_{missing}: {out:#?}");
        assert!(out.stderr.contains("Operation not permitted") || out.stderr.contains("Permission denied"), "{out:#?}");
        assert!(!pin_dir(&instance).exists(), "a failed start without CAP_{missing} left pins");
        eprintln!("without CAP_{missing}: {}", out.stderr.lines().rfind(|l| l.starts_with("fw:")).unwrap_or(""));
    }
}

/// A LAN of four namespaces on one bridge: the master, two media nodes and
/// a host outside the deployment.
struct Lan {
    nodes: Vec<(Netns, String, Ipv4Addr)>,
    _bridge: Netns,
}

impl Lan {
    fn new(names: &[&str]) -> Self {
        let base = unique_name();
        let bridge = Netns::new(format!("{base}-lan"));
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::new(format!("{base}-{name}"));
            let (node_if, port) = veth(&ns, &bridge);
            bridge.ip(&["link", "set", &port, "master", "br0"]);
            bridge.ip(&["link", "set", &port, "up"]);
            let v4 = Ipv4Addr::new(198, 18, 50, i as u8 + 1);
            address(&ns, &node_if, v4, format!("2001:db8:50::{}", i + 1).parse().unwrap());
            ns.wait_link_up(&node_if);
            nodes.push((ns, node_if, v4));
        }
        Lan { nodes, _bridge: bridge }
    }
}

#[test]
fn three_nodes_from_one_image_master_and_media_flows_pass_everything_else_drops() {
    harness::setup();
    // 198.18.50.1 master, .2 and .3 media nodes, .4 outside.
    let lan = Lan::new(&["master", "media1", "media2", "outside"]);
    let [(master, master_if, m), (media1, media1_if, n1), (media2, media2_if, n2), (outside, _, o)] =
        lan.nodes.as_slice()
    else {
        unreachable!()
    };
    let at = |ip: &Ipv4Addr, port| SocketAddr::new(IpAddr::V4(*ip), port);
    // Node-specific env files; the policies are the image's copies of the
    // shipped ones, as they are.
    let dir = TempDir::new();
    // OpenVidu 2.x names the media nodes in the master's .env, a list.
    dir.write("master.env", &format!("KMS_URIS=[\"ws://{n1}:8888/kurento\",\"ws://{n2}:8888/kurento\"]\n"));
    dir.write("media1.env", &format!("MASTER_NODE={m}\n"));
    dir.write("media2.env", &format!("MASTER_NODE={m}\n"));

    // What listens where: the master's HTTPS, beats (5044, 9200), TURN and
    // relay range; the media nodes' controller, KMS and media range; an
    // outside web server.
    let mut servers = Vec::new();
    for port in [443, 3000, 5044, 9200, 40000] {
        servers.push(Echo::tcp(master, at(m, port)));
    }
    servers.push(Echo::udp(master, at(m, 3478)));
    servers.push(Echo::udp(master, at(m, 40000)));
    for (node, ip) in [(media1, n1), (media2, n2)] {
        for port in [22, 3000, 8888, 40000] {
            servers.push(Echo::tcp(node, at(ip, port)));
        }
    }
    servers.push(Echo::tcp(outside, at(o, 443)));

    let node = |ns, iface: &str, policy: &str, env: &str| {
        Container::launch(
            ns,
            iface,
            &unique_name(),
            &[(dir.path(), "/etc/fw/site")],
            &["--policy", policy, "--env-file", env, "--phase", "runtime"],
        )
    };
    let nodes = [
        node(master, master_if, "/etc/fw/openvidu-pro-master.yaml", "/etc/fw/site/master.env"),
        node(media1, media1_if, "/etc/fw/openvidu-media-node.yaml", "/etc/fw/site/media1.env"),
        node(media2, media2_if, "/etc/fw/openvidu-media-node.yaml", "/etc/fw/site/media2.env"),
    ];
    for n in &nodes {
        n.wait_enforcing();
    }

    // Master -> media nodes: the controller, KMS, the relay range.
    for ip in [n1, n2] {
        for port in [3000, 8888, 40000] {
            passes(master, at(ip, port));
        }
    }
    // Media nodes -> master: beats (filebeat 5044, metricbeat 9200), TURN,
    // the relay range.
    for node in [media1, media2] {
        passes(node, at(m, 5044));
        passes(node, at(m, 9200));
        assert_eq!(in_netns(node, || udp_echo(at(m, 3478), PASS_TIMEOUT)), Outcome::Echoed);
        assert_eq!(in_netns(node, || udp_echo(at(m, 40000), PASS_TIMEOUT)), Outcome::Echoed);
    }

    // Everything else drops.
    dropped(master, at(n1, 22)); // master egress: only 3000, 8888, relay
    dropped(master, at(o, 443)); // master egress: nothing outside
    dropped(media1, at(n2, 3000)); // media egress: only the master
    dropped(media2, at(n1, 8888));
    dropped(media1, at(m, 3000)); // media egress to the master: beats, 3478, relay only
    dropped(media1, at(m, 443));
    dropped(media1, at(o, 443)); // nothing outside
    dropped(outside, at(n1, 3000)); // media inbound 3000/8888: the master only
    dropped(outside, at(n2, 8888));
    dropped(outside, at(m, 9200)); // master inbound 5044/9200: the media nodes only
    dropped(outside, at(m, 3000)); // the master filters inbound too
                                   // The outside host itself reaches what media nodes serve to anyone.
    passes(outside, at(n1, 40000));
    drop(servers);
}

/// The image is what `cargo xtask image` says: FROM scratch, fw static.
#[test]
fn the_image_holds_fw_and_the_shipped_policies_and_nothing_else() {
    harness::setup();
    let image = image();
    let out = podman(&["image", "inspect", &image]);
    assert!(out.status.success(), "{out:#?}");
    let inspect: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let inspect = &inspect[0];
    assert_eq!(inspect["Config"]["Entrypoint"], serde_json::json!(["/usr/local/bin/fw"]), "{inspect}");
    assert_eq!(
        inspect["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/fw", "status"]),
        "the HEALTHCHECK is `fw status` (docker format keeps it): {inspect}"
    );
    let version = image.rsplit(':').next().unwrap();
    assert_eq!(inspect["Labels"]["org.opencontainers.image.version"], version, "tagged with its version");
    // Only two layers' worth of files: the binary and the policies.
    let name = unique_name();
    let created = podman(&["create", "--name", &name, &image]);
    assert!(created.status.success(), "{created:#?}");
    let mount = podman(&["mount", &name]);
    let root = mount.stdout.trim().to_string();
    let mut files = Vec::new();
    collect(Path::new(&root), Path::new(&root), &mut files);
    podman(&["umount", &name]);
    podman(&["rm", "-f", &name]);
    files.sort();
    let shipped: Vec<String> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .unwrap()
        .map(|e| format!("/etc/fw/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    for policy in &shipped {
        assert!(files.contains(policy), "{policy} missing from the image: {files:?}");
    }
    assert!(files.contains(&"/usr/local/bin/fw".to_string()), "{files:?}");
    assert_eq!(files.len(), shipped.len() + 1, "unexpected files in the image: {files:?}");
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            collect(root, &path, out);
        } else {
            out.push(format!("/{}", path.strip_prefix(root).unwrap().display()));
        }
    }
}
