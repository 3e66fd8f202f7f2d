//! Writing the next phase ahead of `fw switch` (`instance::txn::prepare`):
//! once the phases are compiled ahead (`ahead`), the daemon writes the
//! phase after the enforced one, in the policy's order and back to the
//! first after the last (`install` -> `runtime` -> `install`), under a
//! generation no packet is judged by. A `fw switch` to it, with the same
//! files, is then the journal and one map write: at 100,000 rules the
//! write of its 440,000 entries (about 0.6 s, most of a switch) happens
//! here, in the background, instead of while the operator waits.
//!
//! What it costs: the maps hold two generations for as long as the
//! standby is there (the kernel memory a switch needs anyway, for the
//! switch's duration), and the write takes the instance lock, so a
//! switch asked for meanwhile waits for it (and then uses it if it asked
//! for that phase). Nothing is written while a switch awaits `fw confirm`
//! (its rollback target holds the slot); a switch to anything else
//! discards the standby first.

use anyhow::Result;

use super::job::Job;
use crate::{
    instance::{self, paths, state::InstanceState, state::Prepared},
    source::precompiled,
};

/// The write ahead in progress, and for which enforced generation one was
/// last tried (once per generation: a write that failed is not retried
/// every second).
pub struct Standby {
    /// `fw run --no-write-ahead`: never.
    enabled: bool,
    /// The enforced generation last seen: when it changes, a write ahead
    /// is due again (a rollback comes back to a generation tried before).
    seen: Option<u32>,
    tried_for: Option<u32>,
    job: Job<Result<Option<Prepared>>>,
}

impl Standby {
    pub fn new(enabled: bool) -> Self {
        Self { enabled, seen: None, tried_for: None, job: Job::default() }
    }

    /// Starts the write of the next phase when the phases are compiled ahead
    /// for the enforced generation (`compiled_for`), nothing is written
    /// ahead or awaits confirmation, and none was tried for this generation.
    pub fn start_if_due(&mut self, name: &str, state: &InstanceState, compiled_for: Option<u32>) {
        let generation = state.enforced.generation;
        if self.seen != Some(generation) {
            self.seen = Some(generation);
            self.tried_for = None;
        }
        let idle = state.pending.is_none() && state.switching.is_none() && state.prepared.is_none();
        if !self.enabled
            || self.job.is_running()
            || !idle
            || state.ephemeral
            || compiled_for != Some(generation)
            || self.tried_for == Some(generation)
        {
            return;
        }
        self.tried_for = Some(generation);
        let Some(phases) = precompiled::kept_phases(&paths::kept_dir(name)) else { return };
        let name = name.to_string();
        // The phase is chosen after the state the write reads, not this
        // one: a switch may come first.
        self.job.start(move || instance::prepare(&name, |enforced| next_phase(&phases, enforced)));
    }

    pub fn is_running(&self) -> bool {
        self.job.is_running()
    }

    /// Waits for the write in progress (only while [`Standby::is_running`]),
    /// then says what it did.
    pub async fn finish(&mut self, name: &str) {
        let (took, outcome) = self.job.finish().await;
        let seconds = took.as_secs_f64();
        match outcome {
            Ok(Ok(Some(p))) => say!(
                "fw: {name}: phase {} written into the maps in {seconds:.1} s (generation {}, {} entries): `fw switch {}` is one map write",
                p.to.phase,
                p.to.generation,
                p.entries,
                p.to.phase
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => say_err!("fw: {name}: writing the next phase ahead of `fw switch`: {e:#}"),
            Err(e) => say_err!("fw: {name}: writing the next phase ahead of `fw switch` panicked: {e}"),
        }
    }

    /// The daemon stops: waits for a write in progress (it holds the lock
    /// `fw stop` waits for; what it wrote goes with the maps).
    pub async fn abandon(&mut self) {
        self.job.abandon().await;
    }
}

/// The phase after `enforced` in `phases` (the policy's order), the first
/// after the last; `None` when the policy has no other phase.
pub fn next_phase(phases: &[String], enforced: &str) -> Option<String> {
    let at = phases.iter().position(|p| p == enforced)?;
    let next = &phases[(at + 1) % phases.len()];
    (next != enforced).then(|| next.clone())
}

#[cfg(test)]
mod tests {
    use super::next_phase;

    #[test]
    fn the_phase_written_ahead_is_the_next_in_the_policy_and_wraps() {
        let phases: Vec<String> = ["install", "runtime", "maintenance"].map(String::from).to_vec();
        assert_eq!(next_phase(&phases, "install").as_deref(), Some("runtime"));
        assert_eq!(next_phase(&phases, "runtime").as_deref(), Some("maintenance"));
        assert_eq!(next_phase(&phases, "maintenance").as_deref(), Some("install"));
        assert_eq!(next_phase(&phases[..1], "install"), None, "a policy of one phase has nothing to write ahead");
        assert_eq!(next_phase(&phases, "gone"), None, "a phase the policy no longer has");
    }
}
