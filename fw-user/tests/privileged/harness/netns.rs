//! Network namespaces and the veth pair that joins two of them.
//!
//! Veths are created directly inside their namespaces (`ip link add ...
//! netns NS`), so nothing ever appears in the root namespace, and deleting
//! the namespaces deletes them.

use std::{
    ffi::OsStr,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{self, Command, Output},
    time::Duration,
};

use super::{owner_pid, pid_alive, PREFIX};

const NETNS_DIR: &str = "/run/netns";
const PIN_ROOT: &str = "/sys/fs/bpf/fw";
const FW_RUN_DIR: &str = "/run/fw";

/// Runs `cmd` to completion; panics with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A named network namespace (`/run/netns/NAME`) with loopback up,
/// deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        assert!(
            owner_pid(&name).is_some(),
            "{name} must come from unique_name()"
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        // Like any host: loopback up (a new namespace has it down).
        ns.ip(&["link", "set", "dev", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `program` to be run inside this namespace: the child joins it with
    /// setns() between fork and exec (like `nsenter --net`, and unlike `ip
    /// netns exec` it keeps this mount namespace, so bpffs stays visible).
    /// The child is also killed if the thread that started it dies first.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let ns = fs::File::open(self.path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.path().display()));
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
        // setns) on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                    || libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// Waits until `dev` reports operstate UP: before that the kernel may
    /// still drop packets on it (no qdisc activated yet). A bounded poll of a
    /// kernel state, not a sleep standing in for it.
    pub fn wait_link_up(&self, dev: &str) {
        for _ in 0..300 {
            let out = run_ok(
                Command::new("ip").args(["-n", &self.name, "-o", "link", "show", "dev", dev]),
            );
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{dev} in {} did not come up within 3 s", self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// Two namespaces, `near` (where fw enforces, on `near_if`'s egress) and
/// `far` (the servers), joined by one veth pair, with IPv4 and IPv6
/// addresses ready to use (IPv6 with `nodad`).
pub struct VethPair {
    pub near: Netns,
    pub far: Netns,
    pub near_if: String,
    pub far_if: String,
    pub near4: Ipv4Addr,
    pub far4: Ipv4Addr,
    pub near6: Ipv6Addr,
    pub far6: Ipv6Addr,
}

impl VethPair {
    /// Subnet `x`: near 198.18.x.1/24 and 2001:db8:x::1/64, far .2 / ::2.
    pub fn new(x: u8) -> Self {
        let base = super::unique_name();
        let near = Netns::new(format!("{base}-near"));
        let far = Netns::new(format!("{base}-far"));
        // fw<pid mod 100000><n>a: at most 15 characters (IFNAMSIZ - 1).
        let tag = format!("fw{}{}", process::id() % 100_000, super::next_n());
        let (near_if, far_if) = (format!("{tag}a"), format!("{tag}b"));
        assert!(
            near_if.len() <= 15,
            "{near_if} is longer than IFNAMSIZ allows"
        );
        let pair = Self {
            near4: Ipv4Addr::new(198, 18, x, 1),
            far4: Ipv4Addr::new(198, 18, x, 2),
            near6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(x), 0, 0, 0, 0, 1),
            far6: Ipv6Addr::new(0x2001, 0xdb8, u16::from(x), 0, 0, 0, 0, 2),
            near,
            far,
            near_if,
            far_if,
        };
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &pair.near_if,
            "netns",
            pair.near.name(),
            "type",
            "veth",
            "peer",
            "name",
            &pair.far_if,
            "netns",
            pair.far.name(),
        ]));
        for (ns, dev, v4, v6) in [
            (&pair.near, &pair.near_if, pair.near4, pair.near6),
            (&pair.far, &pair.far_if, pair.far4, pair.far6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ip(&["link", "set", "dev", dev, "up"]);
        }
        pair.near.wait_link_up(&pair.near_if);
        pair.far.wait_link_up(&pair.far_if);
        pair
    }

    /// The far host's addresses, IPv4 first.
    pub fn far_addrs(&self) -> [IpAddr; 2] {
        [self.far4.into(), self.far6.into()]
    }
}

/// Removes namespaces, pin directories, fw state files and scratch
/// directories named `fwt-<pid>-...` whose pid is no longer alive: what a
/// test run killed before its guards ran left behind. Leaves everything
/// else, including the leftovers of runs that are still going.
pub fn sweep_leftovers() {
    let dead =
        |name: &str| owner_pid(name).is_some_and(|pid| pid != process::id() && !pid_alive(pid));
    for name in names_in(Path::new(NETNS_DIR))
        .into_iter()
        .filter(|n| dead(n))
    {
        eprintln!("sweeping leftover namespace {name}");
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
    }
    for dir in [
        Path::new(PIN_ROOT),
        Path::new(FW_RUN_DIR),
        &std::env::temp_dir(),
    ] {
        for name in names_in(dir).into_iter().filter(|n| dead(n)) {
            let path = dir.join(&name);
            eprintln!("sweeping leftover {}", path.display());
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}
