//! The transactions on an instance's policy: switch, confirm, rollback, and
//! the repair that runs before each of them. Written against the
//! [`PolicyStore`] and [`Records`] traits, so that the crash tests can stop
//! them between any two steps.
//!
//! The kernel is the truth; the state file is a journal that explains it:
//!
//! 1. Reserve: the new generation number (higher than any number the maps,
//!    the flows or the state know) is saved before anything is written, so
//!    an interrupted switch's number is never reused on top of its leftovers.
//! 2. Write the new generation (no packet is judged by it yet).
//! 3. Journal: `switching = {to, deadline}` is saved.
//! 4. Activate: one map write. This is the commit point.
//! 5. Record the outcome (`enforced = to`, `pending` for `--confirm`), then
//!    delete every generation that is neither active nor the pending
//!    rollback target (or leave that to the daemon, which does it within a
//!    second: [`SwitchPlan::defer_collection`]), then update the boot
//!    record.
//!
//! Entries of a generation no packet is judged by open nothing: generation
//! numbers are never reused, so they can never become active again. What
//! is left of them costs memory and room in the maps until collected, and
//! `collected` in the state file says whether any may be left.
//!
//! A *prepared* generation ([`prepare`], the `fw run` daemon's) is steps 1
//! and 2 of a switch done ahead, then recorded (`prepared` in the state,
//! saved only once every entry is written): a switch asking for exactly its
//! tables starts at step 3; any other switch first discards it. Every
//! collection keeps it, and nothing but a switch activates it.
//!
//! [`reconcile`] runs first under the instance lock in every command and in
//! the daemon: it reads the active generation from the kernel and finishes
//! or discards whatever step 1-5 or a rollback/confirm was interrupted at.
//! No step ever writes or deletes the active generation.

use std::collections::BTreeSet;

use anyhow::{bail, Context, Result};

use super::{
    records::{BootRecord, PolicyCopy, Records},
    store::PolicyStore,
};
use crate::{
    instance::state::{Enforced, InstanceState, PendingConfirm, Prepared, Switching},
    policy::compile::tables::CompiledPhase,
};

/// What the kernel's active generation means for a state file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The kernel enforces `state.enforced`.
    Agrees,
    /// A switch was activated but not recorded: the kernel enforces
    /// `state.switching.to`.
    SwitchActivated,
    /// A switch was journaled but never activated: the kernel still
    /// enforces `state.enforced`; `switching` is to be discarded.
    SwitchNotActivated,
    /// A rollback was activated but not recorded: the kernel enforces
    /// `state.pending.previous`.
    RolledBack,
    /// No generation is active: every packet is dropped.
    NoPolicy,
    /// A generation the state does not describe.
    Unknown(u32),
}

pub fn read(state: &InstanceState, active: u32) -> Reading {
    if active == 0 {
        return Reading::NoPolicy;
    }
    if let Some(to) = state.switching.as_ref().map(|s| &s.to) {
        if active == to.generation {
            return Reading::SwitchActivated;
        }
        if active == state.enforced.generation {
            return Reading::SwitchNotActivated;
        }
    }
    if active == state.enforced.generation {
        return Reading::Agrees;
    }
    if state.pending.as_ref().is_some_and(|p| p.previous.generation == active) {
        return Reading::RolledBack;
    }
    Reading::Unknown(active)
}

/// What the kernel enforces, as far as the state knows (read-only: `fw
/// status`, `fw explain`, metrics). `None`: the state does not describe it.
pub fn effective(state: &InstanceState, active: u32) -> Option<&Enforced> {
    match read(state, active) {
        Reading::Agrees | Reading::SwitchNotActivated => Some(&state.enforced),
        Reading::SwitchActivated => state.switching.as_ref().map(|s| &s.to),
        Reading::RolledBack => state.pending.as_ref().map(|p| &p.previous),
        Reading::NoPolicy | Reading::Unknown(_) => None,
    }
}

/// Brings the state file in line with the kernel, finishing or discarding
/// an interrupted transaction, then deletes orphaned generations and brings
/// the boot record up to date. Returns the state and what was repaired (one
/// line each, for the log).
pub fn reconcile(store: &mut dyn PolicyStore, records: &mut dyn Records) -> Result<(InstanceState, Vec<String>)> {
    let mut state = records.load_state()?.context("the instance has pins but no state file")?;
    crate::mark("reconcile: state read");
    let active = store.active()?;
    let mut notes = Vec::new();
    match read(&state, active) {
        Reading::Agrees => {}
        Reading::SwitchNotActivated => {
            let to = state.switching.take().expect("read() saw it");
            // What it wrote is garbage (already so since its reserve).
            state.collected = false;
            records.save_state(&state)?;
            notes.push(format!(
                "a switch to phase {} (generation {}) was interrupted before it took effect: discarded; phase {} stays",
                to.to.phase, to.to.generation, state.enforced.phase
            ));
        }
        Reading::SwitchActivated => {
            let from = finish_switch(store, records, &mut state)?;
            notes.push(format!(
                "a switch from phase {} to {} (generation {}) was interrupted after it took effect: completed",
                from.phase, state.enforced.phase, state.enforced.generation
            ));
        }
        Reading::RolledBack => {
            let undone = finish_rollback(store, records, &mut state)?;
            notes.push(format!(
                "a rollback from phase {} to {} (generation {}) was interrupted after it took effect: completed",
                undone.phase, state.enforced.phase, state.enforced.generation
            ));
        }
        Reading::NoPolicy => bail!("no policy generation is active in the kernel: every packet is dropped"),
        Reading::Unknown(generation) => {
            let phase = store.read(generation)?;
            notes.push(format!(
                "the kernel enforces generation {generation}, which the state file does not describe (it said {}): \
                 the state is rebuilt from the kernel; rule names are unknown until the next `fw switch`",
                state.enforced.generation
            ));
            state.enforced = Enforced {
                policy: "unknown (rebuilt from the kernel)".into(),
                policy_name: "unknown".into(),
                env_file: None,
                phase: "unknown".into(),
                generation,
                audit: phase.settings.audit,
                rules: Vec::new(),
            };
            state.pending = None;
            state.switching = None;
            state.prepared = None;
            state.highest_generation = state.highest_generation.max(generation);
            state.collected = false;
            records.save_state(&state)?;
        }
    }
    if let Some(prepared) = &state.prepared {
        // Written into the slot the next switch would write, while nothing
        // else claimed it: anything else (a state edited by hand, an older
        // fw's switch) makes it garbage.
        let to = prepared.to.generation;
        if to & 1 == active & 1 || state.pending.is_some() || state.switching.is_some() {
            notes.push(format!(
                "the phase {} written ahead (generation {to}) no longer fits: discarded",
                prepared.to.phase
            ));
            state.prepared = None;
            state.collected = false;
            records.save_state(&state)?;
        }
    }
    if !state.collected {
        let removed = collect_garbage(store, records, &mut state)?;
        crate::mark("reconcile: unused generations deleted");
        if removed > 0 {
            notes.push(format!("removed {removed} entries of generations no longer in use"));
        }
    }
    sync_boot_record(records, &state)?;
    Ok((state, notes))
}

/// What a switch will enforce; the generation is chosen by [`switch`].
pub struct SwitchPlan {
    pub to: Enforced,
    pub compiled: CompiledPhase,
    pub copy: PolicyCopy,
    /// Unix seconds of the rollback deadline (`--confirm`).
    pub confirm_deadline: Option<u64>,
    /// Return once the switch is recorded, leaving the old generation's
    /// entries to whoever reconciles next: the daemon, which does within a
    /// second. Only when a daemon runs; without one, the next command would.
    pub defer_collection: bool,
}

/// Who wrote the entries of the generation a switch activated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The switch, this many.
    Now(usize),
    /// [`prepare`], ahead of the switch, this many.
    Ahead(usize),
}

#[derive(Debug)]
pub struct Switched {
    pub from: Enforced,
    pub to: Enforced,
    /// Entries of the new generation, and who wrote them.
    pub written: Written,
    /// Repairs [`reconcile`] made first.
    pub notes: Vec<String>,
}

pub fn switch(store: &mut dyn PolicyStore, records: &mut dyn Records, plan: SwitchPlan) -> Result<Switched> {
    let (mut state, notes) = reconcile(store, records)?;
    crate::mark("switch: reconciled");
    if let Some(pending) = &state.pending {
        bail!(
            "the switch to {} awaits `fw confirm --name {}` (it rolls back to {} at unix time {}): confirm it or let it roll back first",
            state.enforced.phase,
            state.name,
            pending.previous.phase,
            pending.deadline
        );
    }
    let (new, written) = match take_prepared(store, records, &mut state, &plan.to, &plan.compiled, &plan.copy)? {
        Some(prepared) => {
            crate::mark("switch: the generation written ahead is taken");
            (prepared.to.generation, Written::Ahead(prepared.entries))
        }
        None => {
            let (new, entries) = reserve_and_write(store, records, &mut state, &plan.compiled, &plan.copy)
                .context("the switch was not applied")?;
            crate::mark("switch: generation written");
            (new, Written::Now(entries))
        }
    };
    // 3. Journal. From the activation on, the old generation is garbage.
    let to = Enforced { generation: new, ..plan.to };
    state.switching = Some(Switching { to, confirm_deadline: plan.confirm_deadline });
    state.collected = false;
    records.save_state(&state)?;
    crate::mark("switch: journaled");
    // 4. Commit.
    store.activate(new)?;
    crate::mark("switch: activated");
    // 5. Record.
    let from = finish_switch(store, records, &mut state)?;
    if !plan.defer_collection {
        collect_garbage(store, records, &mut state)?;
        crate::mark("switch: old generation deleted");
    }
    sync_boot_record(records, &state)?;
    crate::mark("switch: boot record");
    Ok(Switched { from, to: state.enforced, written, notes })
}

/// Steps 1 and 2 of a switch (and of [`prepare`]): reserves a fresh
/// generation in the slot no packet reads, saves the policy copy, writes
/// the entries. Returns the generation and how many entries. On an error
/// nothing of it is left (or the next reconcile collects it: the state
/// says not collected since the reserve).
fn reserve_and_write(
    store: &mut dyn PolicyStore,
    records: &mut dyn Records,
    state: &mut InstanceState,
    compiled: &CompiledPhase,
    copy: &PolicyCopy,
) -> Result<(u32, usize)> {
    let old = state.enforced.generation;
    // No other generation is in the maps: `reconcile` just deleted every
    // one but the enforced (no rollback is pending, nothing is prepared),
    // under the lock.
    let highest = state.highest_generation.max(old).max(store.highest_flow_generation()?);
    let new = next_generation(highest, old);
    // 1. Reserve.
    state.highest_generation = new;
    state.collected = false;
    records.save_state(state)?;
    if !state.ephemeral {
        records.save_copy(new, copy)?;
    }
    crate::mark("switch: generation reserved, policy copy saved");
    // 2. Write.
    match store.write(compiled, new) {
        Ok(entries) => Ok((new, entries)),
        Err(e) => {
            // Leave nothing of it behind (if this fails too, the next
            // reconcile collects it).
            let _ = store.delete(&|g| g == new);
            Err(e)
        }
    }
}

/// The generation written ahead, taken out of the state when the switch
/// asks for exactly it: the same policy, env file, phase, rules and audit
/// mode (`to`), the same texts (the boot record compiles its copy), and
/// the tables a write would put in the kernel now. Otherwise it is
/// discarded and deleted, so that the slot and the maps' room are the
/// switch's (a state with no `prepared` changes nothing).
fn take_prepared(
    store: &mut dyn PolicyStore,
    records: &mut dyn Records,
    state: &mut InstanceState,
    to: &Enforced,
    compiled: &CompiledPhase,
    copy: &PolicyCopy,
) -> Result<Option<Prepared>> {
    let Some(prepared) = state.prepared.take() else { return Ok(None) };
    let same_request = Enforced { generation: to.generation, ..prepared.to.clone() } == *to
        && prepared.copy == copy_digest(copy)
        && prepared.tables == crate::kernel::apply::written_digest(compiled)?;
    if same_request {
        return Ok(Some(prepared));
    }
    state.collected = false;
    records.save_state(state)?;
    collect_garbage(store, records, state)?;
    crate::mark("switch: the generation written ahead (another phase) deleted");
    Ok(None)
}

/// The SHA-256 (hex) of a policy copy's texts (the policy's length first:
/// no two pairs of texts hash the same bytes).
fn copy_digest(copy: &PolicyCopy) -> String {
    crate::sha256_hex(&[
        &(copy.policy_text.len() as u64).to_le_bytes(),
        copy.policy_text.as_bytes(),
        &[u8::from(copy.env_text.is_some())],
        copy.env_text.as_deref().unwrap_or("").as_bytes(),
    ])
}

/// What [`prepare`] writes ahead.
pub struct PreparePlan {
    /// The enforced generation the phase was chosen after: if a switch
    /// came first, the choice is stale and nothing is written.
    pub after: u32,
    pub to: Enforced,
    pub compiled: CompiledPhase,
    pub copy: PolicyCopy,
}

/// Writes `plan` ahead of the switch to it, under a fresh generation in the
/// slot no packet reads, and records it as `prepared` (see the module's
/// doc). Does nothing (`None`) while a switch awaits confirmation (its
/// rollback target holds that slot), when something is prepared already,
/// when another generation is enforced than the one `plan` was chosen
/// after, or for an ephemeral instance. Returns the entries written.
pub fn prepare(store: &mut dyn PolicyStore, records: &mut dyn Records, plan: PreparePlan) -> Result<Option<Prepared>> {
    let (mut state, _) = reconcile(store, records)?;
    if state.pending.is_some() || state.prepared.is_some() || state.ephemeral || state.enforced.generation != plan.after
    {
        return Ok(None);
    }
    let tables = crate::kernel::apply::written_digest(&plan.compiled)?;
    let (generation, entries) = reserve_and_write(store, records, &mut state, &plan.compiled, &plan.copy)?;
    // Every entry is in the kernel: record it. The maps hold the enforced
    // generation and this one (reconcile collected the rest).
    let copy = copy_digest(&plan.copy);
    let prepared = Prepared { to: Enforced { generation, ..plan.to }, tables, copy, entries };
    state.prepared = Some(prepared.clone());
    state.collected = true;
    records.save_state(&state)?;
    Ok(Some(prepared))
}

/// Step 5 of a switch whose generation is active, but the collection of
/// the old generation and the boot record (the caller's). Returns what it
/// replaced.
fn finish_switch(
    store: &mut dyn PolicyStore,
    records: &mut dyn Records,
    state: &mut InstanceState,
) -> Result<Enforced> {
    let switching = state.switching.take().expect("a switch in progress");
    let from = std::mem::replace(&mut state.enforced, switching.to);
    if from.rules != state.enforced.rules {
        // Rule ids name other rules now: old counts would be misattributed.
        store.zero_rule_counters(from.rules.len().max(state.enforced.rules.len()))?;
    }
    crate::mark("switch: rule counters zeroed");
    state.pending = switching.confirm_deadline.map(|deadline| PendingConfirm { deadline, previous: from.clone() });
    // Not collected since the reserve (step 1) saved so.
    debug_assert!(!state.collected);
    records.save_state(state)?;
    crate::mark("switch: recorded");
    Ok(from)
}

/// Keeps the switch awaiting confirmation. Returns what is enforced.
pub fn confirm(store: &mut dyn PolicyStore, records: &mut dyn Records) -> Result<(Enforced, Vec<String>)> {
    let (mut state, notes) = reconcile(store, records)?;
    if state.pending.take().is_none() {
        bail!(
            "nothing to confirm: no switch of {} awaits confirmation (phase {}, generation {} is enforced)",
            state.name,
            state.enforced.phase,
            state.enforced.generation
        );
    }
    // Confirmed from here on; the previous generation becomes garbage.
    state.collected = false;
    records.save_state(&state)?;
    collect_garbage(store, records, &mut state)?;
    sync_boot_record(records, &state)?;
    Ok((state.enforced, notes))
}

/// Rolls back a switch whose confirmation deadline has passed. Returns the
/// phase enforced again, or `None` when nothing was due.
pub fn rollback_if_due(
    store: &mut dyn PolicyStore,
    records: &mut dyn Records,
    now: u64,
) -> Result<(Option<Enforced>, Vec<String>)> {
    let (mut state, notes) = reconcile(store, records)?;
    let Some(pending) = &state.pending else { return Ok((None, notes)) };
    if now < pending.deadline {
        return Ok((None, notes));
    }
    store.activate(pending.previous.generation)?;
    finish_rollback(store, records, &mut state)?;
    Ok((Some(state.enforced), notes))
}

/// The rest of a rollback whose target is active. Returns what was undone.
fn finish_rollback(
    store: &mut dyn PolicyStore,
    records: &mut dyn Records,
    state: &mut InstanceState,
) -> Result<Enforced> {
    let pending = state.pending.take().expect("a pending rollback");
    let undone = std::mem::replace(&mut state.enforced, pending.previous);
    if undone.rules != state.enforced.rules {
        store.zero_rule_counters(undone.rules.len().max(state.enforced.rules.len()))?;
    }
    // The undone generation is garbage from here on.
    state.collected = false;
    records.save_state(state)?;
    collect_garbage(store, records, state)?;
    sync_boot_record(records, state)?;
    Ok(undone)
}

/// Deletes every generation but the active one, the pending rollback
/// target and the one prepared, then records that the maps hold nothing else. Runs only on a
/// reconciled state, so `enforced` is the active one.
fn collect_garbage(store: &mut dyn PolicyStore, records: &mut dyn Records, state: &mut InstanceState) -> Result<usize> {
    let keep: BTreeSet<u32> = [
        Some(state.enforced.generation),
        state.pending.as_ref().map(|p| p.previous.generation),
        state.prepared.as_ref().map(|p| p.to.generation),
    ]
    .into_iter()
    .flatten()
    .collect();
    let active = store.active()?;
    anyhow::ensure!(keep.contains(&active), "internal error: generation {active} is active but not kept");
    let removed = store.delete(&|g| !keep.contains(&g))?;
    state.collected = true;
    records.save_state(state)?;
    Ok(removed)
}

/// Makes the boot record name the confirmed generation (none while a switch
/// awaits confirmation: a reboot then comes back in the previous phase).
fn sync_boot_record(records: &mut dyn Records, state: &InstanceState) -> Result<()> {
    if state.ephemeral || state.pending.is_some() || state.switching.is_some() {
        return Ok(());
    }
    let e = &state.enforced;
    let boot = records.boot_generation()?;
    if boot != Some(e.generation) && records.has_copy(e.generation) {
        records.save_boot(&BootRecord {
            generation: e.generation,
            policy: e.policy.clone(),
            policy_name: e.policy_name.clone(),
            phase: e.phase.clone(),
            env_file: e.env_file.clone(),
        })?;
    }
    let boot = records.boot_generation()?;
    // The copy of the generation written ahead becomes the boot record's
    // when a switch activates it.
    let ahead = state.prepared.as_ref().map(|p| p.to.generation);
    let keep: Vec<u32> = [Some(e.generation), boot, ahead].into_iter().flatten().collect();
    records.keep_copies(&keep)
}

/// The generation after `highest` (every number up to it may be referenced
/// by leftovers or flows), never 0 (which the kernel reads as "no policy"),
/// whose `FW_PHASES` slot (`generation & 1`) is not the active one's.
pub fn next_generation(highest: u32, active: u32) -> u32 {
    let mut next = highest.wrapping_add(1);
    while next == 0 || next & 1 == active & 1 {
        next = next.wrapping_add(1);
    }
    next
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
