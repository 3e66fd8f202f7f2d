//! Network namespaces and the veth pairs that join them.
//!
//! Veths are created directly inside their namespaces (`ip link add ...
//! netns NS`), so nothing ever appears in the root namespace, and deleting
//! a namespace deletes its ends.

use std::{
    ffi::OsStr,
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

pub const NETNS_DIR: &str = "/run/netns";

/// Runs `cmd` to completion; its output, or an error with what it printed
/// unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A named network namespace (`/run/netns/NAME`) with loopback up,
/// deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `name` should come from [`crate::names::unique`], so that a sweep
    /// can tell a leftover of a killed run.
    pub fn create(name: String) -> Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        // Like any host: loopback up (a new namespace has it down).
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
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
    ///
    /// Panics if the namespace's file cannot be opened: it is this guard's
    /// own namespace, so that is a broken lab, not an outcome to handle.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let ns = fs::File::open(self.path()).unwrap_or_else(|e| panic!("opening {}: {e}", self.path().display()));
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

    /// `ip -n NAME ARGS`; its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sysctl -w KEY=VALUE` in this namespace (the `net.*` keys are per
    /// namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        run(self.command("sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(drop)
    }

    /// Waits until `dev` reports operstate UP: before that the kernel may
    /// still drop packets on it (no qdisc activated yet). A bounded poll of a
    /// kernel state, not a sleep standing in for it.
    pub fn wait_link_up(&self, dev: &str) -> Result<()> {
        for _ in 0..300 {
            if self.ip(&["-o", "link", "show", "dev", dev])?.contains("state UP") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!("{dev} in {} did not come up within 3 s", self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip").args(["netns", "del", &self.name]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// A veth pair named `a_if` in `a` and `b_if` in `b`, both down and without
/// addresses.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    if a_if.len() > 15 || b_if.len() > 15 {
        bail!("{a_if}/{b_if}: an interface name has at most 15 characters (IFNAMSIZ - 1)");
    }
    let args = ["link", "add", a_if, "netns", a.name(), "type", "veth", "peer", "name", b_if, "netns", b.name()];
    run(Command::new("ip").args(args)).map(drop)
}

/// Gives `dev` in `ns` an IPv4 /24 and an IPv6 /64 (`nodad`: usable at
/// once) and brings it up.
pub fn address(ns: &Netns, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
    ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
    ns.ip(&["link", "set", "dev", dev, "up"])?;
    Ok(())
}
