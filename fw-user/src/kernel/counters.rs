//! Reading the kernel counters of an instance into a named snapshot, and
//! the difference between two snapshots (what `fw run` prints and what
//! `fw drops` reports).

use anyhow::Result;
use fw_common::{stats::stats_index, Action, Counter, Direction, Reason};
use serde::{Deserialize, Serialize};

use crate::{kernel::loader::CounterMaps, policy::compile::tables::RuleInfo};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReasonCount {
    pub direction: Direction,
    pub reason: Reason,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
    /// `packets`, split by the phase slot (`generation & 1`) active when
    /// they were judged: a window around a switch tells the generations
    /// apart (see `fw_common::stats`).
    #[serde(default)]
    pub packets_by_slot: [u64; 2],
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleCount {
    pub id: u32,
    pub name: String,
    pub direction: Direction,
    pub action: Action,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Every (direction, reason) pair, zero or not, in a fixed order.
    pub reasons: Vec<ReasonCount>,
    /// Every rule of the policy, in rule-id order.
    pub rules: Vec<RuleCount>,
}

impl Snapshot {
    pub fn read(maps: &CounterMaps, rules: &[RuleInfo]) -> Result<Snapshot> {
        let reasons = Self::read_reasons(maps)?;
        Ok(Snapshot { reasons, rules: Self::read_rules(maps, rules)? })
    }

    /// The (direction, reason) counters alone: a few dozen reads whatever
    /// the policy's size. The kernel counts every packet a rule judges
    /// under some reason too, so while these stay the same no rule counter
    /// moves either (the daemon's idle summaries rely on it).
    pub fn read_reasons(maps: &CounterMaps) -> Result<Vec<ReasonCount>> {
        let mut reasons = Vec::new();
        for direction in Direction::ALL {
            for reason in Reason::ALL {
                let slot0 = CounterMaps::sum(&maps.stats, stats_index(0, direction, reason))?;
                let slot1 = CounterMaps::sum(&maps.stats, stats_index(1, direction, reason))?;
                reasons.push(ReasonCount {
                    direction,
                    reason,
                    drop: reason.is_drop(),
                    packets: slot0.packets + slot1.packets,
                    bytes: slot0.bytes + slot1.bytes,
                    packets_by_slot: [slot0.packets, slot1.packets],
                });
            }
        }
        Ok(reasons)
    }

    /// The counters of `rules`, in their order: one read per rule.
    pub fn read_rules(maps: &CounterMaps, rules: &[RuleInfo]) -> Result<Vec<RuleCount>> {
        let mut out = Vec::with_capacity(rules.len());
        for rule in rules {
            let c: Counter = CounterMaps::sum(&maps.rule_stats, rule.id)?;
            out.push(RuleCount {
                id: rule.id,
                name: rule.name.clone(),
                direction: rule.direction,
                action: rule.action,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(out)
    }

    /// Packets dropped in total.
    pub fn dropped(&self) -> u64 {
        self.reasons.iter().filter(|r| r.drop).map(|r| r.packets).sum()
    }

    /// The same entries, every counter zero.
    pub fn zeroed(&self) -> Snapshot {
        self.since(self)
    }

    /// `self - earlier`, entry by entry (both read from the same instance).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let reasons = self
            .reasons
            .iter()
            .zip(&earlier.reasons)
            .map(|(now, then)| ReasonCount {
                packets: now.packets.saturating_sub(then.packets),
                bytes: now.bytes.saturating_sub(then.bytes),
                packets_by_slot: [0, 1].map(|s| now.packets_by_slot[s].saturating_sub(then.packets_by_slot[s])),
                ..now.clone()
            })
            .collect();
        let rules = self
            .rules
            .iter()
            .zip(&earlier.rules)
            .map(|(now, then)| RuleCount {
                packets: now.packets.saturating_sub(then.packets),
                bytes: now.bytes.saturating_sub(then.bytes),
                ..now.clone()
            })
            .collect();
        Snapshot { reasons, rules }
    }

    /// The drops by reason of the packets judged under phase slot `slot`,
    /// as a summary line's part (`None`: nothing dropped there).
    pub fn slot_drops(&self, slot: usize) -> Option<String> {
        let parts: Vec<String> = self
            .reasons
            .iter()
            .filter(|r| r.drop && r.packets_by_slot[slot] > 0)
            .map(|r| format!("{} {}={}", r.direction, r.reason, r.packets_by_slot[slot]))
            .collect();
        let total: u64 = self.reasons.iter().filter(|r| r.drop).map(|r| r.packets_by_slot[slot]).sum();
        (total > 0).then(|| format!("dropped {total}: {}", parts.join(", ")))
    }

    /// One line for the periodic summary: the drops, by reason and rule.
    pub fn drop_line(&self) -> String {
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .filter(|r| r.drop && r.packets > 0)
            .map(|r| format!("{} {}={}", r.direction, r.reason, r.packets))
            .collect();
        parts.extend(
            self.rules
                .iter()
                .filter(|r| r.action == Action::Deny && r.packets > 0)
                .map(|r| format!("rule {}={}", r.name, r.packets)),
        );
        if parts.is_empty() {
            "no drops".to_string()
        } else {
            format!("dropped {}: {}", self.dropped(), parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(reason: Reason, packets: u64) -> ReasonCount {
        ReasonCount {
            direction: Direction::Egress,
            reason,
            drop: reason.is_drop(),
            packets,
            bytes: packets * 100,
            packets_by_slot: [packets, 0],
        }
    }

    #[test]
    fn deltas_and_the_summary_line_count_only_new_drops() {
        let then =
            Snapshot { reasons: vec![reason(Reason::PassRule, 10), reason(Reason::DropDefault, 3)], rules: vec![] };
        let now =
            Snapshot { reasons: vec![reason(Reason::PassRule, 15), reason(Reason::DropDefault, 7)], rules: vec![] };
        let delta = now.since(&then);
        assert_eq!(delta.dropped(), 4);
        assert_eq!(delta.reasons[0].packets, 5);
        assert_eq!(delta.drop_line(), "dropped 4: egress drop_default=4");
        assert_eq!(then.since(&then).drop_line(), "no drops");
    }
}
