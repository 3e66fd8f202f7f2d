//! Changes to a running instance, each under the instance lock, each
//! all-or-nothing: a phase switch, its confirmation, and its rollback.
//!
//! A switch compiles first (bad input changes nothing), writes the new
//! phase under the next generation (no packet matches it yet), publishes it
//! with one map write, then deletes the previous generation, or, with
//! `--confirm`, keeps it so that the rollback is one map write too.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::PerCpuValues;
use fw_common::Counter;

use crate::{
    apply,
    loader::{CounterMaps, PolicyMaps},
    lock, policy_source,
    state::{Enforced, InstanceState, PendingConfirm},
};

/// What `fw switch` asks for.
#[derive(Clone, Debug)]
pub struct SwitchRequest {
    pub phase: String,
    /// Another policy file (default: the one enforced).
    pub policy: Option<String>,
    pub env_file: Option<PathBuf>,
    /// Roll back unless confirmed within this many seconds.
    pub confirm_secs: Option<u64>,
}

#[derive(Debug)]
pub struct SwitchOutcome {
    pub from: Enforced,
    pub to: Enforced,
    /// Compile + write + activate + cleanup.
    pub elapsed: Duration,
    /// Entries written for the new generation.
    pub written: usize,
    /// Entries of the old generation deleted (0 while awaiting confirmation).
    pub removed: usize,
    pub deadline: Option<u64>,
}

pub fn load_state(name: &str) -> Result<InstanceState> {
    InstanceState::load(name)?.ok_or_else(|| anyhow::anyhow!("no fw instance named {name} (see `fw status`)"))
}

/// Compiles and applies a phase switch.
pub fn switch(name: &str, request: &SwitchRequest) -> Result<SwitchOutcome> {
    let started = Instant::now();
    let _lock = lock::lock(name)?;
    let mut state = load_state(name)?;
    if let Some(pending) = &state.pending {
        bail!(
            "the switch to {} awaits `fw confirm --name {name}` (it rolls back to {} at unix time {}): confirm it or let it roll back first",
            state.enforced.phase,
            pending.previous.phase,
            pending.deadline
        );
    }
    let policy = request.policy.clone().unwrap_or_else(|| state.enforced.policy.clone());
    let env_file = request.env_file.clone().or_else(|| state.enforced.env_file.as_ref().map(PathBuf::from));
    let loaded = policy_source::load_phase(&policy, env_file.as_deref(), &request.phase)?;
    let mut compiled = loaded.compiled;
    compiled.settings.audit |= state.audit_override;

    let mut maps = PolicyMaps::open(name)?;
    let old = apply::active_generation(&maps)?;
    let new = next_generation(state.highest_generation.max(old), old);
    if let Err(e) = apply::write_generation(&mut maps, &compiled, new) {
        // Leave nothing of the half-written generation behind.
        let _ = apply::delete_generation(&mut maps, new);
        return Err(e).context("the switch was not applied");
    }
    apply::activate(&mut maps, new)?;
    let written = compiled.addr4.len() + compiled.addr6.len() + compiled.ports.len();

    let from = state.enforced.clone();
    let to = Enforced {
        policy: loaded.source,
        policy_name: loaded.policy_name,
        env_file: policy_source::env_file(env_file.as_deref()).map(|p| p.display().to_string()),
        phase: request.phase.clone(),
        generation: new,
        audit: compiled.settings.audit,
        rules: compiled.rules,
    };
    if to.rules != from.rules {
        // Rule ids name other rules now: old counts would be misattributed.
        zero_rule_counters(name, from.rules.len().max(to.rules.len()))?;
    }
    let (removed, deadline) = match request.confirm_secs {
        Some(secs) => {
            let deadline = crate::unix_now() + secs;
            state.pending = Some(PendingConfirm { deadline, previous: from.clone() });
            (0, Some(deadline))
        }
        None => (apply::delete_generation(&mut maps, old)?, None),
    };
    state.enforced = to.clone();
    state.highest_generation = new;
    state.save()?;
    Ok(SwitchOutcome { from, to, elapsed: started.elapsed(), written, removed, deadline })
}

/// Keeps the switch awaiting confirmation; deletes the previous generation.
pub fn confirm(name: &str) -> Result<Enforced> {
    let _lock = lock::lock(name)?;
    let mut state = load_state(name)?;
    let Some(pending) = state.pending.take() else {
        bail!("nothing to confirm: no switch of {name} awaits confirmation");
    };
    let mut maps = PolicyMaps::open(name)?;
    apply::delete_generation(&mut maps, pending.previous.generation)?;
    state.save()?;
    Ok(state.enforced)
}

/// Rolls back a switch whose confirmation deadline has passed. Returns the
/// phase that is enforced again, or `None` when nothing was due.
pub fn rollback_if_due(name: &str, now: u64) -> Result<Option<Enforced>> {
    // Cheap check without the lock first: this runs every second.
    match InstanceState::load(name)? {
        Some(InstanceState { pending: Some(p), .. }) if now >= p.deadline => {}
        _ => return Ok(None),
    }
    let _lock = lock::lock(name)?;
    let mut state = load_state(name)?;
    let Some(pending) = state.pending.take() else { return Ok(None) };
    if now < pending.deadline {
        return Ok(None);
    }
    let mut maps = PolicyMaps::open(name)?;
    apply::activate(&mut maps, pending.previous.generation)?;
    apply::delete_generation(&mut maps, state.enforced.generation)?;
    if pending.previous.rules != state.enforced.rules {
        zero_rule_counters(name, pending.previous.rules.len().max(state.enforced.rules.len()))?;
    }
    state.enforced = pending.previous;
    state.save()?;
    Ok(Some(state.enforced))
}

/// A generation not used since the counter last wrapped (flows remember
/// the generation that admitted them: reusing a live number would let a
/// rolled-back phase's flows pass unchecked), never 0 (which the kernel
/// reads as "no policy"), whose `FW_PHASES` slot (`generation & 1`) is not
/// the active one's.
fn next_generation(highest: u32, active: u32) -> u32 {
    let mut next = highest.wrapping_add(1);
    while next == 0 || next & 1 == active & 1 {
        next = next.wrapping_add(1);
    }
    next
}

fn zero_rule_counters(name: &str, rules: usize) -> Result<()> {
    let mut counters = CounterMaps::open(name)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    for id in 0..rules as u32 {
        let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])?;
        counters.rule_stats.set(id, zeros, 0).context("zeroing rule counters")?;
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::next_generation;

    #[test]
    fn generations_are_fresh_and_never_share_the_active_slot() {
        assert_eq!(next_generation(1, 1), 2);
        // After a rollback from 2 to 1, 2 was used: the next is 4, not 3
        // (3 would share slot 1 with the active generation 1).
        assert_eq!(next_generation(2, 1), 4);
        assert_eq!(next_generation(4, 4), 5);
        for (highest, active) in [(1, 1), (2, 1), (7, 3), (10, 10), (9, 4)] {
            let next = next_generation(highest, active);
            assert!(next > highest && next & 1 != active & 1);
        }
        // At the top of the range it wraps, skipping 0.
        assert_eq!(next_generation(u32::MAX, u32::MAX), 2);
        assert_eq!(next_generation(u32::MAX - 1, u32::MAX - 1), u32::MAX);
    }
}
