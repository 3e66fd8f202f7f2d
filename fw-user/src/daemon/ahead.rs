//! Compiling the phases of the enforced policy ahead of `fw switch`
//! (`source::precompiled`): once at start and again whenever a switch or
//! a rollback changed what is enforced, in the background, one at a time.
//! A switch that comes first compiles for itself, as it always did.

use std::path::Path;

use anyhow::Result;

use super::job::Job;
use crate::{
    instance::{paths, state::InstanceState},
    source::precompiled::{self, Report},
};

/// What the daemon compiled ahead, and the compile in progress.
#[derive(Default)]
pub struct Ahead {
    /// The generation the last compile started for.
    started_for: Option<u32>,
    /// The inputs of the last one that succeeded: the next does nothing
    /// unless the files changed.
    kept: Option<[u8; 32]>,
    /// The generation the last compile that succeeded started for.
    finished_for: Option<u32>,
    job: Job<Result<Report>>,
}

impl Ahead {
    /// Starts a compile when the enforced generation changed since the
    /// last one started and none runs.
    pub fn start_if_due(&mut self, name: &str, state: &InstanceState) {
        let generation = state.enforced.generation;
        if self.job.is_running() || self.started_for == Some(generation) {
            return;
        }
        self.started_for = Some(generation);
        let kept_dir = paths::kept_dir(name);
        let policy = state.enforced.policy.clone();
        let env = state.enforced.env_file.clone();
        let unless = self.kept;
        self.job.start(move || precompiled::keep_all(&kept_dir, &policy, env.as_deref().map(Path::new), unless));
    }

    pub fn is_running(&self) -> bool {
        self.job.is_running()
    }

    /// The enforced generation the phases in the kept directory were last
    /// compiled for (`None` until a compile succeeded).
    pub fn compiled_for(&self) -> Option<u32> {
        self.finished_for
    }

    /// The instance was stopped: waits for a compile in progress, then
    /// removes what it kept (at 100,000 rules, 21 MB of tmpfs per phase).
    pub async fn abandon(&mut self, name: &str) {
        self.job.abandon().await;
        let _ = std::fs::remove_dir_all(paths::kept_dir(name));
    }

    /// Waits for the compile in progress (only while [`Ahead::is_running`]),
    /// then says what it did.
    pub async fn finish(&mut self, name: &str) {
        let (took, outcome) = self.job.finish().await;
        let seconds = took.as_secs_f64();
        match outcome {
            Ok(Ok(report)) => {
                self.kept = Some(report.inputs);
                self.finished_for = self.started_for;
                if !report.compiled.is_empty() {
                    say!(
                        "fw: {name}: compiled phase{} {} ahead of `fw switch` in {seconds:.1} s",
                        if report.compiled.len() == 1 { "" } else { "s" },
                        report.compiled.join(", ")
                    );
                }
                if !report.failed.is_empty() {
                    say!(
                        "fw: {name}: phase{} {} of the policy do{} not compile: a switch to {} says why",
                        if report.failed.len() == 1 { "" } else { "s" },
                        report.failed.join(", "),
                        if report.failed.len() == 1 { "es" } else { "" },
                        if report.failed.len() == 1 { "it" } else { "one" },
                    );
                }
                if let Some(why) = report.not_kept {
                    say!("fw: {name}: the phases are not compiled ahead of `fw switch`: {why}");
                }
            }
            Ok(Err(e)) => say_err!("fw: {name}: compiling the phases ahead of `fw switch`: {e:#}"),
            Err(e) => say_err!("fw: {name}: compiling the phases ahead of `fw switch` panicked: {e}"),
        }
    }
}
