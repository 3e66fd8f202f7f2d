//! A cgroup v2 directory made by a test (never the root cgroup), to attach
//! fw's socket hooks to and run client processes in.

use std::{
    fs,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use super::{netns::Netns, unique_name};

/// The client interpreter: run by its real path so that its command name
/// (what the kernel reports as `comm`) is known.
pub const PYTHON: &str = "/usr/bin/python3";

/// A cgroup made by the test under the cgroup v2 mount; on drop, whatever
/// is still in it is moved back to where the test runs, then it is removed.
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the mount, as fw reports it (`/fwt-...`).
    pub relative: String,
}

impl TestCgroup {
    pub fn new() -> Self {
        let mounts = fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
        let mount = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .map(|f| PathBuf::from(f[1]))
            .expect("a cgroup v2 hierarchy is mounted");
        let name = unique_name();
        let path = mount.join(&name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        Self { path, relative: format!("/{name}") }
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(&self.path).expect("cgroup metadata").ino()
    }

    /// `cmd`, made to join this cgroup between fork and exec (it writes
    /// "0", itself, to cgroup.procs), so it runs no instruction outside it.
    fn join_before_exec(&self, mut cmd: Command) -> Command {
        let procs =
            fs::OpenOptions::new().write(true).open(self.path.join("cgroup.procs")).expect("opening cgroup.procs");
        // SAFETY: only write(2), async-signal-safe, on a descriptor opened
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// `python3 -c SCRIPT ARGS` in `ns`, placed in this cgroup before it
    /// runs a line of Python (it writes "0", itself, to cgroup.procs
    /// between fork and exec).
    pub fn python(&self, ns: &Netns, script: &str, args: &[String]) -> Command {
        let mut cmd = ns.command(PYTHON);
        cmd.arg("-c").arg(script).args(args);
        self.join_before_exec(cmd)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Our children have exited by now (each is waited for); move any
        // straggler out so that rmdir can succeed.
        let parent = self.path.parent().expect("the mount").join("cgroup.procs");
        for _ in 0..100 {
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = fs::write(&parent, pid);
            }
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

impl TestCgroup {
    /// `python3 -c SCRIPT ARGS` in `ns` and in this cgroup, in a private
    /// mount namespace where `/etc/resolv.conf` is `resolv_conf` (a bind
    /// mount that dies with the process: the host's file is never touched).
    /// Runs `script` as [`Self::python_with_resolv_conf`] does, to its
    /// end; its stdout. Panics (with both outputs) when it fails.
    pub fn python_output(&self, ns: &Netns, resolv_conf: &std::path::Path, script: &str, args: &[String]) -> String {
        let out = self
            .python_with_resolv_conf(ns, resolv_conf, script, args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running the client");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "client failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    pub fn python_with_resolv_conf(
        &self,
        ns: &Netns,
        resolv_conf: &std::path::Path,
        script: &str,
        args: &[String],
    ) -> Command {
        let wrapper = with_resolv_conf(resolv_conf);
        let mut cmd = ns.command(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(PYTHON).arg("-c").arg(script).args(args);
        self.join_before_exec(cmd)
    }
}

/// A command prefix (`unshare ... sh -c ... sh FILE`) that runs what
/// follows it in a private mount namespace where /etc/resolv.conf is
/// `resolv_conf` (a bind mount that dies with the process: the host's file
/// is never touched), so that the system resolver of that process, fw's
/// `resolvers: [system]` included, is a lab's DNS server.
pub fn with_resolv_conf(resolv_conf: &std::path::Path) -> Vec<String> {
    ["unshare", "-m", "--propagation", "private", "sh", "-c"]
        .into_iter()
        .map(String::from)
        .chain([
            "mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"".to_string(),
            "sh".to_string(),
            resolv_conf.display().to_string(),
        ])
        .collect()
}
