//! The bench's own network namespaces and processes, cleaned up even when a
//! run fails: every namespace is a Drop guard, every child process too, and
//! a sweep at the start removes what an earlier, killed run left behind.
//!
//! Names carry this process's pid (`fwb<pid>...`), so the sweep only ever
//! touches leftovers of bench runs whose process is gone.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

const NETNS_DIR: &str = "/run/netns";
const PIN_ROOT: &str = "/sys/fs/bpf/fw";
/// Where fw keeps an instance's boot record and policy copies.
const RECORDS_ROOT: &str = "/var/lib/fw";
const PREFIX: &str = "fwb";

/// Address of the sending side; the receiver's is in the generated policy.
pub const SENDER4: &str = "198.18.200.1";
pub const RECEIVER4: &str = "198.18.200.2";
pub const SENDER6: &str = "2001:db8:c8::1";
pub const RECEIVER6: &str = "2001:db8:c8::2";
/// The veth end in the sender's namespace, where every filter goes.
pub const IFACE: &str = "va";

/// `fwb<pid>` + `tag`: names of this run.
pub fn name(tag: &str) -> String {
    format!("{PREFIX}{}{tag}", std::process::id())
}

fn owner_pid(name: &str) -> Option<u32> {
    let digits: String = name.strip_prefix(PREFIX)?.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces, fw instances and pins left by bench runs that died.
pub fn sweep(fw: &Path) {
    let dead = |n: &str| owner_pid(n).is_some_and(|pid| !alive(pid));
    for dir in [PIN_ROOT, "/run/fw"] {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let instance = file.split('.').next().unwrap_or_default().to_string();
            if !dead(&instance) {
                continue;
            }
            if Path::new(PIN_ROOT).join(&instance).exists() {
                println!("bench: removing the fw instance {instance} of an earlier run");
                let _ = Command::new(fw).args(["stop", "--name", &instance, "--forget"]).output();
            } else if dir == "/run/fw" {
                // A killed `fw run` leaves its socket (and state) behind.
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    // The boot records (`fw stop` without --forget keeps them, and a bench
    // killed before its stop left them).
    for entry in fs::read_dir(RECORDS_ROOT).into_iter().flatten().flatten() {
        let instance = entry.file_name().to_string_lossy().into_owned();
        if dead(&instance) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    for entry in fs::read_dir(NETNS_DIR).into_iter().flatten().flatten() {
        let ns = entry.file_name().to_string_lossy().into_owned();
        if dead(&ns) {
            println!("bench: removing the namespace {ns} of an earlier run, and the processes it left in it");
            // Only processes inside a namespace of a dead bench run: its own.
            let pids = cmd::output(Command::new("ip").args(["netns", "pids", &ns])).unwrap_or_default();
            for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// A command run inside namespace `ns` (nsenter --net: bpffs stays visible).
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={NETNS_DIR}/{ns}")).arg("--").arg(program);
    c
}

/// Two namespaces joined by a veth pair: `va` (sender, filtered) and `vb`
/// (receiver). Deleted on drop.
pub struct Pair {
    pub a: String,
    pub b: String,
}

impl Pair {
    pub fn new(tag: &str) -> Result<Pair> {
        let (a, b) = (name(&format!("{tag}a")), name(&format!("{tag}b")));
        cmd::output(Command::new("ip").args(["netns", "add", &a]))?;
        let mut pair = Pair { a: a.clone(), b: String::new() };
        cmd::output(Command::new("ip").args(["netns", "add", &b]))?;
        pair.b = b.clone();
        // Created inside the namespace: the veth never shows in the root one.
        cmd::output(
            Command::new("ip")
                .args(["-n", &a, "link", "add", IFACE, "type", "veth", "peer", "name", "vb", "netns", &b]),
        )?;
        for (ns, dev, v4, v6) in [(&a, IFACE, SENDER4, SENDER6), (&b, "vb", RECEIVER4, RECEIVER6)] {
            let ip = |args: &[&str]| cmd::output(Command::new("ip").arg("-n").arg(ns).args(args));
            ip(&["link", "set", "lo", "up"])?;
            ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])?;
            ip(&["link", "set", dev, "up"])?;
        }
        for ns in [&a, &b] {
            let dev = if ns == &a { IFACE } else { "vb" };
            wait_up(ns, dev)?;
        }
        Ok(pair)
    }
}

fn wait_up(ns: &str, dev: &str) -> Result<()> {
    for _ in 0..300 {
        let out = cmd::output(Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]))?;
        if out.contains("state UP") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{dev} in {ns} did not come up within 3 s")
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if !ns.is_empty() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

/// A child process this run started, killed (by its pid) on drop.
pub struct Guarded(pub Child);

impl Guarded {
    pub fn spawn(cmd: &mut Command) -> Result<Guarded> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting `{}`", cmd::display(cmd)))?;
        Ok(Guarded(child))
    }

    /// Reads stdout lines until one contains `needle` (within `limit`).
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> Result<(ChildStdout, Duration)> {
        let started = Instant::now();
        let stdout = self.0.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted = needle.to_string();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains(&wanted) {
                    let _ = tx.send(Some(reader.into_inner()));
                    return;
                }
                line.clear();
            }
            let _ = tx.send(None);
        });
        match rx.recv_timeout(limit) {
            Ok(Some(stdout)) => Ok((stdout, started.elapsed())),
            _ => {
                let _ = self.0.kill();
                let _ = self.0.wait();
                let mut err = String::new();
                if let Some(mut s) = self.0.stderr.take() {
                    use std::io::Read as _;
                    let _ = s.read_to_string(&mut err);
                }
                bail!("no line containing {needle:?} within {limit:?}: {}", err.trim())
            }
        }
    }

    /// Waits (bounded) and returns stdout, failing on a non-zero exit.
    pub fn finish(mut self, limit: Duration) -> Result<String> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait()? {
                let mut out = String::new();
                let mut err = String::new();
                use std::io::Read as _;
                if let Some(mut s) = self.0.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                if let Some(mut s) = self.0.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                if !status.success() {
                    bail!("exited with {status}: {}", err.trim());
                }
                return Ok(out);
            }
            if started.elapsed() > limit {
                let _ = self.0.kill();
                bail!("still running after {limit:?}: killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guarded {
    /// SIGTERM first, so that an `fw run` exits as it should (removing its
    /// control socket; enforcement stays pinned until `fw stop`), then
    /// SIGKILL if it has not exited within a second.
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill(2) on the pid of a child this guard owns and has not
        // reaped, so the pid cannot have been reused.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
