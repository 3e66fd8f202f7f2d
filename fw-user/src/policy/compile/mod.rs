//! Policy -> map contents. Pure functions: no aya, no I/O, deterministic (the
//! same policy always gives the same, sorted [`CompiledPhase`]).
//!
//! Public API:
//! * [`compile_phase`]`(&Policy, phase) -> Result<CompiledPhase, CompileError>`
//! * [`compile_all`]`(&Policy) -> Result<Vec<CompiledPhase>, CompileError>`,
//!   every phase in file order;
//! * [`check_capacity`]`(&CompiledPhase, &Limits)`: does the phase fit in half
//!   of each map (two generations coexist during a switch)? The compiler does
//!   not call it, because the loader may size the maps differently; the
//!   caller must, before applying anything.
//! * [`range_to_prefixes`]: minimal aligned-prefix cover of a port range.
//!
//! The steps: [`classes`] partitions each direction's address space into
//! classes of identical deciding rules (the rules around a CIDR that can
//! still decide something there), then [`ports`] writes each class's
//! decisions over (protocol, port). The work follows the size of the
//! output, not rules times nesting depth (see [`classes`]). [`tables`] holds the output types and
//! the reference LPM lookup.

pub mod addr6;
mod classes;
pub mod dir4;
pub mod port_hash;
mod ports;
pub mod tables;

use std::net::IpAddr;

use fw_common::maps::{DEFAULT_ADDR_ENTRIES, DEFAULT_PORT_ENTRIES, MAX_RULES};

pub use self::ports::range_to_prefixes;
use self::tables::{AddrEntry4, AddrEntry6, CompiledPhase, PortEntry, RuleInfo};
use crate::policy::ir::{Policy, Rule};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("no phase named `{phase}` in the policy (phases: {})", known.join(", "))]
    UnknownPhase { phase: String, known: Vec<String> },
    #[error(
        "phase `{phase}` needs {needed} entries in {map} but only {available} are available \
         (half of the map's {capacity}: the old and the new generation coexist during a switch)"
    )]
    MapCapacity { phase: String, map: &'static str, needed: usize, available: u32, capacity: u32 },
    #[error("the policy has {rules} rules, more than the {max} that rule counters can hold")]
    TooManyRules { rules: usize, max: u32 },
}

/// Map sizes the loader creates (entries per map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub addr4_entries: u32,
    pub addr6_entries: u32,
    pub port_entries: u32,
    pub max_rules: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            addr4_entries: DEFAULT_ADDR_ENTRIES,
            addr6_entries: DEFAULT_ADDR_ENTRIES,
            port_entries: DEFAULT_PORT_ENTRIES,
            max_rules: MAX_RULES,
        }
    }
}

/// Compiles the rules in effect in `phase` (its own and inherited).
pub fn compile_phase(policy: &Policy, phase: &str) -> Result<CompiledPhase, CompileError> {
    let unknown = || CompileError::UnknownPhase {
        phase: phase.to_string(),
        known: policy.phases.iter().map(|p| p.name.clone()).collect(),
    };
    let settings = policy.phase(phase).ok_or_else(unknown)?.settings;
    let rules: Vec<&Rule> = policy.rules_of_phase(phase).ok_or_else(unknown)?;

    let kinds = classes::rule_kinds(&policy.rules);
    let partition = classes::partition(&rules, &kinds);

    let mut addr4 = Vec::with_capacity(partition.entries.len());
    let mut addr6 = Vec::new();
    for entry in &partition.entries {
        match entry.net.network() {
            IpAddr::V4(addr) => addr4.push(AddrEntry4 {
                direction: entry.direction,
                addr,
                prefix_len: entry.net.prefix_len(),
                class: entry.class,
            }),
            IpAddr::V6(addr) => addr6.push(AddrEntry6 {
                direction: entry.direction,
                addr,
                prefix_len: entry.net.prefix_len(),
                class: entry.class,
            }),
        }
    }
    addr4.sort();
    addr6.sort();

    let mut port_entries: Vec<PortEntry> = Vec::with_capacity(partition.class_rules.len() * 2);
    let mut writer = ports::PortWriter::new(&policy.rules);
    for (class, class_rules) in partition.class_rules.iter().enumerate() {
        writer.class(class as u32, class_rules, &mut port_entries);
    }
    // Each name rule's own class: what an address learned for it allows
    // (see `fw_common::names`). Name rules only allow, so the union of the
    // rules an address was learned for is "any of them allows".
    for rule in rules.iter().filter(|r| !r.names.is_empty()) {
        let own = classes::ClassRules::default().with(&[rule.id], &kinds);
        writer.class(fw_common::names::name_class(rule.id), &own, &mut port_entries);
    }
    port_entries.sort();

    Ok(CompiledPhase {
        phase: phase.to_string(),
        settings,
        addr4,
        addr6,
        ports: port_entries,
        rules: policy.rules.iter().map(rule_info).collect(),
        dns: policy.dns_of_phase(phase).map(|d| d.resolvers.clone()),
    })
}

/// Compiles every phase, in file order.
pub fn compile_all(policy: &Policy) -> Result<Vec<CompiledPhase>, CompileError> {
    policy.phases.iter().map(|p| compile_phase(policy, &p.name)).collect()
}

/// Checks that `phase` fits in half of each map and that its rule ids fit the
/// rule counters.
pub fn check_capacity(phase: &CompiledPhase, limits: &Limits) -> Result<(), CompileError> {
    if phase.rules.len() > limits.max_rules as usize {
        return Err(CompileError::TooManyRules { rules: phase.rules.len(), max: limits.max_rules });
    }
    let maps = [
        (fw_common::maps::ADDR4, phase.addr4.len(), limits.addr4_entries),
        (fw_common::maps::ADDR6, phase.addr6.len(), limits.addr6_entries),
        (fw_common::maps::PORTS, phase.ports.len(), limits.port_entries),
    ];
    for (map, needed, capacity) in maps {
        let available = capacity / 2;
        if needed > available as usize {
            return Err(CompileError::MapCapacity { phase: phase.phase.clone(), map, needed, available, capacity });
        }
    }
    Ok(())
}

fn rule_info(rule: &Rule) -> RuleInfo {
    RuleInfo {
        id: rule.id,
        name: rule.name.clone(),
        direction: rule.direction,
        action: rule.action,
        phase: rule.phase.clone(),
    }
}
