//! The crash tests of the instance transactions, without root: an in-memory
//! policy store and in-memory records that "die" at step N (that step and
//! every later one fail, as nothing runs after a kill), for every N a
//! command has; then a restart (reconcile, as `fw run` does on adopt) and
//! the invariants:
//!
//! * exactly one complete generation is enforced: the one before the
//!   command or the one after, never a mix, never none;
//! * the state file describes the active generation (what `fw status` and
//!   `fw explain --name` show), and the pending rollback target, if any, is
//!   complete;
//! * no other generation has entries left but the one written ahead,
//!   which is complete, in the slot the active generation does not use;
//! * the boot record names the active generation when nothing is pending;
//! * the command, or the next one, can still be completed.

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet},
    rc::Rc,
};

use anyhow::{anyhow, bail, Result};

use super::{
    records::{BootRecord, PolicyCopy, Records},
    store::PolicyStore,
    txn::{self, PreparePlan, SwitchPlan, Written},
};
use crate::{
    instance::state::{Enforced, InstanceState},
    policy::compile::tables::{AddrEntry4, AddrEntry6, CompiledPhase, PhaseSettings, PortEntry},
    source::{self, LoadedPhase},
};

/// Counts steps; from step `at` on, every step fails (the process is dead).
#[derive(Default)]
struct Fate {
    steps: Cell<u64>,
    die_at: Cell<Option<u64>>,
}

impl Fate {
    fn step(&self) -> Result<()> {
        let n = self.steps.get() + 1;
        self.steps.set(n);
        match self.die_at.get() {
            Some(at) if n >= at => bail!("killed at step {at}"),
            _ => Ok(()),
        }
    }

    fn arm(&self, at: Option<u64>) {
        self.steps.set(0);
        self.die_at.set(at);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    V4(AddrEntry4),
    V6(AddrEntry6),
    Port(PortEntry),
}

struct MemStore {
    fate: Rc<Fate>,
    active: u32,
    slots: [Option<PhaseSettings>; 2],
    entries: BTreeMap<u32, BTreeSet<Entry>>,
    flow_generations: BTreeSet<u32>,
    /// Total entries the maps hold (ENOSPC beyond), like the kernel's
    /// max_entries.
    capacity: usize,
    /// Walks of the maps to delete generations.
    walks: usize,
}

impl MemStore {
    fn new(fate: Rc<Fate>) -> Self {
        Self {
            fate,
            active: 0,
            slots: [None, None],
            entries: BTreeMap::new(),
            flow_generations: BTreeSet::new(),
            capacity: usize::MAX,
            walks: 0,
        }
    }

    /// A packet opens a flow under the active generation.
    fn admit_flow(&mut self) {
        self.flow_generations.insert(self.active);
    }

    fn total(&self) -> usize {
        self.entries.values().map(BTreeSet::len).sum()
    }
}

impl PolicyStore for MemStore {
    fn active(&self) -> Result<u32> {
        Ok(self.active)
    }

    fn activate(&mut self, generation: u32) -> Result<()> {
        self.fate.step()?;
        self.active = generation;
        Ok(())
    }

    fn write(&mut self, phase: &CompiledPhase, generation: u32) -> Result<usize> {
        if generation == self.active || generation & 1 == self.active & 1 {
            bail!("write to the active generation {generation} (active {})", self.active);
        }
        let entries = phase
            .addr4
            .iter()
            .map(|e| Entry::V4(*e))
            .chain(phase.addr6.iter().map(|e| Entry::V6(*e)))
            .chain(phase.ports.iter().map(|e| Entry::Port(*e)));
        let mut written = 0;
        for entry in entries {
            self.fate.step()?;
            if self.total() >= self.capacity {
                bail!("No space left on device (os error 28)");
            }
            self.entries.entry(generation).or_default().insert(entry);
            written += 1;
        }
        self.fate.step()?;
        self.slots[(generation & 1) as usize] = Some(phase.settings);
        Ok(written)
    }

    fn delete(&mut self, doomed: &dyn Fn(u32) -> bool) -> Result<usize> {
        if doomed(self.active) {
            bail!("delete of the active generation {}", self.active);
        }
        self.walks += 1;
        let generations: Vec<u32> = self.entries.keys().copied().filter(|g| doomed(*g)).collect();
        let mut removed = 0;
        for generation in generations {
            let entries: Vec<Entry> = self.entries[&generation].iter().cloned().collect();
            for entry in &entries {
                self.fate.step()?;
                let set = self.entries.get_mut(&generation).expect("listed");
                set.remove(entry);
                if set.is_empty() {
                    self.entries.remove(&generation);
                }
            }
            removed += entries.len();
        }
        Ok(removed)
    }

    fn highest_flow_generation(&self) -> Result<u32> {
        Ok(self.flow_generations.iter().copied().max().unwrap_or(0))
    }

    fn zero_rule_counters(&mut self, _rules: usize) -> Result<()> {
        self.fate.step()
    }

    fn read(&self, generation: u32) -> Result<CompiledPhase> {
        let settings =
            self.slots[(generation & 1) as usize].ok_or_else(|| anyhow!("slot of {generation} never written"))?;
        let mut phase = CompiledPhase {
            phase: String::new(),
            settings,
            addr4: vec![],
            addr6: vec![],
            ports: vec![],
            rules: vec![],
            dns: None,
        };
        for entry in self.entries.get(&generation).into_iter().flatten() {
            match entry {
                Entry::V4(e) => phase.addr4.push(*e),
                Entry::V6(e) => phase.addr6.push(*e),
                Entry::Port(e) => phase.ports.push(*e),
            }
        }
        Ok(phase)
    }
}

struct MemRecords {
    fate: Rc<Fate>,
    state: Option<InstanceState>,
    copies: BTreeMap<u32, PolicyCopy>,
    boot: Option<BootRecord>,
}

impl Records for MemRecords {
    fn load_state(&self) -> Result<Option<InstanceState>> {
        Ok(self.state.clone())
    }

    fn save_state(&mut self, state: &InstanceState) -> Result<()> {
        self.fate.step()?;
        self.state = Some(state.clone());
        Ok(())
    }

    fn save_copy(&mut self, generation: u32, copy: &PolicyCopy) -> Result<()> {
        self.fate.step()?;
        self.copies.insert(generation, copy.clone());
        Ok(())
    }

    fn load_boot(&self) -> Result<Option<(BootRecord, PolicyCopy)>> {
        Ok(self.boot.clone().map(|b| {
            let copy = self.copies[&b.generation].clone();
            (b, copy)
        }))
    }

    fn boot_generation(&self) -> Result<Option<u32>> {
        Ok(self.boot.as_ref().map(|b| b.generation))
    }

    fn has_copy(&self, generation: u32) -> bool {
        self.copies.contains_key(&generation)
    }

    fn save_boot(&mut self, record: &BootRecord) -> Result<()> {
        self.fate.step()?;
        self.boot = Some(record.clone());
        Ok(())
    }

    fn keep_copies(&mut self, keep: &[u32]) -> Result<()> {
        self.copies.retain(|g, _| keep.contains(g));
        Ok(())
    }
}

/// Three phases of one policy, of different sizes and meanings.
const POLICY: &str = "
name: crash-test
phases:
  runtime:
    inbound_default: drop
    inbound:
      - { name: https, proto: tcp, ports: [443] }
      - { name: media, proto: [tcp, udp], ports: ['40000-65535'] }
    egress:
      - { name: webhook, to: [198.18.7.7], proto: tcp, ports: [443] }
  install:
    extends: runtime
    egress:
      - { name: dns, to: [any], proto: [udp, tcp], ports: [53] }
      - { name: web, to: [198.18.0.0/15, '2001:db8::/32'], proto: tcp, ports: [80, 443, '8000-8999'] }
      - { name: ntp, to: [any], proto: udp, ports: [123] }
      - { name: deny-one, to: [198.18.9.9], action: deny }
  closed:
    egress:
      - { name: only, to: [198.18.1.1/32], proto: tcp, ports: [443] }
";

fn phase(name: &str) -> LoadedPhase {
    let copy = PolicyCopy { policy_text: POLICY.to_string(), env_text: None };
    source::load_phase_text("crash-test.yaml", None, copy, name).expect("the test policy compiles")
}

fn plan(name: &str, confirm_deadline: Option<u64>) -> SwitchPlan {
    let loaded = phase(name);
    SwitchPlan {
        to: enforced(&loaded, 0),
        compiled: loaded.compiled.clone(),
        copy: loaded.copy.clone(),
        confirm_deadline,
        defer_collection: false,
    }
}

fn enforced(loaded: &LoadedPhase, generation: u32) -> Enforced {
    Enforced {
        policy: loaded.source.clone(),
        policy_name: loaded.policy_name.clone(),
        env_file: None,
        phase: loaded.compiled.phase.clone(),
        generation,
        audit: loaded.compiled.settings.audit,
        rules: loaded.compiled.rules.clone(),
    }
}

/// An instance enforcing `first`, as `instance::start` leaves it.
fn started(first: &str) -> (Rc<Fate>, MemStore, MemRecords) {
    let fate = Rc::new(Fate::default());
    let mut store = MemStore::new(fate.clone());
    let mut records = MemRecords { fate: fate.clone(), state: None, copies: BTreeMap::new(), boot: None };
    let loaded = phase(first);
    records.save_copy(1, &loaded.copy).unwrap();
    store.write(&loaded.compiled, 1).unwrap();
    store.activate(1).unwrap();
    records.save_state(&InstanceState::fresh("crash", enforced(&loaded, 1))).unwrap();
    txn::reconcile(&mut store, &mut records).unwrap();
    store.admit_flow();
    (fate, store, records)
}

/// What the kernel judges by, compared without the generation number.
fn enforced_phase(store: &MemStore, generation: u32) -> CompiledPhase {
    store.read(generation).unwrap()
}

fn tables(name: &str) -> CompiledPhase {
    CompiledPhase { phase: String::new(), rules: vec![], ..phase(name).compiled }
}

/// The invariants after a restart; returns the phase enforced.
fn check(store: &MemStore, records: &MemRecords, allowed: &[&str], context: &str) -> String {
    let active = store.active;
    assert_ne!(active, 0, "{context}: no generation active");
    let kernel = enforced_phase(store, active);
    let phase = allowed
        .iter()
        .find(|p| tables(p) == kernel)
        .unwrap_or_else(|| panic!("{context}: the kernel enforces a mix, not one of {allowed:?}: {kernel:#?}"));
    let state = records.state.as_ref().expect("state");
    assert_eq!(state.switching, None, "{context}: a journal entry survived the reconcile");
    assert_eq!(state.enforced.generation, active, "{context}: the state describes another generation");
    assert_eq!(state.enforced.phase, *phase, "{context}: status and explain would name the wrong phase");
    assert_eq!(state.enforced.rules, phase_rules(phase), "{context}: explain would name other rules");
    let mut kept = BTreeSet::from([active]);
    if let Some(p) = &state.pending {
        assert!(
            allowed.iter().any(|a| tables(a) == enforced_phase(store, p.previous.generation) && *a == p.previous.phase),
            "{context}: the rollback target is incomplete"
        );
        kept.insert(p.previous.generation);
    } else {
        let boot = records.boot.as_ref().expect("a boot record");
        assert_eq!(boot.generation, active, "{context}: the boot record names another generation");
        assert_eq!(boot.phase, *phase, "{context}: a reboot would come back in another phase");
        assert!(records.copies.contains_key(&active), "{context}: the boot copy is missing");
    }
    if let Some(p) = &state.prepared {
        assert_ne!(p.to.generation & 1, active & 1, "{context}: the generation written ahead shares the active slot");
        assert!(state.pending.is_none(), "{context}: written ahead into the rollback target's slot");
        assert_eq!(
            tables(&p.to.phase),
            enforced_phase(store, p.to.generation),
            "{context}: the generation written ahead is incomplete"
        );
        assert!(records.copies.contains_key(&p.to.generation), "{context}: the copy written ahead is gone");
        kept.insert(p.to.generation);
    }
    let present: BTreeSet<u32> = store.entries.keys().copied().collect();
    assert!(present.is_subset(&kept), "{context}: orphan generations {present:?} beside {kept:?}");
    assert!(state.highest_generation >= active, "{context}: highest_generation below the active one");
    phase.to_string()
}

fn phase_rules(name: &str) -> Vec<crate::policy::compile::tables::RuleInfo> {
    phase(name).compiled.rules
}

/// Runs `op` once to count its steps, then for every step N: a fresh
/// instance set up by `setup`, `op` killed at step N, a restart, the
/// invariants, then `finish` (which must succeed and leave the invariants).
/// Returns the number of interrupted runs checked.
fn every_step(
    setup: &dyn Fn() -> (Rc<Fate>, MemStore, MemRecords),
    op: &dyn Fn(&mut MemStore, &mut MemRecords) -> Result<()>,
    allowed: &[&str],
    finish: &dyn Fn(&mut MemStore, &mut MemRecords, &str) -> Result<()>,
    after_finish: &[&str],
) -> u64 {
    let (fate, mut store, mut records) = setup();
    fate.arm(None);
    op(&mut store, &mut records).expect("the uninterrupted command succeeds");
    let steps = fate.steps.get();
    assert!(steps > 3, "the command has steps to interrupt ({steps})");
    for at in 1..=steps {
        let (fate, mut store, mut records) = setup();
        fate.arm(Some(at));
        assert!(op(&mut store, &mut records).is_err(), "killed at step {at} of {steps}, the command still succeeded");
        // The restart: nothing fails any more.
        fate.arm(None);
        let context = format!("killed at step {at} of {steps}");
        txn::reconcile(&mut store, &mut records).unwrap_or_else(|e| panic!("{context}: reconcile: {e:#}"));
        let phase = check(&store, &records, allowed, &context);
        finish(&mut store, &mut records, &phase).unwrap_or_else(|e| panic!("{context}: then: {e:#}"));
        check(&store, &records, after_finish, &format!("{context}, then finished"));
    }
    println!("{steps} steps, each interrupted once: 0 inconsistencies");
    steps
}

#[test]
fn finding1_interrupted_switch_never_mixes_policies() {
    // install (large) -> closed (one destination), killed at every step;
    // then the next switch, to closed again, must enforce exactly closed.
    let tried = every_step(
        &|| started("install"),
        &|store, records| txn::switch(store, records, plan("closed", None)).map(drop),
        &["install", "closed"],
        &|store, records, _| txn::switch(store, records, plan("closed", None)).map(drop),
        &["closed"],
    );
    assert!(tried > 40, "{tried} steps");
}

#[test]
fn a_switch_that_leaves_the_old_generation_to_the_daemon_survives_every_kill() {
    let deferred = || SwitchPlan { defer_collection: true, ..plan("closed", None) };
    let tried = every_step(
        &|| started("install"),
        &|store, records| txn::switch(store, records, deferred()).map(drop),
        &["install", "closed"],
        // Then the switch again, and the daemon's collection.
        &|store, records, _| {
            txn::switch(store, records, deferred())?;
            txn::reconcile(store, records).map(drop)
        },
        &["closed"],
    );
    // Reserve, copy, the entries, journal, activate, record, boot record.
    assert!(tried > 6, "{tried} steps");
}

#[test]
fn the_old_generation_is_deleted_by_the_next_reconcile_and_a_collected_instance_is_not_walked() {
    let (_fate, mut store, mut records) = started("install");
    let deferred = SwitchPlan { defer_collection: true, ..plan("closed", None) };
    let switched = txn::switch(&mut store, &mut records, deferred).unwrap();
    assert_eq!(store.entries.len(), 2, "the old generation is left for the daemon");
    assert!(!records.state.as_ref().unwrap().collected, "the state must say so");
    // The boot record follows at once: a reboot comes back in the new phase.
    assert_eq!(records.boot.as_ref().unwrap().generation, switched.to.generation);
    // The daemon's collection.
    let (_, notes) = txn::reconcile(&mut store, &mut records).unwrap();
    assert!(notes.iter().any(|n| n.contains("generations no longer in use")), "{notes:?}");
    check(&store, &records, &["closed"], "after the collection");
    assert!(records.state.as_ref().unwrap().collected);
    // Every later command starts with a reconcile: none walks the maps again.
    let walks = store.walks;
    txn::reconcile(&mut store, &mut records).unwrap();
    assert!(txn::confirm(&mut store, &mut records).is_err(), "nothing to confirm");
    assert_eq!(store.walks, walks, "a collected instance was walked again");
    // An older state file without the field reads as not collected.
    let mut json = serde_json::to_value(records.state.as_ref().unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("collected");
    let old: InstanceState = serde_json::from_value(json).unwrap();
    assert!(!old.collected, "a state without `collected` must be walked");
}

#[test]
fn finding1_a_switch_after_an_interrupted_one_uses_a_fresh_generation() {
    let (fate, mut store, mut records) = started("install");
    fate.arm(Some(10));
    assert!(txn::switch(&mut store, &mut records, plan("runtime", None)).is_err());
    fate.arm(None);
    let reserved = records.state.as_ref().unwrap().highest_generation;
    let switched = txn::switch(&mut store, &mut records, plan("closed", None)).unwrap();
    assert!(switched.to.generation > reserved, "generation {} reused (reserved {reserved})", switched.to.generation);
    assert_eq!(tables("closed"), enforced_phase(&store, store.active));
}

#[test]
fn switch_with_confirm_then_confirm_survives_every_kill() {
    let tried = every_step(
        &|| started("install"),
        &|store, records| {
            txn::switch(store, records, plan("runtime", Some(u64::MAX)))?;
            txn::confirm(store, records).map(drop)
        },
        &["install", "runtime"],
        &|store, records, phase| {
            // The operator retries what did not happen.
            let pending = records.state.as_ref().unwrap().pending.is_some();
            if phase == "install" {
                txn::switch(store, records, plan("runtime", Some(u64::MAX)))?;
                txn::confirm(store, records).map(drop)
            } else if pending {
                txn::confirm(store, records).map(drop)
            } else {
                Ok(())
            }
        },
        &["runtime"],
    );
    assert!(tried > 20, "{tried} steps");
}

/// An instance whose switch install -> runtime awaits confirmation.
fn pending_runtime() -> (Rc<Fate>, MemStore, MemRecords) {
    let (fate, mut store, mut records) = started("install");
    txn::switch(&mut store, &mut records, plan("runtime", Some(100))).unwrap();
    store.admit_flow();
    (fate, store, records)
}

#[test]
fn finding4_interrupted_rollback_then_confirm_never_deletes_the_active_generation() {
    let tried = every_step(
        &pending_runtime,
        &|store, records| match txn::rollback_if_due(store, records, 100)? {
            (Some(_), _) => Ok(()),
            (None, _) => bail!("not rolled back"),
        },
        &["install", "runtime"],
        &|store, records, phase| {
            // What the operator did in the finding: confirm after the
            // restart. It must either confirm the switch (still pending)
            // or refuse, never delete the active generation.
            let confirmed = txn::confirm(store, records);
            match phase {
                "runtime" => confirmed.map(drop),
                _ => match confirmed {
                    Err(e) if e.to_string().contains("nothing to confirm") => Ok(()),
                    other => bail!("confirm after a completed rollback: {other:?}"),
                },
            }
        },
        &["install", "runtime"],
    );
    assert!(tried > 10, "{tried} steps");
}

#[test]
fn rollback_never_lands_on_a_half_deleted_generation() {
    // confirm killed at every step, then a due rollback: either confirmed
    // (nothing to roll back) or rolled back to a complete install phase.
    every_step(
        &pending_runtime,
        &|store, records| txn::confirm(store, records).map(drop),
        &["runtime", "install"],
        &|store, records, _| txn::rollback_if_due(store, records, 100).map(drop),
        &["install", "runtime"],
    );
}

#[test]
fn finding5_orphaned_generations_are_collected() {
    let (fate, mut store, mut records) = started("install");
    // Room for two generations of install and a little more, as the kernel
    // maps are sized for two.
    store.capacity = 2 * store.total() + 4;
    for at in [5, 9, 13] {
        fate.arm(Some(at));
        assert!(txn::switch(&mut store, &mut records, plan("install", None)).is_err());
        fate.arm(None);
    }
    txn::switch(&mut store, &mut records, plan("install", None)).expect("a valid switch after three aborted ones fits");
    check(&store, &records, &["install"], "after three aborted switches");
    assert_eq!(store.entries.len(), 1, "only the active generation has entries");
}

#[test]
fn a_flows_generation_is_never_reused() {
    // Rolled back from generation 2: its flows remember 2. With the state
    // file's counter lost, the next generation must still not be 2 (or 3,
    // which shares the active slot).
    let (_fate, mut store, mut records) = pending_runtime();
    txn::rollback_if_due(&mut store, &mut records, 100).unwrap();
    records.state.as_mut().unwrap().highest_generation = 1;
    let switched = txn::switch(&mut store, &mut records, plan("closed", None)).unwrap();
    assert!(switched.to.generation > 2, "generation {} reuses a number flows remember", switched.to.generation);
}

#[test]
fn a_lost_state_file_is_rebuilt_from_the_kernel_never_the_reverse() {
    let (_fate, mut store, mut records) = started("install");
    txn::switch(&mut store, &mut records, plan("closed", None)).unwrap();
    let active = store.active;
    // A stale state file (a backup restored, a bug): it names generation 1.
    let mut stale = records.state.clone().unwrap();
    stale.enforced.generation = 1;
    stale.enforced.phase = "install".into();
    records.state = Some(stale);
    let (state, notes) = txn::reconcile(&mut store, &mut records).unwrap();
    assert_eq!(store.active, active, "the kernel was changed to match the state file");
    assert_eq!(tables("closed"), enforced_phase(&store, active));
    assert_eq!(state.enforced.generation, active);
    assert!(notes.iter().any(|n| n.contains("rebuilt from the kernel")), "{notes:?}");
}

#[test]
fn no_command_writes_the_active_generation() {
    let (_fate, mut store, _records) = started("install");
    let active = store.active;
    assert!(store.write(&phase("closed").compiled, active).is_err());
    assert!(store.delete(&|g| g == active).is_err());
}

/// What the daemon writes ahead, chosen after the generation enforced now.
fn prepare_plan(records: &MemRecords, name: &str) -> PreparePlan {
    let SwitchPlan { to, compiled, copy, .. } = plan(name, None);
    PreparePlan { after: records.state.as_ref().expect("a state").enforced.generation, to, compiled, copy }
}

#[test]
fn a_phase_written_ahead_survives_every_kill_and_the_switch_to_it_writes_nothing() {
    let tried = every_step(
        &|| started("install"),
        &|store, records| {
            {
                let plan = prepare_plan(records, "runtime");
                txn::prepare(store, records, plan)
            }?
            .ok_or_else(|| anyhow!("nothing written ahead"))?;
            match txn::switch(store, records, plan("runtime", None))?.written {
                Written::Ahead(_) => Ok(()),
                other => bail!("the switch wrote its generation again: {other:?}"),
            }
        },
        &["install", "runtime"],
        // The retry: the daemon writes ahead again when nothing is, then
        // the switch.
        &|store, records, _| {
            {
                let plan = prepare_plan(records, "runtime");
                txn::prepare(store, records, plan)
            }?;
            txn::switch(store, records, plan("runtime", None)).map(drop)
        },
        &["runtime"],
    );
    // Reserve, copy, the entries, record; journal, activate, record, ...
    assert!(tried > 20, "{tried} steps");
}

#[test]
fn a_phase_written_ahead_is_kept_by_collections_and_activated_only_by_its_switch() {
    let (_fate, mut store, mut records) = started("install");
    let prepared = {
        let plan = prepare_plan(&records, "runtime");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .expect("written ahead");
    assert_eq!(store.active, 1, "writing ahead changed what is enforced");
    assert_eq!(tables("install"), enforced_phase(&store, 1));
    assert!(records.state.as_ref().unwrap().collected, "the maps hold only what the state names");
    // Collections and a second write ahead leave it as it is.
    records.state.as_mut().unwrap().collected = false;
    txn::reconcile(&mut store, &mut records).unwrap();
    assert!({
        let plan = prepare_plan(&records, "closed");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .is_none());
    check(&store, &records, &["install"], "written ahead");
    assert_eq!(records.state.as_ref().unwrap().prepared.as_ref(), Some(&prepared));
    // The switch to it: no entry written, the generation written ahead.
    let switched = txn::switch(&mut store, &mut records, plan("runtime", None)).unwrap();
    assert_eq!(switched.written, Written::Ahead(prepared.entries));
    assert_eq!(switched.to.generation, prepared.to.generation);
    assert_eq!(store.active, prepared.to.generation);
    check(&store, &records, &["runtime"], "switched to the phase written ahead");
    assert_eq!(records.state.as_ref().unwrap().prepared, None);
}

#[test]
fn a_switch_to_anything_else_discards_the_phase_written_ahead_first() {
    // Room for two generations of install, as the kernel maps are sized:
    // the phase written ahead must go before the switch writes.
    let (_fate, mut store, mut records) = started("install");
    store.capacity = 2 * store.total() + 4;
    let prepared = {
        let plan = prepare_plan(&records, "install");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .expect("written ahead");
    // Another phase.
    let switched = txn::switch(&mut store, &mut records, plan("closed", None)).unwrap();
    assert!(matches!(switched.written, Written::Now(n) if n > 0), "{:?}", switched.written);
    check(&store, &records, &["closed"], "switched to another phase");
    assert!(!store.entries.contains_key(&prepared.to.generation), "the phase written ahead was left behind");
    // The same phase from another text (a comment added): the boot record
    // must compile what the switch asked for, so it is written again.
    let prepared = {
        let plan = prepare_plan(&records, "install");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .expect("written ahead");
    let mut edited = plan("install", None);
    edited.copy.policy_text.push_str("# edited\n");
    let switched = txn::switch(&mut store, &mut records, edited).unwrap();
    assert!(matches!(switched.written, Written::Now(_)), "{:?}", switched.written);
    assert_ne!(switched.to.generation, prepared.to.generation);
    check(&store, &records, &["install"], "switched to an edited text");
    // Audit mode asked for: other tables.
    {
        let plan = prepare_plan(&records, "closed");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .expect("written ahead");
    let mut audit = plan("closed", None);
    audit.compiled.settings.audit = true;
    audit.to.audit = true;
    assert!(matches!(txn::switch(&mut store, &mut records, audit).unwrap().written, Written::Now(_)));
}

#[test]
fn nothing_is_written_ahead_while_a_switch_awaits_confirmation() {
    let (_fate, mut store, mut records) = pending_runtime();
    assert!({
        let plan = prepare_plan(&records, "install");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .is_none());
    check(&store, &records, &["runtime", "install"], "pending");
    txn::confirm(&mut store, &mut records).unwrap();
    let prepared = {
        let plan = prepare_plan(&records, "install");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .expect("written ahead");
    check(&store, &records, &["runtime"], "confirmed, then written ahead");
    // A confirmed switch to it, with --confirm: the rollback target is the
    // generation enforced before, and nothing is written ahead meanwhile.
    let switched = txn::switch(&mut store, &mut records, plan("install", Some(100))).unwrap();
    assert_eq!(switched.written, Written::Ahead(prepared.entries));
    assert!({
        let plan = prepare_plan(&records, "runtime");
        txn::prepare(&mut store, &mut records, plan)
    }
    .unwrap()
    .is_none());
    check(&store, &records, &["install", "runtime"], "switched to the phase written ahead, pending");
    txn::rollback_if_due(&mut store, &mut records, 100).unwrap();
    check(&store, &records, &["runtime"], "rolled back from the phase written ahead");
}

#[test]
fn a_phase_chosen_before_a_switch_is_not_written_after_it() {
    // The daemon chose `runtime` after `install`; a switch to `closed` took
    // the lock first: writing `runtime` now would hold the wrong phase.
    let (_fate, mut store, mut records) = started("install");
    let stale = prepare_plan(&records, "runtime");
    txn::switch(&mut store, &mut records, plan("closed", None)).unwrap();
    assert!(txn::prepare(&mut store, &mut records, stale).unwrap().is_none());
    check(&store, &records, &["closed"], "after a stale write ahead");
    assert_eq!(records.state.as_ref().unwrap().prepared, None);
}
