//! The `fw` binary under test: a guard around a running `fw run`, and
//! bounded runs of its other commands. Every `fw` process runs inside the
//! test's namespace, where `--iface` names resolve.

use std::{
    ffi::{OsStr, OsString},
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{netns::Netns, unique_name, TempDir};

pub const FW: &str = env!("CARGO_BIN_EXE_fw");

/// How long `fw run` may take to enforce. A debug build compiles the
/// 100,000-rule file of `operate_switch_to_a_100k_rule_policy` in 10 s
/// alone, and took 16-20 s with the suite running beside it on two cores:
/// 20 s was a coin toss. A readiness deadline, not a timed assertion.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Arguments of every test's `fw run`. `--cgroup none`: the cgroup socket
/// hooks are not scoped by network namespace, and hooked on the root cgroup
/// they would refuse denied connect()s of every process on the machine.
/// fw's default leaves them out outside the host's namespace; tests do not
/// rely on that detection.
pub fn run_args(iface: &str, policy: impl AsRef<OsStr>, phase: &str, name: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> =
        ["run", "--iface", iface, "--phase", phase, "--name", name].map(OsString::from).into();
    args.extend(["--policy".into(), policy.as_ref().to_owned(), "--cgroup".into(), "none".into()]);
    args
}
const PIN_ROOT: &str = "/sys/fs/bpf/fw";
const FW_RUN_DIR: &str = "/run/fw";
/// Boot records (the last confirmed phase), which survive `fw stop`.
pub use fw_lab::sweep::FW_LIB_DIR;

pub fn pin_dir(name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(name)
}

/// Everything an `fw` process printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Asserts the contract for bad input: non-zero exit and exactly one
    /// non-empty line on stderr. Returns that line.
    pub fn one_line_error(&self) -> &str {
        assert!(!self.status.success(), "expected failure, got success: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected a one-line error on stderr: {self:#?}");
        lines[0]
    }
}

/// Runs `cmd` with its output in files (no pipe can fill up), and kills it
/// if it is still running after `limit`: a command that should fail at once
/// must not hang the suite by succeeding into the foreground.
pub fn run_bounded(cmd: Command, limit: Duration) -> Finished {
    try_run_bounded(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// [`run_bounded`] that never panics, for guards' `Drop`.
fn try_run_bounded(mut cmd: Command, limit: Duration) -> Result<Finished, String> {
    let dir = std::env::temp_dir().join(unique_name());
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = run_with_files(&mut cmd, limit, &dir.join("stdout"), &dir.join("stderr"));
    let _ = fs::remove_dir_all(&dir);
    result
}

fn run_with_files(cmd: &mut Command, limit: Duration, out_path: &Path, err_path: &Path) -> Result<Finished, String> {
    let file = |p: &Path| fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file(out_path)?)
        .stderr(file(err_path)?)
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for {cmd:?}: {e}"))? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{cmd:?} still running after {limit:?}; stderr so far:\n{}",
                fs::read_to_string(err_path).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Finished {
        status,
        stdout: fs::read_to_string(out_path).unwrap_or_default(),
        stderr: fs::read_to_string(err_path).unwrap_or_default(),
    })
}

/// `fw ARGS` inside `ns`, bounded to 30 s.
pub fn fw(ns: &Netns, args: &[&str]) -> Finished {
    let mut cmd = ns.command(FW);
    cmd.args(args);
    run_bounded(cmd, Duration::from_secs(30))
}

/// Counters of one instance, as `fw drops --json` prints them.
#[derive(Debug, Deserialize)]
pub struct Drops {
    pub name: String,
    pub phase: String,
    pub reasons: Vec<ReasonCount>,
    pub rules: Vec<RuleCount>,
}

#[derive(Debug, Deserialize)]
pub struct ReasonCount {
    pub direction: String,
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Deserialize)]
pub struct RuleCount {
    pub name: String,
    pub direction: String,
    pub action: String,
    pub packets: u64,
}

impl Drops {
    /// (packets, bytes) of egress `reason`; a reason that is not listed has
    /// counted nothing.
    pub fn egress(&self, reason: &str) -> (u64, u64) {
        self.counted("egress", reason)
    }

    /// (packets, bytes) of `reason` in `direction` ("egress", "inbound").
    pub fn counted(&self, direction: &str, reason: &str) -> (u64, u64) {
        self.reasons
            .iter()
            .filter(|r| r.direction == direction && r.reason == reason)
            .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
    }

    /// Packets of every `drop_*` reason in `direction`.
    pub fn dropped(&self, direction: &str) -> u64 {
        self.reasons
            .iter()
            .filter(|r| r.direction == direction && r.reason.starts_with("drop_"))
            .map(|r| r.packets)
            .sum()
    }

    /// The counters of the rule called `name`; panics if there is none.
    pub fn rule(&self, name: &str) -> &RuleCount {
        self.rules.iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no rule {name:?} in {self:#?}"))
    }
}

/// How a test's `fw run` starts, beyond its interface, policy and phase.
#[derive(Default)]
pub struct Launch<'a> {
    /// More `fw run` arguments (e.g. `--env-file F`).
    pub extra: &'a [&'a OsStr],
    /// A command that execs its last arguments in the same process (e.g.
    /// `unshare -m`), run with `fw` and its arguments appended.
    pub wrapper: &'a [&'a str],
    /// Environment variables for `fw run` only (never for the test process:
    /// tests run in parallel threads of one process).
    pub env: &'a [(&'a str, &'a OsStr)],
    /// The instance name (default: a fresh unique one); an earlier process
    /// may have left pins, state or a boot record under it.
    pub name: Option<String>,
}

/// A running `fw run`, from the moment `fw status` says it enforces. On
/// drop: `fw stop`, kill and reap the process, and remove whatever pins or
/// state it left.
pub struct Fw<'ns> {
    ns: &'ns Netns,
    name: String,
    /// The arguments of `fw run`, for [`Fw::restart`].
    args: Vec<OsString>,
    /// A command (with its arguments) that runs `fw` as its last
    /// arguments, e.g. `unshare -m`; empty: `fw` itself.
    wrapper: Vec<OsString>,
    /// Environment variables set for `fw run` only (never for the test
    /// process: tests run in parallel threads of one process).
    env: Vec<(OsString, OsString)>,
    child: Option<Child>,
    /// `fw stop` succeeded: nothing left for `Drop` to stop.
    stopped: bool,
    /// stdout and stderr of `fw run`, shown when it fails.
    log: PathBuf,
    _dir: TempDir,
}

impl<'ns> Fw<'ns> {
    /// Starts `fw run` on `iface` in `ns` and waits until it enforces.
    pub fn start(ns: &'ns Netns, iface: &str, policy: &Path, phase: &str) -> Self {
        Self::start_with(ns, iface, policy, phase, &[])
    }

    /// [`Fw::start`] with `policy` a file or a shipped policy's name, and
    /// `extra` arguments (e.g. `--env-file F`).
    pub fn start_with(ns: &'ns Netns, iface: &str, policy: impl AsRef<OsStr>, phase: &str, extra: &[&OsStr]) -> Self {
        Self::start_launch(ns, iface, policy, phase, Launch { extra, ..Launch::default() })
    }

    /// [`Fw::start`] with the options of `launch`; waits until it enforces.
    pub fn start_launch(ns: &'ns Netns, iface: &str, policy: impl AsRef<OsStr>, phase: &str, launch: Launch) -> Self {
        let mut fw = Self::launch(ns, iface, policy, phase, launch);
        fw.wait_ready();
        fw
    }

    /// Starts `fw run` without waiting for anything: for tests of how it
    /// reports readiness itself.
    pub fn launch(ns: &'ns Netns, iface: &str, policy: impl AsRef<OsStr>, phase: &str, launch: Launch) -> Self {
        let name = launch.name.unwrap_or_else(unique_name);
        let dir = TempDir::new();
        let log = dir.path().join("fw-run.log");
        let mut args = run_args(iface, policy, phase, &name);
        if launch.extra.iter().any(|a| *a == "--cgroup") {
            // A cgroup the test made replaces the default `--cgroup none`.
            let at = args.iter().position(|a| a == "--cgroup").expect("run_args passes --cgroup");
            args.drain(at..at + 2);
        }
        // A summary a second, unless the test asks for its own interval.
        if !launch.extra.iter().any(|a| *a == "--interval") {
            args.extend(["--interval".into(), "1".into()]);
        }
        args.extend(launch.extra.iter().map(|a| a.to_os_string()));
        let mut fw = Self {
            ns,
            name,
            args,
            wrapper: launch.wrapper.iter().map(OsString::from).collect(),
            env: launch.env.iter().map(|(k, v)| (OsString::from(k), v.to_os_string())).collect(),
            child: None,
            stopped: false,
            log,
            _dir: dir,
        };
        fw.spawn();
        fw
    }

    /// Starts the `fw run` process (output appended to the log). Must run
    /// on the thread that owns the test: the child dies with its parent
    /// thread (`PR_SET_PDEATHSIG`).
    fn spawn(&mut self) {
        let out = fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("opening the fw log");
        let err = out.try_clone().expect("cloning the fw log");
        let mut cmd = match self.wrapper.split_first() {
            None => self.ns.command(FW),
            Some((program, wrapper_args)) => {
                let mut cmd = self.ns.command(program);
                cmd.args(wrapper_args).arg(FW);
                cmd
            }
        };
        cmd.args(&self.args).envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        self.child = Some(child);
    }

    /// Polls `fw status --json` until it exits 0 and names this process as
    /// the daemon (after a restart the pins enforce before the new daemon
    /// answers): a bounded readiness check that gives up (with fw's output)
    /// if `fw run` exits or [`READY_WITHIN`] passes.
    pub fn wait_ready(&mut self) {
        let pid = self.pid();
        let start = Instant::now();
        while start.elapsed() < READY_WITHIN {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("waiting for fw run")) {
                panic!("`fw run` exited before enforcing ({status}):\n{}", self.log_text());
            }
            let out = fw(self.ns, &["status", "--name", &self.name, "--json"]);
            if out.status.success() {
                let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
                if json["daemon_pid"].as_u64() == Some(u64::from(pid)) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "`fw status --name {}` did not report daemon {pid} enforcing within {READY_WITHIN:?}; fw run printed:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Pid of the running `fw run` process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("fw run is running").id()
    }

    /// The `fw run` arguments this instance was started with.
    pub fn run_args(&self) -> &[OsString] {
        &self.args
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the output of `fw run` until a line contains `needle`, at most
    /// `limit`; returns whether one did.
    pub fn log_has_within(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.log_text().lines().any(|l| l.contains(needle)) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the `fw run` process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("waiting for fw run"))
    }

    /// `fw status --name NAME`.
    pub fn status(&self) -> Finished {
        fw(self.ns, &["status", "--name", &self.name])
    }

    /// `fw status --name NAME --json`, parsed (whatever the exit code).
    pub fn status_json(&self) -> serde_json::Value {
        let out = fw(self.ns, &["status", "--name", &self.name, "--json"]);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("fw status --json printed no JSON object ({e}): {out:#?}"))
    }

    /// `fw status --json` once the daemon has deleted the generations a
    /// switch left to it (`entries.other_generations` is 0; bounded: the
    /// daemon does it within a second or two). Panics if it never does.
    pub fn status_collected(&self) -> serde_json::Value {
        let mut status = serde_json::Value::Null;
        let done = super::poll(Duration::from_secs(30), || {
            status = self.status_json();
            status["entries"]["other_generations"].as_u64() == Some(0)
        });
        assert!(done, "the daemon never deleted the old generations: {status}");
        status
    }

    /// `fw status --json` once the daemon shows `phase` written ahead of
    /// the next switch and no entry of any other generation left
    /// (bounded). Panics if it never does.
    pub fn status_written_ahead(&self, phase: &str) -> serde_json::Value {
        let mut status = serde_json::Value::Null;
        let done = super::poll(Duration::from_secs(60), || {
            status = self.status_json();
            status["written_ahead"]["phase"] == phase && status["entries"]["other_generations"] == 0
        });
        assert!(done, "phase {phase} was never written ahead: {status}\n{}", self.log_text());
        status
    }

    /// `fw ARGS --name NAME` (the name appended).
    pub fn cli(&self, args: &[&str]) -> Finished {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--name", &self.name]);
        fw(self.ns, &all)
    }

    /// `fw drops --name NAME --json`, parsed.
    pub fn drops(&self) -> Drops {
        let out = fw(self.ns, &["drops", "--name", &self.name, "--json"]);
        assert!(out.status.success(), "fw drops failed: {out:#?}");
        let drops: Drops = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!("fw drops --json printed something else than one Drops object ({e}):\n{}", out.stdout)
        });
        assert_eq!(drops.name, self.name);
        drops
    }

    /// Polls `fw drops` until `done` holds (counters of packets that were
    /// already sent can land a moment later, e.g. behind neighbour
    /// resolution), at most 3 s. Returns the last reading either way; the
    /// caller asserts on it.
    pub fn drops_when(&self, done: impl Fn(&Drops) -> bool) -> Drops {
        let start = Instant::now();
        loop {
            let drops = self.drops();
            if done(&drops) || start.elapsed() > Duration::from_secs(3) {
                return drops;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `fw stop`, which must succeed, and the end of `fw run`.
    pub fn stop(&mut self) {
        self.stop_with(&[]);
    }

    /// `fw stop EXTRA...` (e.g. `--forget`), which must succeed.
    pub fn stop_with(&mut self, extra: &[&str]) {
        let mut args = vec!["stop", "--name", &self.name];
        args.extend_from_slice(extra);
        let out = fw(self.ns, &args);
        assert!(out.status.success(), "fw stop failed: {out:#?}\nfw run printed:\n{}", self.log_text());
        // The state and the rule lists it names go with the instance.
        for left in [format!("{}.json", self.name), format!("{}.rules", self.name)] {
            assert!(!Path::new(FW_RUN_DIR).join(&left).exists(), "fw stop left /run/fw/{left}");
        }
        self.stopped = true;
        self.reap();
    }

    /// Kills the `fw run` process (SIGKILL, as a crash would), leaving its
    /// pins.
    pub fn kill_run_process(&mut self) {
        let mut child = self.child.take().expect("fw run is running");
        child.kill().expect("killing fw run");
        child.wait().expect("reaping fw run");
    }

    /// Starts `fw run` again with the same arguments (after
    /// [`Fw::kill_run_process`]) and waits until the new daemon answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "fw run is still running");
        self.spawn();
        self.wait_ready();
    }

    /// `kill -9` of the daemon, then the same `fw run` again, which adopts
    /// the pinned instance. Returns how long the instance had no daemon.
    pub fn restart(&mut self) -> Duration {
        let start = Instant::now();
        self.kill_run_process();
        self.start_again();
        start.elapsed()
    }

    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Fw<'_> {
    fn drop(&mut self) {
        if !self.stopped {
            let mut cmd = self.ns.command(FW);
            cmd.args(["stop", "--name", &self.name]);
            let _ = try_run_bounded(cmd, Duration::from_secs(30));
        }
        self.reap();
        remove_leftovers(&self.name);
    }
}

/// Removes the pins, state, locks and boot record of instance `name`, if
/// any are left.
pub fn remove_leftovers(name: &str) {
    let _ = fs::remove_dir_all(pin_dir(name));
    let _ = fs::remove_dir_all(Path::new(FW_LIB_DIR).join(name));
    for suffix in ["json", "sock", "lock", "daemon.lock", "drops.json"] {
        let _ = fs::remove_file(Path::new(FW_RUN_DIR).join(format!("{name}.{suffix}")));
    }
    // The rule lists the state names, the phases compiled ahead.
    for suffix in ["rules", "kept"] {
        let _ = fs::remove_dir_all(Path::new(FW_RUN_DIR).join(format!("{name}.{suffix}")));
    }
}

/// `fw learn` in the background (on `iface` of `ns`, writing the policy to
/// `output`, its stderr in `log`), started once its log says it learns;
/// killed and its temporary instance removed on drop.
pub struct Learning {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Learning {
    pub fn start(ns: &Netns, iface: &str, cgroup: &str, duration: &str, output: &Path, log: PathBuf) -> Self {
        let name = unique_name();
        let child = ns
            .command(FW)
            .args(["learn", "--iface", iface, "--name", &name, "--cgroup", cgroup, "--duration", duration, "-o"])
            .arg(output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("learn log"))
            .spawn()
            .expect("starting fw learn");
        let learning = Self { child, name, log };
        let started = super::poll(Duration::from_secs(30), || learning.log_text().contains("fw: learning"));
        assert!(started, "fw learn did not start:\n{}", learning.log_text());
        learning
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ctrl-C, as an operator ends learning: asserts that it writes its
    /// policy and exits 0 within 30 s.
    pub fn interrupt(&mut self) {
        // SAFETY: signalling the child this guard started.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) }, 0);
        let ended = super::poll(Duration::from_secs(30), || self.child.try_wait().ok().flatten().is_some());
        assert!(ended, "fw learn did not end on SIGINT:\n{}", self.log_text());
        assert!(self.child.wait().unwrap().success(), "fw learn failed:\n{}", self.log_text());
    }
}

impl Drop for Learning {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_leftovers(&self.name);
    }
}
