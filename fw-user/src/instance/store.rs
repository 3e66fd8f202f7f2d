//! The policy maps as the instance transactions see them: a small trait, so
//! that every step of a switch, rollback or confirm can be interrupted in an
//! unprivileged test (an in-memory store that "crashes" at step N) and in the
//! kernel (the failpoint of [`super::failpoint`]).
//!
//! A generation is the unit of policy: its entries in the three tries plus
//! the `FW_PHASES` slot `generation & 1`. One 4-byte write of `FW_CONFIG`
//! (`activate`) decides which generation every packet is judged by.

use anyhow::{bail, Result};

use crate::{
    kernel::apply,
    kernel::loader::{CounterMaps, PolicyMaps},
    policy::compile::tables::CompiledPhase,
};

use super::failpoint;

pub trait PolicyStore {
    /// The generation packets are judged by (0: none, everything dropped).
    fn active(&self) -> Result<u32>;
    /// Publishes `generation`: the commit point of every transaction.
    fn activate(&mut self, generation: u32) -> Result<()>;
    /// Writes every entry of `phase` under `generation`, and its settings in
    /// slot `generation & 1`. Callers never pass the active generation or
    /// its slot ([`super::txn`] checks before calling).
    fn write(&mut self, phase: &CompiledPhase, generation: u32) -> Result<usize>;
    /// Deletes every entry of the generations `doomed` says (never the
    /// active one: refused), in one pass; returns how many.
    fn delete(&mut self, doomed: &dyn Fn(u32) -> bool) -> Result<usize>;
    /// The highest generation a tracked flow remembers (0: none): a number a
    /// flow still carries must never be handed to another policy, or the
    /// flow would pass unchecked under it.
    fn highest_flow_generation(&self) -> Result<u32>;
    /// Zeroes the per-rule counters of ids `0..rules` (rule ids name other
    /// rules after a switch that changed the rule list).
    fn zero_rule_counters(&mut self, rules: usize) -> Result<()>;
    /// The entries and settings of `generation`, as the kernel holds them.
    fn read(&self, generation: u32) -> Result<CompiledPhase>;
}

/// The pinned maps of a running instance.
pub struct KernelStore {
    name: String,
    maps: PolicyMaps,
}

impl KernelStore {
    /// Opens the pins of instance `name` (fails when it has none).
    pub fn open(name: &str) -> Result<Self> {
        Ok(Self { name: name.to_string(), maps: PolicyMaps::open(name)? })
    }

    /// Wraps maps taken from a freshly loaded object.
    pub fn from_maps(name: &str, maps: PolicyMaps) -> Self {
        Self { name: name.to_string(), maps }
    }

    pub fn maps(&self) -> &PolicyMaps {
        &self.maps
    }
}

impl PolicyStore for KernelStore {
    fn active(&self) -> Result<u32> {
        apply::active_generation(&self.maps)
    }

    fn activate(&mut self, generation: u32) -> Result<()> {
        failpoint::step("activate");
        apply::activate(&mut self.maps, generation)
    }

    fn write(&mut self, phase: &CompiledPhase, generation: u32) -> Result<usize> {
        apply::write_generation(&mut self.maps, phase, generation, &|| failpoint::step("write entries"))
    }

    fn delete(&mut self, doomed: &dyn Fn(u32) -> bool) -> Result<usize> {
        let active = self.active()?;
        if doomed(active) {
            bail!("refusing to delete generation {active}: it is the active one");
        }
        apply::delete_generations(&mut self.maps, doomed, &mut || failpoint::step("delete entries"))
    }

    fn highest_flow_generation(&self) -> Result<u32> {
        apply::highest_flow_generation(&self.maps)
    }

    fn zero_rule_counters(&mut self, rules: usize) -> Result<()> {
        failpoint::step("zero counters");
        apply::zero_rule_counters(&mut CounterMaps::open(&self.name)?, rules)
    }

    fn read(&self, generation: u32) -> Result<CompiledPhase> {
        apply::read_generation(&self.maps, generation)
    }
}
