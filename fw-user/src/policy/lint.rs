//! Lints: legal policies that probably do not do what their author meant.
//!
//! * `shadowed-rule`: a rule that never decides any packet in a phase where
//!   it is in effect. Computed exactly from the compiled tables: the
//!   compiler writes every rule that decides some (address class, protocol,
//!   port) into an entry, so a rule id absent from a phase's port entries
//!   never decides there. One approximation: a class whose CIDR is entirely
//!   covered by more specific CIDRs is unreachable, yet its entries count,
//!   so a rule deciding only in such a class is not reported.
//! * `allow-everything`: an allow rule for any protocol to a whole address
//!   family in a phase named `runtime`, which defeats "close all outbound".

use std::collections::HashSet;

use fw_common::Action;

use super::{
    error::Warning,
    ir::{Policy, Protocols},
};
use crate::compile::tables::CompiledPhase;

/// Warnings about `policy`, given its compiled phases.
pub fn lint(policy: &Policy, compiled: &[CompiledPhase]) -> Vec<Warning> {
    let mut warnings = shadowed_rules(policy, compiled);
    warnings.extend(allow_everything_in_runtime(policy));
    warnings
}

fn shadowed_rules(policy: &Policy, compiled: &[CompiledPhase]) -> Vec<Warning> {
    // Per phase, once: the phases it inherits from and the rules that decide
    // some cell (per rule it would make this quadratic in the policy size).
    let phases: Vec<(&str, HashSet<&str>, HashSet<u32>)> = compiled
        .iter()
        .filter_map(|phase| {
            let chain = policy.phase_chain(&phase.phase)?;
            let deciding = phase.ports.iter().map(|e| e.value.rule).collect();
            Some((phase.phase.as_str(), chain.into_iter().collect(), deciding))
        })
        .collect();
    let mut warnings = Vec::new();
    for rule in &policy.rules {
        // Rules left out (no addresses) are already reported when loading.
        if rule.peers.is_empty() {
            continue;
        }
        let mut in_effect = Vec::new();
        let mut never_decides = Vec::new();
        for (name, chain, deciding) in &phases {
            if !chain.contains(rule.phase.as_str()) {
                continue;
            }
            in_effect.push(*name);
            if !deciding.contains(&rule.id) {
                never_decides.push(*name);
            }
        }
        if !never_decides.is_empty() {
            let phases = if never_decides.len() == in_effect.len() {
                "any phase".to_string()
            } else {
                format!("phase {}", never_decides.join(", "))
            };
            let message = format!(
                "rule `{}` never decides a packet in {phases}: earlier rules (or deny rules, which take precedence) \
                 match everything it matches",
                rule.name
            );
            warnings.push(Warning::new(&policy.file, rule.pos, "shadowed-rule", message));
        }
    }
    warnings
}

fn allow_everything_in_runtime(policy: &Policy) -> Vec<Warning> {
    let Some(rules) = policy.rules_of_phase("runtime") else { return Vec::new() };
    rules
        .into_iter()
        .filter(|r| r.action == Action::Allow && r.protocols == Protocols::Any)
        .filter(|r| r.peers.iter().any(|net| net.prefix_len() == 0))
        .map(|r| {
            let message = format!(
                "rule `{}` allows every protocol to every {} address in the `runtime` phase",
                r.name,
                if r.peers.iter().all(|n| n.prefix_len() == 0) { "IPv4 and IPv6" } else { "IPv4 or IPv6" },
            );
            Warning::new(&policy.file, r.pos, "allow-everything", message)
        })
        .collect()
}
