//! The lifecycle of one enforcer instance, under the CLI: start, adopt,
//! switch, confirm, rollback, stop. Every command and the daemon go through
//! here; the CLI only parses arguments and prints.
//!
//! Each change runs under the instance lock ([`crate::instance::lock`]) and starts
//! with [`txn::reconcile`], which finishes or discards whatever an earlier
//! process was interrupted at. The transactions themselves ([`txn`]) see
//! the kernel through [`store::PolicyStore`] and the disk through
//! [`records::Records`], so the crash tests can stop them at every step.

pub mod failpoint;
pub mod lock;
pub mod paths;
pub mod records;
pub mod state;
pub mod store;
#[cfg(test)]
mod tests;
pub mod txn;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    kernel::{
        bpffs, linkinfo,
        loader::{self, AttachMode, Hook, PolicyMaps},
    },
    policy::{compile::tables::CompiledPhase, Warning},
    source::{self, LoadedPhase},
};
use records::{FileRecords, Records};
use state::{Enforced, InstanceState};
use store::{KernelStore, PolicyStore};

/// The longest `--confirm` accepted: a rollback timer is for minutes, and a
/// bound keeps every deadline far from overflowing.
pub const MAX_CONFIRM_SECS: u64 = 7 * 24 * 3600;

/// The state file of `name`, or an error naming the instance.
pub fn load_state(name: &str) -> Result<InstanceState> {
    found(name, InstanceState::load(name)?)
}

fn found(name: &str, state: Option<InstanceState>) -> Result<InstanceState> {
    state.ok_or_else(|| anyhow!("no fw instance named {name} (see `fw status`)"))
}

/// What the kernel enforces for `name` right now, as far as the state knows
/// (read-only, no lock: `fw status`, `fw explain`, metrics, events).
pub fn view(name: &str) -> Result<(InstanceState, u32, Option<Enforced>)> {
    let state = load_state(name)?;
    let active = KernelStore::open(name)?.active()?;
    let enforced = txn::effective(&state, active).cloned();
    Ok((state, active, enforced))
}

/// The active generation's tables read back from the kernel, with the rule
/// names the state knows: what `fw explain --name` and `fw export --name`
/// judge by.
pub fn read_enforced(name: &str) -> Result<CompiledPhase> {
    let store = KernelStore::open(name)?;
    let state = load_state(name)?;
    let active = store.active()?;
    let mut phase = store.read(active)?;
    if let Some(e) = txn::effective(&state, active) {
        phase.phase = e.phase.clone();
        phase.rules = e.rules.clone();
    }
    Ok(phase)
}

/// Repairs an interrupted transaction of `name` (under the lock).
pub fn reconcile(name: &str) -> Result<(InstanceState, Vec<String>)> {
    let _lock = lock::lock(name)?;
    txn::reconcile(&mut KernelStore::open(name)?, &mut FileRecords::new(name))
}

/// What `fw switch` asks for.
#[derive(Clone, Debug)]
pub struct SwitchRequest {
    pub phase: String,
    /// Another policy file (default: the one enforced).
    pub policy: Option<String>,
    pub env_file: Option<PathBuf>,
    /// Roll back unless confirmed within this many seconds.
    pub confirm_secs: Option<u64>,
    /// Apply a runtime phase that lets everything out (see [`refuse_open_egress`]).
    pub force: bool,
    /// The `fw run` daemon of the instance runs and deletes the old
    /// generation after the switch ([`txn::SwitchPlan::defer_collection`]).
    pub defer_collection: bool,
}

#[derive(Debug)]
pub struct SwitchOutcome {
    pub from: Enforced,
    pub to: Enforced,
    pub elapsed: std::time::Duration,
    pub written: txn::Written,
    pub deadline: Option<u64>,
    /// Loading the policy had these to say (the same as `fw check`).
    pub warnings: Vec<Warning>,
    /// Repairs of an interrupted earlier transaction.
    pub notes: Vec<String>,
}

/// Compiles `request` (bad input changes nothing), then switches.
pub fn switch(name: &str, request: &SwitchRequest) -> Result<SwitchOutcome> {
    let started = std::time::Instant::now();
    let deadline = request
        .confirm_secs
        .map(|secs| {
            (secs <= MAX_CONFIRM_SECS)
                .then(|| crate::unix_now().checked_add(secs))
                .flatten()
                .ok_or_else(|| anyhow!("--confirm {secs}: at most {MAX_CONFIRM_SECS} seconds (a week)"))
        })
        .transpose()?;
    crate::mark("switch: start");
    // Which policy, env file and audit mode; the rules come with the
    // reconcile, under the lock.
    let current = found(name, InstanceState::load_without_rules(name)?)?;
    crate::mark("switch: state read");
    let policy = request.policy.clone().unwrap_or_else(|| current.enforced.policy.clone());
    let env_file = request.env_file.clone().or_else(|| current.enforced.env_file.as_ref().map(PathBuf::from));
    let mut loaded = source::load_phase_kept(&paths::kept_dir(name), &policy, env_file.as_deref(), &request.phase)?;
    loaded.compiled.settings.audit |= current.audit_override;
    crate::mark("switch: policy parsed and compiled");
    let warnings = std::mem::take(&mut loaded.warnings);
    if !request.force {
        refuse_open_egress(&warnings)?;
    }

    let _lock = lock::lock(name)?;
    let mut store = KernelStore::open(name)?;
    let plan = txn::SwitchPlan {
        to: enforced(&loaded, &request.phase, 0),
        compiled: loaded.compiled,
        copy: loaded.copy,
        confirm_deadline: deadline,
        defer_collection: request.defer_collection,
    };
    let switched = txn::switch(&mut store, &mut FileRecords::new(name), plan)?;
    Ok(SwitchOutcome {
        from: switched.from,
        to: switched.to,
        elapsed: started.elapsed(),
        written: switched.written,
        deadline,
        warnings,
        notes: switched.notes,
    })
}

/// Writes the phase `next` names after the enforced one ahead of the
/// switch to it (the daemon's, once the phases are compiled ahead): see
/// [`txn::prepare`]. The choice is made from the state read now and
/// written only if no switch came meanwhile. `None`: nothing written (no
/// next phase, a switch awaits confirmation or came first, something is
/// written ahead already, or the instance is ephemeral).
pub fn prepare(name: &str, next: impl Fn(&str) -> Option<String>) -> Result<Option<state::Prepared>> {
    let current = found(name, InstanceState::load_without_rules(name)?)?;
    if current.pending.is_some() || current.prepared.is_some() || current.ephemeral {
        return Ok(None);
    }
    let Some(phase) = next(&current.enforced.phase) else { return Ok(None) };
    let policy = current.enforced.policy.clone();
    let env_file = current.enforced.env_file.as_ref().map(PathBuf::from);
    // The same load as `fw switch PHASE` without --policy or --env-file.
    let mut loaded = source::load_phase_kept(&paths::kept_dir(name), &policy, env_file.as_deref(), &phase)?;
    loaded.compiled.settings.audit |= current.audit_override;
    let _lock = lock::lock(name)?;
    let plan = txn::PreparePlan {
        after: current.enforced.generation,
        to: enforced(&loaded, &phase, 0),
        compiled: loaded.compiled,
        copy: loaded.copy,
    };
    txn::prepare(&mut KernelStore::open(name)?, &mut FileRecords::new(name), plan)
}

/// A runtime phase whose egress lets every address out on every port is
/// not "close all outbound", whatever the operator meant (an env value
/// `any`, a CIDR of the whole family): applying it takes `--force`.
pub fn refuse_open_egress(warnings: &[Warning]) -> Result<()> {
    if let Some(open) = warnings.iter().find(|w| w.is_open_egress()) {
        bail!("{open}; this is not \"close all outbound\": fix the policy, or pass --force to apply it anyway");
    }
    Ok(())
}

/// Keeps the switch awaiting confirmation.
pub fn confirm(name: &str) -> Result<(Enforced, Vec<String>)> {
    let _lock = lock::lock(name)?;
    txn::confirm(&mut KernelStore::open(name)?, &mut FileRecords::new(name))
}

/// Rolls back an unconfirmed switch whose deadline passed (the daemon calls
/// this every second).
pub fn rollback_if_due(name: &str, now: u64) -> Result<(Option<Enforced>, Vec<String>)> {
    // Cheap check without the lock first: nothing pending, nothing to do,
    // unless a journal says an earlier process was interrupted.
    let state = load_state(name)?;
    let due = state.pending.as_ref().is_some_and(|p| now >= p.deadline);
    if !due && state.switching.is_none() {
        return Ok((None, Vec::new()));
    }
    let _lock = lock::lock(name)?;
    txn::rollback_if_due(&mut KernelStore::open(name)?, &mut FileRecords::new(name), now)
}

/// What a fresh start enforces, and how.
pub struct StartRequest {
    pub name: String,
    pub iface: String,
    pub loaded: LoadedPhase,
    pub phase: String,
    /// `--audit`: every phase in audit mode.
    pub audit: bool,
    pub cgroup: Option<PathBuf>,
    /// The kernel object, loading since before the policy was compiled.
    pub kernel: loader::Preloading,
    /// A temporary instance (`fw learn`): no boot record.
    pub ephemeral: bool,
}

/// The boot record of `name`, as a policy to start with: the last confirmed
/// phase, compiled from the text kept when it was confirmed.
pub fn boot_policy(name: &str) -> Result<Option<(records::BootRecord, LoadedPhase)>> {
    let Some((record, copy)) = FileRecords::new(name).load_boot()? else { return Ok(None) };
    let env = record.env_file.as_deref().map(Path::new);
    let loaded = source::load_phase_text(&record.policy, env, copy, &record.phase)
        .with_context(|| format!("the boot record {} no longer compiles", paths::boot_dir(name).display()))?;
    Ok(Some((record, loaded)))
}

/// A fresh start. Everything that can fail on bad input has failed before
/// (the request holds a compiled phase); a start that fails here removes
/// what it made. The order makes every interruption recoverable by the
/// next `fw run`: until the links are attached and the state saved the
/// instance enforces nothing and is started afresh ([`leftover`]); after
/// that it is adopted.
pub fn start(request: StartRequest) -> Result<InstanceState> {
    let StartRequest { name, iface, loaded, phase, audit, cgroup, kernel, ephemeral } = request;
    let mut compiled = loaded.compiled;
    compiled.settings.audit |= audit;
    let ifindex = ifindex(&iface)?;

    bpffs::ensure_mounted()?;
    std::fs::create_dir_all(paths::PIN_ROOT).with_context(|| format!("creating {}", paths::PIN_ROOT))?;
    let pin_dir = paths::pin_dir(&name);
    // Creating the pin directory is the lock against a concurrent start.
    std::fs::create_dir(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let mut cleanup = RemoveOnError { name: name.clone(), armed: true };

    let generation = 1;
    let mut ebpf = kernel.wait()?;
    crate::mark("start: programs loaded and verified");
    loader::pin_maps(&ebpf, &name)?;
    let mut store = KernelStore::from_maps(&name, PolicyMaps::take(&mut ebpf)?);
    let mut records = FileRecords::new(&name);
    if !ephemeral {
        records.save_copy(generation, &loaded.copy)?;
    }
    crate::mark("start: maps pinned, policy copy saved");
    store.write(&compiled, generation)?;
    crate::mark("start: generation written");
    store.activate(generation)?;
    loader::RouteMaps::open(&name)?.refresh(&iface)?;
    failpoint::step("attach");
    let attach_mode = loader::attach(&mut ebpf, &name, &iface)?;
    if let Some(dir) = &cgroup {
        loader::attach_cgroup(&mut ebpf, &name, dir)?;
    }
    crate::mark("start: activated and attached");
    let state = InstanceState {
        name: name.clone(),
        iface,
        ifindex,
        attach_mode,
        cgroup: cgroup.as_ref().map(|p| p.display().to_string()),
        audit_override: audit,
        started_at: crate::unix_now(),
        enforced: Enforced {
            audit: compiled.settings.audit,
            rules: compiled.rules,
            ..enforced_meta(&loaded.source, &loaded.env_file, &loaded.policy_name, &phase, generation)
        },
        ephemeral,
        highest_generation: generation,
        pending: None,
        switching: None,
        // The maps were created by this start and hold generation 1 only.
        collected: true,
        prepared: None,
    };
    records.save_state(&state)?;
    cleanup.armed = false;
    // From here on the instance is complete; the boot record follows.
    let _lock = lock::lock(&name)?;
    let (state, _) = txn::reconcile(&mut store, &mut records)?;
    crate::mark("start: recorded");
    Ok(state)
}

/// Pins found at `fw run`: what to do with them.
pub enum Leftover {
    /// A complete instance: adopt it.
    Instance,
    /// Pins that do not enforce (not both TCX links attached): a start or a
    /// stop interrupted. Removing them and starting afresh opens nothing, and
    /// the fresh start enforces the last confirmed phase.
    NotAttached,
    /// Links enforce but the state file is gone: rebuild it from the kernel.
    NoState,
}

/// Classifies the pins of `name`.
pub fn leftover(name: &str) -> Result<Leftover> {
    let state = InstanceState::load(name)?;
    if state.as_ref().is_some_and(|s| s.attach_mode != AttachMode::Tcx) {
        // clsact filters have no link to inspect; they stay until removed.
        return Ok(Leftover::Instance);
    }
    let live_links = Hook::ALL
        .iter()
        .filter(|hook| linkinfo::tcx_link_info(&hook.link_pin(name)).ok().flatten().is_some_and(|l| l.ifindex != 0))
        .count();
    // Both hooks or it does not enforce.
    Ok(match (state.is_some(), live_links == Hook::ALL.len()) {
        (true, _) => Leftover::Instance,
        (false, false) => Leftover::NotAttached,
        (false, true) => Leftover::NoState,
    })
}

/// Removes pins that enforce nothing (see [`Leftover::NotAttached`]).
pub fn discard_unattached(name: &str) -> Result<()> {
    let _lock = lock::lock(name)?;
    loader::detach(name, None, None)?;
    InstanceState::remove(name)
}

/// Writes a state file for pins whose state file is gone, then lets
/// [`txn::reconcile`] rebuild it from the kernel. When the kernel holds
/// exactly the tables of `candidate` (what this `fw run` would start), its
/// names are used.
pub fn rebuild_state(name: &str, iface: &str, candidate: Option<(&LoadedPhase, &str)>) -> Result<Vec<String>> {
    let _lock = lock::lock(name)?;
    let mut store = KernelStore::open(name)?;
    let active = store.active()?;
    let mut known = enforced_meta("unknown (rebuilt from the kernel)", &None, "unknown", "unknown", 0);
    if let Some((loaded, phase)) = candidate {
        let mut kernel = store.read(active)?;
        kernel.phase = loaded.compiled.phase.clone();
        kernel.rules = loaded.compiled.rules.clone();
        kernel.settings.audit = loaded.compiled.settings.audit;
        // `system` resolvers are read when written: compare the tables.
        kernel.dns = loaded.compiled.dns.clone();
        if kernel == loaded.compiled {
            known = Enforced { rules: loaded.compiled.rules.clone(), ..enforced(loaded, phase, active) };
        }
    }
    let audit = known.audit;
    let state = InstanceState {
        name: name.to_string(),
        iface: iface.to_string(),
        ifindex: ifindex(iface)?,
        attach_mode: AttachMode::Tcx,
        cgroup: None,
        audit_override: audit,
        started_at: crate::unix_now(),
        enforced: known,
        ephemeral: false,
        highest_generation: active,
        pending: None,
        switching: None,
        collected: false,
        prepared: None,
    };
    let mut records = FileRecords::new(name);
    records.save_state(&state)?;
    let (_, mut notes) = txn::reconcile(&mut store, &mut records)?;
    notes.insert(
        0,
        format!(
            "{}: the state file was missing; rebuilt from the kernel (generation {active})",
            paths::state_file(name).display()
        ),
    );
    Ok(notes)
}

/// Detaches `name` and removes its pins and state: the only way to stop
/// enforcing. Waits for a running switch (the instance lock). `forget`
/// also removes the boot record, so that a later start uses its arguments.
pub fn stop(name: &str, forget: bool) -> Result<Option<String>> {
    let _lock = lock::lock(name)?;
    let state = InstanceState::load(name)?;
    if state.is_none() && !paths::pin_dir(name).exists() {
        bail!("no fw instance named {name} (see `fw status`)");
    }
    let iface = state.as_ref().map(|s| s.iface.clone());
    loader::detach(name, iface.as_deref(), state.as_ref().map(|s| s.attach_mode))?;
    InstanceState::remove(name)?;
    let _ = std::fs::remove_file(paths::drops_snapshot(name));
    let _ = std::fs::remove_file(paths::names_file(name));
    let _ = std::fs::remove_dir_all(paths::kept_dir(name));
    if forget {
        FileRecords::forget(name)?;
    }
    Ok(iface)
}

fn enforced(loaded: &LoadedPhase, phase: &str, generation: u32) -> Enforced {
    Enforced {
        audit: loaded.compiled.settings.audit,
        rules: loaded.compiled.rules.clone(),
        ..enforced_meta(&loaded.source, &loaded.env_file, &loaded.policy_name, phase, generation)
    }
}

fn enforced_meta(
    policy: &str,
    env_file: &Option<PathBuf>,
    policy_name: &str,
    phase: &str,
    generation: u32,
) -> Enforced {
    Enforced {
        policy: policy.to_string(),
        policy_name: policy_name.to_string(),
        env_file: env_file.as_ref().map(|p| p.display().to_string()),
        phase: phase.to_string(),
        generation,
        audit: false,
        rules: Vec::new(),
    }
}

/// The index of `iface` in this network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("--iface")?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface named {iface} in this network namespace (see `ip link`): check --iface");
    }
    Ok(index)
}

/// Removes a half-created instance when a start fails before it is up.
struct RemoveOnError {
    name: String,
    armed: bool,
}

impl Drop for RemoveOnError {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = loader::detach(&self.name, None, None) {
                say_err!("fw: cleaning up the failed start of {}: {e:#}", self.name);
            }
            let _ = InstanceState::remove(&self.name);
        }
    }
}
