//! The fw image (`cargo xtask image`, named by `$FW_IMAGE`) under podman,
//! in a network namespace a test made: `--network ns:/run/netns/NAME`, never
//! the host's network. A guard removes the container and what the instance
//! left, even when the test fails.
//!
//! The flags are the documented ones (docs/deploy.md) with two additions
//! this machine needs and a production host does not: `--runtime runc`
//! (Debian 12's crun refuses the hybrid cgroup layout here) and explicit
//! `--ulimit`s no higher than this process's own (podman raises RLIMIT_NOFILE
//! and RLIMIT_NPROC by default, which needs CAP_SYS_RESOURCE, absent here).
//! Seccomp: podman 4.3's default profile allows bpf(2) only with
//! CAP_SYS_ADMIN, so the capabilities fw needs come with
//! `seccomp=unconfined` rather than with SYS_ADMIN (measured; see
//! `container.rs`).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::{
    fw::{fw, remove_leftovers, run_bounded, Finished, FW},
    netns::Netns,
    unique_name,
};

/// The capabilities fw needs in a container (measured: each one dropped
/// makes the start fail; SYS_PTRACE only lets fw verify the bpffs).
pub const CAPS: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_PTRACE"];

/// The image under test.
pub fn image() -> String {
    std::env::var("FW_IMAGE").unwrap_or_else(|_| {
        panic!(
            "FW_IMAGE is not set: the container tests run the image `cargo xtask image` builds \
             (`cargo xtask test` builds it and sets FW_IMAGE=localhost/fw:VERSION)"
        )
    })
}

/// `(soft = hard)` of this process's RLIMIT_NOFILE and RLIMIT_NPROC, the
/// latter capped where podman caps its own (32768).
fn ulimits() -> [String; 2] {
    let hard = |resource| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit.
        assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
        limit.rlim_max
    };
    let nofile = hard(libc::RLIMIT_NOFILE).min(1 << 20);
    let nproc = hard(libc::RLIMIT_NPROC).min(32768);
    [format!("nofile={nofile}:{nofile}"), format!("nproc={nproc}:{nproc}")]
}

/// `podman ARGS`, bounded to 60 s.
pub fn podman(args: &[&str]) -> Finished {
    let mut cmd = Command::new("podman");
    cmd.arg("--runtime").arg("runc").args(args);
    run_bounded(cmd, Duration::from_secs(60))
}

/// The `podman run` arguments of an fw container in `ns`, before the image:
/// host PID and cgroup namespaces, the host's bpffs, /run/fw and
/// /var/lib/fw, `caps` only, and `mounts` (host dir, container dir) read-only.
pub fn run_flags(container: &str, ns: &Netns, caps: &[&str], mounts: &[(&Path, &str)]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "run",
        "--name",
        container,
        "--network",
        &format!("ns:{}", ns.path().display()),
        "--pid",
        "host",
        "--cgroupns",
        "host",
        "--security-opt",
        "seccomp=unconfined",
        "--cap-drop",
        "all",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf:rslave",
        "-v",
        "/run/fw:/run/fw",
        "-v",
        "/var/lib/fw:/var/lib/fw",
    ]
    .map(String::from)
    .into();
    for limit in ulimits() {
        flags.extend(["--ulimit".into(), limit]);
    }
    for cap in caps {
        flags.extend(["--cap-add".into(), (*cap).into()]);
    }
    for (host, inside) in mounts {
        flags.extend(["-v".into(), format!("{}:{inside}:ro", host.display())]);
    }
    flags
}

/// One `fw run` container in the background, and the instance it runs:
/// removed on drop (container, then `fw stop`, then leftovers).
pub struct Container<'ns> {
    pub name: String,
    pub instance: String,
    ns: &'ns Netns,
    flags: Vec<String>,
    run_args: Vec<String>,
}

impl<'ns> Container<'ns> {
    /// `podman run -d --env FW_NAME=INSTANCE` of `fw run --iface IFACE
    /// --cgroup none RUN_ARGS` with [`CAPS`]; does not wait for anything.
    pub fn launch(ns: &'ns Netns, iface: &str, instance: &str, mounts: &[(&Path, &str)], run_args: &[&str]) -> Self {
        let name = unique_name();
        std::fs::create_dir_all("/run/fw").unwrap();
        std::fs::create_dir_all("/var/lib/fw").unwrap();
        // The instance is named by FW_NAME, as docs/deploy.md says: for
        // `fw run` and for the image's HEALTHCHECK (`fw status`) alike.
        let mut flags = run_flags(&name, ns, &CAPS, mounts);
        flags.extend(["--env".into(), format!("FW_NAME={instance}")]);
        let mut args: Vec<String> =
            ["run", "--iface", iface, "--cgroup", "none", "--interval", "1"].map(String::from).into();
        args.extend(run_args.iter().map(|a| a.to_string()));
        let mut c = Container { name, instance: instance.to_string(), ns, flags, run_args: args };
        c.start();
        c
    }

    fn start(&mut self) {
        let mut args: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        args.insert(1, "-d");
        let image = image();
        args.push(&image);
        args.extend(self.run_args.iter().map(String::as_str));
        let out = podman(&args);
        assert!(out.status.success(), "podman run failed: {out:#?}");
    }

    /// A new container (new name) with the same flags and `fw run` arguments.
    pub fn relaunch(&mut self) {
        podman(&["rm", "-f", &self.name]);
        self.name = unique_name();
        if let Some(i) = self.flags.iter().position(|f| f == "--name") {
            self.flags[i + 1] = self.name.clone();
        }
        self.start();
    }

    /// The host PID of the container's process (fw: it is the entrypoint).
    pub fn pid(&self) -> Option<u64> {
        let out = podman(&["inspect", "-f", "{{.State.Pid}}", &self.name]);
        out.stdout.trim().parse().ok().filter(|&p| p != 0)
    }

    pub fn running(&self) -> bool {
        podman(&["inspect", "-f", "{{.State.Running}}", &self.name]).stdout.trim() == "true"
    }

    pub fn logs(&self) -> String {
        let out = podman(&["logs", &self.name]);
        format!("{}{}", out.stdout, out.stderr)
    }

    /// `fw status --name INSTANCE --json` (the test's own binary, in the
    /// namespace), parsed, and its exit code.
    pub fn status(&self) -> (Option<i32>, serde_json::Value) {
        let out = fw(self.ns, &["status", "--name", &self.instance, "--json"]);
        (out.status.code(), serde_json::from_str(&out.stdout).unwrap_or_default())
    }

    /// Polls until `fw status` exits 0 with this container's fw as the
    /// daemon; panics with the container's log if it exits or 60 s pass.
    pub fn wait_enforcing(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let (code, json) = self.status();
            if code == Some(0) && self.pid().is_some_and(|pid| json["daemon_pid"].as_u64() == Some(pid)) {
                return;
            }
            if !self.running() {
                panic!("container {} exited before enforcing:\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("container {} did not enforce within 60 s:\n{}", self.name, self.logs());
    }

    /// Polls `podman logs` for `needle`, at most `limit`.
    pub fn log_has_within(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `fw ARGS` in a fresh container of the image (same flags), removed
    /// after: e.g. `fw stop`, as an operator would run it.
    pub fn fw_in_container(&self, fw_args: &[&str]) -> Finished {
        let name = unique_name();
        let flags = run_flags(&name, self.ns, &CAPS, &[]);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.insert(1, "--rm");
        let image = image();
        args.push(&image);
        args.extend(fw_args);
        podman(&args)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        // No panic in a guard: plain output(), whatever it says.
        let _ = Command::new("podman").args(["--runtime", "runc", "rm", "-f", "-t", "0", &self.name]).output();
        let mut cmd = self.ns.command(FW);
        cmd.args(["stop", "--name", &self.instance]);
        let _ = run_bounded(cmd, Duration::from_secs(30));
        remove_leftovers(&self.instance);
    }
}
