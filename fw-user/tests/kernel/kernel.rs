//! The real kernel object, loaded (not attached anywhere) and driven with
//! BPF_PROG_TEST_RUN, plus direct access to its maps.

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use fw_common::{maps, stats::STATS_ENTRIES, Counter, Direction, FlowKey, FlowValue, FragKey, FragValue};

use crate::model::Table;
use fw_user::{
    kernel::apply,
    kernel::flows::FlowTable,
    kernel::loader::{self, LoadOptions, PolicyMaps},
    policy::compile::tables::CompiledPhase,
};

pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_UNSPEC: u32 = u32::MAX;

pub struct Kernel {
    ebpf: Ebpf,
    /// The policy maps, and the flow tables (`flows`, `flows_in`).
    pub policy: PolicyMaps,
    frags: BpfHashMap<MapData, FragKey, FragValue>,
    flow_stats: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, Counter>,
    rule_stats: PerCpuArray<MapData, Counter>,
}

fn program_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Egress => maps::PROG_EGRESS,
        Direction::Inbound => maps::PROG_INGRESS,
    }
}

impl Kernel {
    /// Loads the embedded object and both programs (through the verifier).
    pub fn load() -> Kernel {
        Kernel::load_with(&LoadOptions::here().expect("load options"))
    }

    /// [`Kernel::load`] with other capacities.
    pub fn load_with(options: &LoadOptions) -> Kernel {
        let mut ebpf = loader::load(options).expect("loading the fw kernel object");
        let policy = PolicyMaps::take(&mut ebpf).expect("taking the policy maps");
        let take = |ebpf: &mut Ebpf, name: &str| ebpf.take_map(name).unwrap_or_else(|| panic!("no map {name}"));
        let frags = BpfHashMap::try_from(take(&mut ebpf, maps::FRAGS)).expect("FW_FRAGS");
        let flow_stats = PerCpuArray::try_from(take(&mut ebpf, maps::FLOW_STATS)).expect("FW_FLOW_STATS");
        let stats = PerCpuArray::try_from(take(&mut ebpf, maps::STATS)).expect("FW_STATS");
        let rule_stats = PerCpuArray::try_from(take(&mut ebpf, maps::RULE_STATS)).expect("FW_RULE_STATS");
        for name in [maps::PROG_EGRESS, maps::PROG_INGRESS] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name}"))
                .try_into()
                .expect("a TC classifier");
            program.load().unwrap_or_else(|e| panic!("the verifier rejected {name}: {e:?}"));
        }
        Kernel { ebpf, policy, frags, flow_stats, stats, rule_stats }
    }

    pub fn program(&self, direction: Direction) -> &SchedClassifier {
        self.ebpf.program(program_name(direction)).expect("program").try_into().expect("a TC classifier")
    }

    /// One BPF_PROG_TEST_RUN: the program's return value.
    pub fn run(&self, direction: Direction, frame: &[u8]) -> Result<u32, ProgramError> {
        let opts = TestRunOptions { data_in: Some(frame), repeat: 1, ..Default::default() };
        self.program(direction).test_run(opts).map(|r| r.return_value)
    }

    fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Counter {
        let values = map.get(&index, 0).unwrap_or_else(|e| panic!("reading counter {index}: {e}"));
        values
            .iter()
            .fold(Counter::default(), |a, c| Counter { packets: a.packets + c.packets, bytes: a.bytes + c.bytes })
    }

    pub fn stat(&self, index: u32) -> Counter {
        Self::sum(&self.stats, index)
    }

    pub fn all_stats(&self) -> Vec<Counter> {
        (0..STATS_ENTRIES).map(|i| self.stat(i)).collect()
    }

    pub fn rule_stat(&self, rule: u32) -> Counter {
        Self::sum(&self.rule_stats, rule)
    }

    fn flow_map(&self, table: Table) -> &FlowTable {
        match table {
            Table::Protected => &self.policy.flows,
            Table::Probation => &self.policy.flows_in,
        }
    }

    /// The entries of one flow table.
    pub fn flows(&self, table: Table) -> Vec<(FlowKey, FlowValue)> {
        self.flow_map(table).iter().map(|r| r.expect("reading a flow table")).collect()
    }

    /// Counter `index` of `FW_FLOW_STATS`, summed over CPUs.
    pub fn flow_stat(&self, index: u32) -> u64 {
        self.flow_stats.get(&index, 0).unwrap_or_else(|e| panic!("reading flow counter {index}: {e}")).iter().sum()
    }

    /// Counter `index` of `FW_EVENT_STATS` (events emitted, suppressed,
    /// lost), summed over CPUs.
    pub fn event_stat(&self, index: u32) -> u64 {
        let map = self.ebpf.map(maps::EVENT_STATS).expect("FW_EVENT_STATS");
        let stats = PerCpuArray::<_, u64>::try_from(map).expect("a per-CPU array");
        stats.get(&index, 0).unwrap_or_else(|e| panic!("reading event counter {index}: {e}")).iter().sum()
    }

    pub fn frags(&self) -> Vec<(FragKey, FragValue)> {
        self.frags.iter().map(|r| r.expect("reading FW_FRAGS")).collect()
    }

    /// Empties the flow and fragment tables.
    pub fn clear_state(&mut self) {
        for flows in [&mut self.policy.flows, &mut self.policy.flows_in] {
            let keys: Vec<FlowKey> = flows.keys().map(|k| k.expect("flow key")).collect();
            for k in keys {
                let _ = flows.remove(&k);
            }
        }
        let frag_keys: Vec<FragKey> = self.frags.keys().map(|k| k.expect("FW_FRAGS key")).collect();
        for k in frag_keys {
            let _ = self.frags.remove(&k);
        }
    }

    pub fn insert_flow(&mut self, table: Table, key: &FlowKey, value: &FlowValue) {
        let map = match table {
            Table::Protected => &mut self.policy.flows,
            Table::Probation => &mut self.policy.flows_in,
        };
        map.insert(key, value, 0).expect("writing a flow table");
    }

    pub fn insert_frag(&mut self, key: &FragKey, value: &FragValue) {
        self.frags.insert(key, value, 0).expect("writing FW_FRAGS");
    }

    /// A phase switch as `fw` does it: write the new generation, publish it,
    /// delete the previous one.
    pub fn switch(&mut self, phase: &CompiledPhase, generation: u32, previous: Option<u32>) {
        apply::write_generation(&mut self.policy, phase, generation, &|| {}).expect("writing the policy");
        apply::activate(&mut self.policy, generation).expect("activating the policy");
        if let Some(old) = previous {
            apply::delete_generations(&mut self.policy, &|g| g == old, &mut || {})
                .expect("deleting the old generation");
        }
    }
}

/// CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns`.
pub fn coarse_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
