//! Finding 2: pins must live in the host's bpffs. A bpffs mounted in
//! another mount namespace dies with it, and the pinned links with it: the
//! interface would be unfiltered after `fw` exits while it said "fail
//! closed". `fw run` refuses there in one line, creating nothing; the host's
//! bpffs seen from another mount namespace (inherited, or bind-mounted into
//! a container) keeps working, and its pins outlive that namespace.

use std::{ffi::CString, net::SocketAddr, path::Path, process::Command, time::Duration};

use crate::harness::{
    self,
    fw::{pin_dir, remove_leftovers, run_args, run_bounded, Finished, Fw, Launch, FW},
    netns::VethPair,
    traffic::{in_netns, tcp_echo, udp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    unique_name, TempDir,
};

const POLICY: &str = r#"name: bpffs
phases:
  test:
    egress:
      - { name: allow-tcp, to: [198.18.0.2, "2001:db8::2"], proto: tcp, ports: [8080] }
"#;

const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// The host's bpffs at /sys/fs/bpf, as `cargo xtask test` sets it up: the
/// other mount namespaces of these tests are copies of this one, so it must
/// be there before they are made. (This process runs in the host's mount
/// namespace.)
fn host_bpffs() {
    let path = CString::new("/sys/fs/bpf").unwrap();
    // SAFETY: statfs is plain old data; `path` is NUL-terminated.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(path.as_ptr(), &mut buf) }, 0, "statfs /sys/fs/bpf");
    if buf.f_type as u32 != BPF_FS_MAGIC {
        let out = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).output().unwrap();
        assert!(out.status.success(), "mounting the host's bpffs: {out:?}");
    }
}

/// Runs `cmd`, an `fw run` of instance `name` that must fail, bounded (an
/// `fw run` that starts enforcing is killed and the test fails), and checks
/// that it left nothing in the host's view: no pins, no state, no socket.
fn refused_leaving_nothing(name: &str, cmd: Command) -> Finished {
    let out = run_bounded(cmd, Duration::from_secs(30));
    let leftovers: Vec<String> = [
        pin_dir(name),
        Path::new("/run/fw").join(format!("{name}.json")),
        Path::new("/run/fw").join(format!("{name}.sock")),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .map(|p| p.display().to_string())
    .collect();
    remove_leftovers(name);
    assert!(leftovers.is_empty(), "a refused fw run left {leftovers:?}: {out:#?}");
    out
}

#[test]
fn finding2_a_private_bpffs_is_refused_in_one_line() {
    harness::setup();
    host_bpffs();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    let name = unique_name();
    // A mount namespace of its own with a fresh bpffs: the pins would
    // vanish with it when fw exits.
    let mut cmd = pair.near.command("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", r#"mount -t bpf bpf /sys/fs/bpf && exec "$0" "$@""#])
        .arg(FW)
        .args(run_args(&pair.near_if, &policy, "test", &name));
    let out = refused_leaving_nothing(&name, cmd);
    let line = out.one_line_error();
    assert!(
        line.starts_with("fw: /sys/fs/bpf in this mount namespace is not the host's bpffs: pins would vanish when fw exits (fail open). ")
            && line.contains("nsenter --net=/run/netns/NS")
            && line.contains("bind-mount the host's /sys/fs/bpf"),
        "{line}"
    );
}

#[test]
fn finding2_ip_netns_exec_is_refused_and_nothing_is_mounted() {
    harness::setup();
    host_bpffs();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    let name = unique_name();
    // `ip netns exec` remounts /sys in a mount namespace of its own: no
    // bpffs there, and fw must not mount one.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", pair.near.name(), FW]).args(run_args(&pair.near_if, &policy, "test", &name));
    let out = refused_leaving_nothing(&name, cmd);
    let line = out.one_line_error();
    assert!(
        line.starts_with("fw: no bpffs at /sys/fs/bpf in this mount namespace, and one mounted here would vanish")
            && line.contains("not ip netns exec"),
        "{line}"
    );
}

#[test]
fn finding2_the_hosts_bpffs_seen_from_another_mount_namespace_outlives_it() {
    harness::setup();
    host_bpffs();
    let pair = VethPair::new(0);
    let dir = TempDir::new();
    let policy = dir.write("policy.yaml", POLICY);
    // `unshare -m --propagation slave`: another mount namespace, whose
    // /sys/fs/bpf is the host's bpffs (as a container's bind-mount is).
    let mut fw = Fw::start_launch(
        &pair.near,
        &pair.near_if,
        &policy,
        "test",
        Launch { wrapper: &["unshare", "-m", "--propagation", "slave"], ..Launch::default() },
    );
    assert!(pin_dir(fw.name()).exists(), "the pins must be in the host's bpffs");
    // The process and its mount namespace end; the pins, the links and
    // the enforcement stay.
    fw.kill_run_process();
    assert!(pin_dir(fw.name()).exists(), "the pins vanished with the mount namespace");
    let status = fw.status();
    assert!(status.status.success(), "the instance must still enforce after its namespace ended: {status:#?}");
    // And the kernel still filters: the allowed flow passes, another is
    // dropped.
    let allowed = SocketAddr::new(pair.far4.into(), 8080);
    let denied = SocketAddr::new(pair.far4.into(), 9000);
    let (_tcp, udp) = (Echo::tcp(&pair.far, allowed), Echo::udp(&pair.far, denied));
    let (tcp_outcome, udp_outcome) =
        in_netns(&pair.near, || (tcp_echo(allowed, PASS_TIMEOUT), udp_echo(denied, DROP_TIMEOUT)));
    assert_eq!(tcp_outcome, Outcome::Echoed);
    assert_eq!(udp_outcome, Outcome::TimedOut);
    assert_eq!(udp.received(), 0, "a datagram the policy denies reached the far end");
    fw.stop();
}
