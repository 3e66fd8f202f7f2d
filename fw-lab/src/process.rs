//! Child processes that a test or benchmark started, stopped by their pid
//! when the guard goes, whatever happened in between.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// A child process this run started: on drop, SIGTERM (so that an `fw run`
/// exits as it should, removing its control socket; enforcement stays
/// pinned until `fw stop`), then SIGKILL if it has not exited within a
/// second, and reaped either way.
pub struct Guarded(pub Child);

impl Guarded {
    /// Starts `cmd` with the standard streams it was given.
    pub fn spawn(cmd: &mut Command) -> Result<Guarded> {
        Ok(Guarded(cmd.spawn().with_context(|| format!("starting {cmd:?}"))?))
    }

    /// Starts `cmd` with no input and both outputs piped (for
    /// [`Guarded::wait_for_line`] and [`Guarded::finish`]).
    pub fn spawn_piped(cmd: &mut Command) -> Result<Guarded> {
        Self::spawn(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Reads stdout lines until one contains `needle` (within `limit`);
    /// the rest of stdout, and how long it took.
    pub fn wait_for_line(&mut self, needle: &str, limit: Duration) -> Result<(ChildStdout, Duration)> {
        let (stdout, times) = self.wait_for_lines(&[needle], limit)?;
        Ok((stdout, times[0]))
    }

    /// Reads stdout lines until one contains `needles[0]`, then one that
    /// contains `needles[1]`, and so on (all within `limit`); the rest of
    /// stdout, and how long each took from the start. One reader for all:
    /// a line read ahead into its buffer is never lost between two.
    pub fn wait_for_lines(&mut self, needles: &[&str], limit: Duration) -> Result<(ChildStdout, Vec<Duration>)> {
        let started = Instant::now();
        let stdout = self.0.stdout.take().context("the child's stdout is not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut times = Vec::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains(&wanted[times.len()]) {
                    times.push(started.elapsed());
                    if times.len() == wanted.len() {
                        let _ = tx.send(Some((reader.into_inner(), times)));
                        return;
                    }
                }
                line.clear();
            }
            let _ = tx.send(None);
        });
        let needle = needles.join("`, then `");
        match rx.recv_timeout(limit) {
            Ok(Some(found)) => Ok(found),
            _ => {
                let _ = self.0.kill();
                let _ = self.0.wait();
                let mut err = String::new();
                if let Some(mut s) = self.0.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                bail!("no line containing `{needle}` within {limit:?}: {}", err.trim())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_stops_its_child() {
        let guard = Guarded::spawn(Command::new("sleep").arg("60")).expect("sleep");
        let proc = std::path::PathBuf::from(format!("/proc/{}", guard.id()));
        assert!(proc.exists());
        drop(guard);
        // Reaped by the drop: the pid is gone, not a zombie.
        assert!(!proc.exists(), "the child outlived its guard");
    }

    #[test]
    fn a_line_is_found_and_a_missing_one_is_an_error_with_stderr() {
        let mut c = Command::new("sh");
        let mut guard = Guarded::spawn_piped(c.args(["-c", "echo starting; echo ready; sleep 60"])).expect("sh");
        guard.wait_for_line("ready", Duration::from_secs(10)).expect("the line");
        let mut c = Command::new("sh");
        let mut quiet = Guarded::spawn_piped(c.args(["-c", "echo oops >&2"])).expect("sh");
        let err = quiet.wait_for_line("ready", Duration::from_secs(10)).unwrap_err();
        assert!(format!("{err:#}").contains("oops"), "{err:#}");
    }
}
