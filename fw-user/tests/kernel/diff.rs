//! The differential driver: every frame goes through the reference model
//! and through the loaded kernel program (BPF_PROG_TEST_RUN); the return
//! code, the reason (the one `FW_STATS` counter that moved, with the frame's
//! length in bytes) and the rule (`FW_RULE_STATS`) must agree. At the end of
//! every segment the whole counter arrays and the flow and fragment tables
//! are compared with the model's.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use fw_common::{
    addr6::HASH_FROM_ENTRIES,
    flow::{FLOW_AUDIT, FLOW_FIN_IN, FLOW_FIN_OUT, FLOW_INBOUND, FLOW_RST, FLOW_SYN_ACK, FRAG_TIMEOUT_NS},
    stats::{stats_index, STATS_ENTRIES},
    Counter, Direction, FlowKey, FlowValue, FragKey, FragValue, Reason,
};

use crate::{
    gen::{Conv, Gen, Variant},
    kernel::{coarse_now, Kernel, TC_ACT_SHOT, TC_ACT_UNSPEC},
    model::{self, flow_key, flow_timeout, Active, Outcome, State, Table, NO_RULE},
    packets::*,
    policies::{random_policy, Force, Hints},
};
use fw_lab::rng::Rng;

/// Rule counters compared at segment ends (random policies have fewer rules).
const RULE_WINDOW: u32 = 64;
/// The longest a segment may run without a state reset, so that no flow
/// the kernel created crosses a timeout while the model is not looking
/// (the shortest timeout is 10 s).
const RESET_EVERY_NS: u64 = 4_000_000_000;
/// At most this many examples kept per kind of disagreement.
const EXAMPLES_PER_KIND: u64 = 3;

const SEC: u64 = 1_000_000_000;

pub struct Disagreement {
    pub kind: String,
    pub label: String,
    pub direction: Direction,
    pub frame: Vec<u8>,
    pub detail: String,
    pub case: u64,
}

pub struct Driver {
    pub kernel: Kernel,
    pub state: State,
    pub active: Active,
    pub gen: Gen,
    known: Vec<Counter>,
    known_rules: Vec<Counter>,
    pub cases: u64,
    /// Cuts that BPF_PROG_TEST_RUN refuses (see [`test_run_accepts`]).
    pub refused: u64,
    pub disagreements: Vec<Disagreement>,
    pub kinds: BTreeMap<String, u64>,
    pub tally: BTreeMap<(u8, Reason), u64>,
    recent: Vec<(Direction, Vec<u8>)>,
    last_reset: u64,
    paranoid: bool,
    label: String,
    /// Every policy applied: (phase, YAML), for the failure report.
    pub policies: Vec<(String, String)>,
    /// The latest disagreement, whether or not kept as an example.
    pub last_disagreement: Option<String>,
}

fn reason_name(index: u32) -> String {
    let dir = if (index / Reason::SLOTS).is_multiple_of(2) { "egress" } else { "ingress" };
    // The counters of the phase slot the packet was judged under.
    let phase_slot = index / (2 * Reason::SLOTS);
    match Reason::from_u8((index % Reason::SLOTS) as u8) {
        Some(r) => format!("{dir}/{}@{phase_slot}", r.as_str()),
        None => format!("{dir}/slot{}@{phase_slot}", index % Reason::SLOTS),
    }
}

fn rule_name(rule: u32) -> String {
    if rule == NO_RULE {
        "-".into()
    } else {
        rule.to_string()
    }
}

impl Driver {
    pub fn new(seed: u64, paranoid: bool) -> Driver {
        let kernel = Kernel::load();
        let known = kernel.all_stats();
        let known_rules = (0..RULE_WINDOW).map(|r| kernel.rule_stat(r)).collect();
        Driver {
            kernel,
            state: State::default(),
            active: Active::unwritten(),
            gen: Gen { rng: Rng::new(seed), hints: Hints::default() },
            known,
            known_rules,
            cases: 0,
            refused: 0,
            disagreements: Vec::new(),
            kinds: BTreeMap::new(),
            tally: BTreeMap::new(),
            recent: Vec::new(),
            last_reset: coarse_now(),
            paranoid,
            label: String::new(),
            policies: Vec::new(),
            last_disagreement: None,
        }
    }

    fn record(&mut self, kind: String, direction: Direction, frame: &[u8], detail: String) {
        self.last_disagreement = Some(format!("{kind}: {detail}"));
        let count = self.kinds.entry(kind.clone()).or_insert(0);
        *count += 1;
        if *count <= EXAMPLES_PER_KIND {
            self.disagreements.push(Disagreement {
                kind,
                label: self.label.clone(),
                direction,
                frame: frame.to_vec(),
                detail,
                case: self.cases,
            });
        }
    }

    /// Runs one frame through the model and the kernel and compares.
    pub fn case(&mut self, direction: Direction, frame: &[u8]) -> Option<Outcome> {
        if !test_run_accepts(frame) {
            let refused = self.kernel.run(direction, frame).is_err();
            assert!(refused, "BPF_PROG_TEST_RUN accepted a frame it should refuse: {}", hex(frame));
            self.refused += 1;
            return None;
        }
        let now = coarse_now();
        let state_before = self.paranoid.then(|| self.state.clone());
        let expected = self.state.judge(&self.active, direction, frame, now);
        let ret = self
            .kernel
            .run(direction, frame)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed on {}: {e:?}", hex(frame)));
        self.cases += 1;
        *self.tally.entry((direction as u8, expected.reason)).or_insert(0) += 1;

        let expected_ret = if expected.reason.is_drop() { TC_ACT_SHOT } else { TC_ACT_UNSPEC };
        let index = stats_index(self.active.generation & 1, direction, expected.reason);
        let c = self.kernel.stat(index);
        let k = self.known[index as usize];
        let len = frame.len() as u64;
        let mut actual_reason = reason_name(index);
        let reason_ok = !self.paranoid && c.packets == k.packets + 1 && c.bytes == k.bytes + len;
        let mut counters_ok = reason_ok;
        if reason_ok {
            self.known[index as usize] = c;
        } else {
            let full = self.kernel.all_stats();
            let moved: Vec<String> = (0..STATS_ENTRIES)
                .filter(|&i| full[i as usize] != self.known[i as usize])
                .map(|i| {
                    let (a, b) = (full[i as usize], self.known[i as usize]);
                    let name = reason_name(i);
                    if a.packets == b.packets + 1 && a.bytes == b.bytes + len {
                        name
                    } else {
                        format!("{name}(+{} pkts, +{} bytes)", a.packets - b.packets, a.bytes - b.bytes)
                    }
                })
                .collect();
            actual_reason = if moved.is_empty() { "no counter".into() } else { moved.join(" and ") };
            counters_ok = moved.len() == 1 && actual_reason == reason_name(index);
            self.known = full;
        }

        let mut rule_ok = true;
        let mut actual_rule = rule_name(expected.rule);
        if expected.rule != NO_RULE && expected.rule < RULE_WINDOW {
            let r = self.kernel.rule_stat(expected.rule);
            let kr = self.known_rules[expected.rule as usize];
            if r.packets == kr.packets + 1 && r.bytes == kr.bytes + len && !self.paranoid {
                self.known_rules[expected.rule as usize] = r;
            } else {
                rule_ok = false;
            }
        } else if self.paranoid {
            rule_ok = false;
        }
        if !rule_ok {
            let moved = self.rule_diff();
            rule_ok = match expected.rule {
                NO_RULE => moved.is_empty(),
                r => moved == vec![(r, 1)],
            };
            actual_rule = if moved.is_empty() {
                "-".into()
            } else {
                moved.iter().map(|(r, n)| format!("{r}(+{n})")).collect::<Vec<_>>().join(",")
            };
        }

        if ret != expected_ret || !counters_ok || !rule_ok {
            let verdict = |r: u32| match r {
                TC_ACT_SHOT => "drop".to_string(),
                TC_ACT_UNSPEC => "pass".to_string(),
                other => format!("ret {other}"),
            };
            // Grouped by what the kernel did against what the model expected;
            // the exact reasons are in each example's detail.
            let kernel_reason = actual_reason.split('/').nth(1).unwrap_or(&actual_reason).to_string();
            let kind = format!(
                "kernel {} {} where the model expects {}",
                verdict(ret),
                kernel_reason,
                if expected.reason.is_drop() { "a drop" } else { "a pass" },
            );
            let detail = format!(
                "model: {} reason {} rule {}; kernel: {} reason {} rule {}; parsed by the model as {:?}{}",
                verdict(expected_ret),
                expected.reason.as_str(),
                rule_name(expected.rule),
                verdict(ret),
                actual_reason,
                actual_rule,
                model::parse(frame),
                match state_before {
                    Some(s) => format!(
                        "; model state before: {} + {} flows, {} frags",
                        s.flows.len(),
                        s.flows_in.len(),
                        s.frags.len()
                    ),
                    None => String::new(),
                }
            );
            self.record(kind, direction, frame, detail);
            // Carry on from what the kernel actually holds.
            self.resync();
        }
        Some(expected)
    }

    /// Rule counters in the window that moved since the last known values
    /// (and makes the current values known).
    fn rule_diff(&mut self) -> Vec<(u32, u64)> {
        let mut moved = Vec::new();
        for r in 0..RULE_WINDOW {
            let c = self.kernel.rule_stat(r);
            let k = self.known_rules[r as usize];
            if c != k {
                moved.push((r, c.packets - k.packets));
            }
            self.known_rules[r as usize] = c;
        }
        moved
    }

    fn resync(&mut self) {
        self.state.flows = self.kernel.flows(Table::Protected).into_iter().collect();
        self.state.flows_in = self.kernel.flows(Table::Probation).into_iter().collect();
        self.state.frags = self.kernel.frags().into_iter().collect();
    }

    /// Empties the flow and fragment tables of both.
    pub fn reset(&mut self) {
        self.kernel.clear_state();
        let paths = std::mem::take(&mut self.state.paths);
        self.state = State { paths, ..State::default() };
        self.last_reset = coarse_now();
    }

    fn maybe_reset(&mut self) {
        if coarse_now().wrapping_sub(self.last_reset) > RESET_EVERY_NS {
            self.reset();
        }
    }

    pub fn insert_flow(&mut self, table: Table, key: FlowKey, value: FlowValue) {
        self.kernel.insert_flow(table, &key, &value);
        self.state.table_mut(table).insert(key, value);
    }

    pub fn insert_frag(&mut self, key: FragKey, value: FragValue) {
        self.kernel.insert_frag(&key, &value);
        self.state.frags.insert(key, value);
    }

    /// Compares counters and tables with the model's after a segment.
    pub fn check_state(&mut self) {
        let full = self.kernel.all_stats();
        let drifted: Vec<(u32, Counter, Counter)> = (0..STATS_ENTRIES)
            .zip(full.iter().zip(&self.known))
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        for (i, actual, known) in drifted {
            let detail = format!("{} is {actual:?}, expected {known:?}", reason_name(i));
            self.record(format!("counter drift in {}", reason_name(i)), Direction::Egress, &[], detail);
        }
        self.known = full;
        let moved = self.rule_diff();
        if !moved.is_empty() {
            self.record("rule counter drift".into(), Direction::Egress, &[], format!("moved unexpectedly: {moved:?}"));
        }

        let mut problems = Vec::new();
        for table in [Table::Protected, Table::Probation] {
            let kernel_flows: HashMap<FlowKey, FlowValue> = self.kernel.flows(table).into_iter().collect();
            let model_flows = self.state.table(table);
            for (k, v) in &kernel_flows {
                match model_flows.get(k) {
                    None => problems.push(format!("kernel has flow {k:?} -> {v:?} in {table:?}, model has none there")),
                    Some(m) => {
                        let same = m.generation == v.generation
                            && m.rule == v.rule
                            && m.policy_port == v.policy_port
                            && m.flags == v.flags
                            && (m.flags & FLOW_SYN_ACK == 0 || m.syn_ack_seq == v.syn_ack_seq)
                            && v.last_seen_ns.abs_diff(m.last_seen_ns) <= SEC + SEC / 10;
                        if !same {
                            problems.push(format!("flow {k:?} in {table:?}: kernel {v:?}, model {m:?}"));
                        }
                    }
                }
            }
            for (k, m) in model_flows {
                if !kernel_flows.contains_key(k) {
                    problems.push(format!("model has flow {k:?} -> {m:?} in {table:?}, kernel has none there"));
                }
            }
        }
        let kernel_frags: HashMap<FragKey, FragValue> = self.kernel.frags().into_iter().collect();
        for (k, v) in &kernel_frags {
            match self.state.frags.get(k) {
                Some(m) if m.rule == v.rule && v.seen_ns.abs_diff(m.seen_ns) <= SEC + SEC / 10 => {}
                m => problems.push(format!("fragment {k:?}: kernel {v:?}, model {m:?}")),
            }
        }
        for (k, m) in &self.state.frags {
            if !kernel_frags.contains_key(k) {
                problems.push(format!("model has fragment {k:?} -> {m:?}, kernel has none"));
            }
        }
        if !problems.is_empty() {
            self.record("flow/fragment tables differ".into(), Direction::Egress, &[], problems.join("\n      "));
            self.resync();
        }
    }

    /// A phase switch to `phase` of the policy `yaml` (directed tests).
    pub fn apply_yaml(&mut self, yaml: &str, phase: &str) {
        let compiled = crate::policies::compile_yaml(yaml, "directed.yaml", phase);
        let previous = self.active.phase.as_ref().map(|_| self.active.generation);
        let generation = previous.map_or(1, |g| g.wrapping_add(1));
        self.kernel.switch(&compiled, generation, previous);
        self.active = Active { generation, phase: Some(compiled) };
        self.policies.push((phase.to_string(), yaml.to_string()));
    }

    /// A phase switch to a fresh random policy.
    pub fn switch_policy(&mut self, serial: usize, force: Force) {
        let policy = random_policy(&mut self.gen.rng, serial, force);
        let previous = self.active.phase.as_ref().map(|_| self.active.generation);
        // Alternate parity (the phase slot is `generation & 1`), sometimes
        // with a jump, once across the u32 wrap.
        let generation = match previous {
            None => 1,
            // Next to the top, so that later switches wrap (past 0, which
            // means "no policy", as `fw switch` skips it).
            Some(g) if serial == 4 => 0xffff_fffe | ((g & 1) ^ 1),
            Some(g) => match g.wrapping_add(1 + 2 * self.gen.rng.below(3) as u32) {
                0 => 2,
                next => next,
            },
        };
        // Every other policy through the IPv6 hash (`fw_common::addr6`),
        // which only phases of many IPv6 entries get otherwise.
        self.kernel.policy.addr6_hash_from = if serial % 2 == 1 { 0 } else { HASH_FROM_ENTRIES };
        self.kernel.switch(&policy.compiled, generation, previous);
        eprintln!(
            "policy {serial}: generation {generation}, phase {} ({} addr4, {} addr6{}, {} port entries, settings {:?})",
            policy.phase,
            policy.compiled.addr4.len(),
            policy.compiled.addr6.len(),
            if serial % 2 == 1 { " through the hash" } else { "" },
            policy.compiled.ports.len(),
            policy.compiled.settings
        );
        self.active = Active { generation, phase: Some(policy.compiled) };
        self.gen.hints = policy.hints;
        self.policies.push((policy.phase, policy.yaml));
        self.label = format!("switch/{serial}");
    }

    fn remember(&mut self, direction: Direction, frame: &[u8]) {
        if self.recent.len() >= 400 {
            let i = self.gen.rng.below(400) as usize;
            self.recent[i] = (direction, frame.to_vec());
        } else {
            self.recent.push((direction, frame.to_vec()));
        }
    }

    /// Packets seen before the last switch, again: their flows were admitted
    /// under the previous generation and must be re-checked.
    pub fn replay_recent(&mut self) {
        self.label = "replay-after-switch".into();
        let recent = std::mem::take(&mut self.recent);
        for (d, f) in &recent {
            self.case(*d, f);
        }
        // And once more: what the re-check admitted is now a plain flow.
        for (d, f) in recent.iter().take(100) {
            self.case(*d, f);
        }
        self.recent = recent;
        self.check_state();
    }

    fn random_direction(&mut self) -> Direction {
        if self.gen.rng.percent(55) {
            Direction::Egress
        } else {
            Direction::Inbound
        }
    }

    fn flow_age(&mut self, timeout: u64, fresh: bool) -> u64 {
        if fresh {
            let mut age = self.gen.rng.below(timeout - 2 * SEC);
            // Stay clear of the touch interval (1 s): its effect on
            // last_seen must be the same for the model and the kernel.
            if (SEC - SEC / 5..SEC + SEC / 5).contains(&age) {
                age += SEC / 2;
            }
            age
        } else if self.gen.rng.percent(10) {
            // In the future: a clock jump; wrapping makes it stale.
            0u64.wrapping_sub(self.gen.rng.range(SEC, 1000 * SEC))
        } else {
            timeout + 2 * SEC + self.gen.rng.below(10_000 * SEC)
        }
    }

    fn conv_flow_key(conv: &Conv) -> FlowKey {
        flow_key(if conv.v6 { 6 } else { 4 }, conv.proto, &conv.local, &conv.remote, conv.lport, conv.rport)
    }

    /// A flow entry for `conv` as if some earlier packet had opened it: in
    /// the protected table when this host opened it or (half the time) an
    /// inbound one was promoted, else in probation, perhaps with this
    /// host's SYN-ACK recorded (mostly the sequence number the generator's
    /// segments carry, so that a generated ACK can complete the handshake).
    fn seed_flow(&mut self, conv: &Conv) {
        let rng = &mut self.gen.rng;
        let inbound = rng.percent(40);
        let table = if inbound && rng.percent(50) { Table::Probation } else { Table::Protected };
        let mut flags = if inbound { FLOW_INBOUND } else { 0 };
        if conv.proto == TCP && rng.percent(30) {
            // Closing marks: half-closed either way, closed, reset.
            flags |=
                *rng.pick(&[FLOW_FIN_OUT, FLOW_FIN_IN, FLOW_FIN_OUT | FLOW_FIN_IN, FLOW_RST, FLOW_RST | FLOW_FIN_IN]);
        }
        if rng.percent(10) {
            flags |= FLOW_AUDIT;
        }
        let mut syn_ack_seq = 0;
        if table == Table::Probation && conv.proto == TCP && rng.percent(75) {
            flags |= FLOW_SYN_ACK;
            syn_ack_seq = if rng.percent(80) { TCP_SEQ } else { rng.u32() };
        }
        let generation = match rng.weighted(&[50, 25, 25]) {
            0 => self.active.generation,
            1 => self.active.generation.wrapping_sub(1),
            _ => rng.u32(),
        };
        let policy_port = match rng.weighted(&[80, 20]) {
            0 if conv.is_echo() => {
                if conv.v6 {
                    128 << 8
                } else {
                    8 << 8
                }
            }
            0 if inbound => conv.lport,
            0 => conv.rport,
            _ => rng.u16(),
        };
        let rule = rng.below(u64::from(RULE_WINDOW) / 2) as u32;
        let fresh = rng.percent(65);
        let settings = self.active.settings();
        let age = self.flow_age(flow_timeout(conv.proto, flags, &settings), fresh);
        let value = FlowValue {
            last_seen_ns: coarse_now().wrapping_sub(age),
            generation,
            rule,
            policy_port,
            flags,
            _pad1: 0,
            syn_ack_seq,
        };
        self.insert_flow(table, Self::conv_flow_key(conv), value);
    }

    fn seed_frag(&mut self, conv: &Conv, id: u32, direction: Direction) {
        let (src, dst, _, _) = conv.ends(direction);
        let fresh = self.gen.rng.percent(60);
        let age = if fresh {
            self.gen.rng.below(FRAG_TIMEOUT_NS - 2 * SEC)
        } else {
            FRAG_TIMEOUT_NS + 2 * SEC + self.gen.rng.below(1000 * SEC)
        };
        let rule = if self.gen.rng.percent(20) { NO_RULE } else { self.gen.rng.below(32) as u32 };
        let family = if conv.v6 { 6 } else { 4 };
        let key = FragKey { family, proto: conv.proto, _pad: 0, id, src, dst };
        self.insert_frag(key, FragValue { seen_ns: coarse_now().wrapping_sub(age), rule, _pad: 0 });
    }

    fn variant(&mut self, conv: &Conv) -> Variant {
        let rng = &mut self.gen.rng;
        if conv.is_echo() {
            [
                Variant::EchoRequest,
                Variant::EchoReply,
                Variant::ErrorQuoting,
                Variant::ErrorQuotingOther,
                Variant::FirstFragment,
                Variant::LaterFragment,
            ][rng.weighted(&[5, 4, 2, 1, 1, 1])]
        } else {
            [
                Variant::Data,
                Variant::ErrorQuoting,
                Variant::ErrorQuotingOther,
                Variant::FirstFragment,
                Variant::LaterFragment,
            ][rng.weighted(&[8, 3, 1, 2, 2])]
        }
    }

    /// From empty tables: a conversation, perhaps with a flow or fragment
    /// entry planted first (fresh, expired, of another generation), then a
    /// few packets of it both ways.
    pub fn scenario(&mut self) {
        self.label = "scenario".into();
        self.reset();
        let conv = self.gen.conv();
        let frag_id = self.gen.rng.u32() & if conv.v6 { u32::MAX } else { 0xffff };
        if self.gen.rng.percent(50) {
            self.seed_flow(&conv);
        }
        if self.gen.rng.percent(20) {
            let d = self.random_direction();
            self.seed_frag(&conv, frag_id, d);
        }
        if self.gen.rng.percent(10) {
            let other = self.gen.conv();
            self.seed_flow(&other);
        }
        let steps = self.gen.rng.usize(1, 8);
        let mut last: Option<(Direction, Vec<u8>)> = None;
        for _ in 0..steps {
            let (d, f) = match &last {
                Some((d, f)) if self.gen.rng.percent(20) => (*d, f.clone()),
                _ => {
                    let d = self.random_direction();
                    let v = self.variant(&conv);
                    let id = if self.gen.rng.percent(85) { frag_id } else { self.gen.rng.u32() & 0xffff };
                    (d, self.gen.packet(&conv, d, v, id))
                }
            };
            self.case(d, &f);
            self.remember(d, &f);
            last = Some((d, f));
        }
        self.check_state();
        // The planted entries were aged against the clock of this moment:
        // gone before they could cross a timeout unseen.
        self.reset();
    }

    fn any_valid(&mut self, pool: &[Conv]) -> (Direction, Vec<u8>) {
        let d = self.random_direction();
        let f = match self.gen.rng.weighted(&[75, 8, 10, 7]) {
            0 => {
                let conv = pool[self.gen.rng.below(pool.len() as u64) as usize].clone();
                let v = self.variant(&conv);
                // Few ids, so that later fragments often meet their first.
                let id = self.gen.rng.u32() & 0x3;
                self.gen.packet(&conv, d, v, id)
            }
            1 => self.gen.neighbour_discovery(d),
            2 => self.gen.odd(d),
            _ => self.gen.non_ip(),
        };
        (d, f)
    }

    /// Many packets of a pool of conversations, no reset in between: the
    /// model carries the state (flows opened, fragments remembered).
    pub fn bulk(&mut self, n: usize) {
        self.label = "bulk".into();
        self.maybe_reset();
        let pool: Vec<Conv> = (0..12).map(|_| self.gen.conv()).collect();
        let mut sent: Vec<(Direction, Vec<u8>)> = Vec::new();
        for _ in 0..n {
            let (d, f) = if !sent.is_empty() && self.gen.rng.percent(12) {
                sent[self.gen.rng.below(sent.len() as u64) as usize].clone()
            } else {
                self.any_valid(&pool)
            };
            self.case(d, &f);
            self.remember(d, &f);
            sent.push((d, f));
        }
        self.check_state();
    }

    /// A valid frame cut at every byte (test-run needs 14 at least).
    pub fn truncations(&mut self) {
        self.label = "truncation".into();
        self.maybe_reset();
        let conv = self.gen.conv();
        let (d, f) = self.any_valid(std::slice::from_ref(&conv));
        for cut in 14..=f.len() {
            self.case(d, &f[..cut]);
        }
        self.check_state();
    }

    /// Where the IP header starts (after any VLAN tags).
    fn l3_offset(frame: &[u8]) -> Option<usize> {
        let mut off = 12;
        while off + 2 <= frame.len() {
            let et = u16::from_be_bytes([frame[off], frame[off + 1]]);
            if et != VLAN_Q && et != VLAN_AD {
                return Some(off + 2);
            }
            off += 4;
        }
        None
    }

    /// A valid IP frame with its headers damaged in one way.
    pub fn malformed(&mut self, n: usize) {
        self.label = "malformed".into();
        self.maybe_reset();
        let pool: Vec<Conv> = (0..4).map(|_| self.gen.conv()).collect();
        for _ in 0..n {
            let (d, mut f) = self.any_valid(&pool);
            let Some(l3) = Self::l3_offset(&f) else {
                continue;
            };
            let ethertype = u16::from_be_bytes([f[l3 - 2], f[l3 - 1]]);
            if l3 + 40 > f.len() || (ethertype != ETH_P_IP && ethertype != ETH_P_IPV6) {
                self.case(d, &f);
                continue;
            }
            let rng = &mut self.gen.rng;
            let avail = f.len() - l3;
            let set16 = |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_be_bytes());
            match (f[l3] >> 4, rng.below(8)) {
                (4, 0) => f[l3] = 0x40 | rng.below(5) as u8,
                (4, 1) => f[l3] = 0x40 | rng.range(6, 15) as u8,
                (4, 2) => set16(&mut f, l3 + 2, (avail + rng.usize(1, 300)).min(65535) as u16),
                (4, 3) => {
                    let ihl = usize::from(f[l3] & 0xf) * 4;
                    set16(&mut f, l3 + 2, rng.below(ihl as u64) as u16)
                }
                (4, 4) => set16(&mut f, l3 + 2, rng.u16()),
                (4, 5) => f[l3 + 9] = rng.u8(),
                (4, 6) => set16(&mut f, l3 + 6, rng.u16()),
                (6, 0) => set16(&mut f, l3 + 4, 0),
                (6, 1) => set16(&mut f, l3 + 4, (avail - 40 + rng.usize(1, 300)).min(65535) as u16),
                (6, 2) => {
                    let p = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]);
                    set16(&mut f, l3 + 4, rng.range(1, u64::from(p.max(1))) as u16)
                }
                (6, 3) => {
                    let any = rng.u8();
                    f[l3 + 6] = *rng.pick(&[0u8, 43, 44, 51, 60, 135, 139, 140, 253, 254, 59, any])
                }
                (6, 4 | 5) if f.len() > l3 + 40 => f[l3 + 40] = rng.u8(), // what follows the fixed header
                (_, 6) => {
                    // A third VLAN tag in front.
                    let mut g = f[..12].to_vec();
                    for _ in 0..rng.usize(1, 3) {
                        g.extend([0x81, 0x00, 0x00, 0x07]);
                    }
                    g.extend(&f[12..]);
                    f = g;
                }
                _ => {
                    let version = loop {
                        let v = rng.below(16) as u8;
                        if v != f[l3] >> 4 || rng.percent(10) {
                            break v;
                        }
                    };
                    if rng.percent(50) {
                        f[l3] = version << 4 | (f[l3] & 0xf);
                    } else {
                        for _ in 0..rng.usize(1, 3) {
                            let i = rng.usize(12, (l3 + 60).min(f.len() - 1));
                            f[i] ^= 1 << rng.below(8);
                        }
                    }
                }
            }
            self.case(d, &f);
        }
        self.check_state();
    }

    /// IPv6 extension-header chains: long ones (5-9 headers), unknown types,
    /// fragment headers anywhere, AH, headers running past the datagram.
    pub fn ext_chains(&mut self, n: usize) {
        self.label = "ext-chain".into();
        self.maybe_reset();
        for _ in 0..n {
            let d = self.random_direction();
            let mut conv = self.gen.conv();
            while !conv.v6 {
                conv = self.gen.conv();
            }
            let (src, dst, sport, dport) = conv.ends(d);
            let proto = *self.gen.rng.pick(&[TCP, UDP, SCTP, ICMPV6, 59]);
            let mut ip = Ip::new(true, src, dst, proto);
            let count = self.gen.rng.usize(1, 9);
            for i in 0..count {
                let e = match self.gen.rng.weighted(&[70, 12, 10]) {
                    0 => self.gen.ext(i == 0),
                    1 => Ext::Fragment {
                        offset: if self.gen.rng.percent(50) { 0 } else { self.gen.rng.range(1, 100) as u16 },
                        more: self.gen.rng.percent(50),
                        id: self.gen.rng.u32(),
                    },
                    _ => Ext::Unknown { ty: *self.gen.rng.pick(&[135u8, 139, 140, 253, 254]) },
                };
                ip.v6_ext.push(e);
            }
            let l4 = match proto {
                TCP => tcp(sport, dport, TCP_SYN, 0),
                UDP => udp(sport, dport, 4),
                SCTP => sctp(sport, dport, 0),
                ICMPV6 => icmp(*self.gen.rng.pick(&[128u8, 129, 135, 1]), 0, [0; 4], &[0; 8]),
                _ => vec![],
            };
            let (tags, pad) = self.gen.l2();
            let mut f = frame(&tags, &ip, &l4, pad);
            if self.gen.rng.percent(15) {
                // Shrink the payload length so the chain runs past it.
                let l3 = Self::l3_offset(&f).expect("ipv6");
                let p = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]);
                let q = self.gen.rng.range(1, u64::from(p)) as u16;
                f[l3 + 4..l3 + 6].copy_from_slice(&q.to_be_bytes());
            }
            self.case(d, &f);
            self.remember(d, &f);
        }
        self.check_state();
    }

    /// Random bytes behind a plausible or random start.
    pub fn random_bytes(&mut self, n: usize) {
        self.label = "random-bytes".into();
        self.maybe_reset();
        for _ in 0..n {
            let d = self.random_direction();
            let rng = &mut self.gen.rng;
            let f = match rng.below(5) {
                0 => rng.bytes_between(14, 120),
                1 => {
                    let et = *rng.pick(&[ETH_P_IP, ETH_P_IPV6, VLAN_Q, VLAN_AD]);
                    let mut f = ethernet(&[], et);
                    f.extend(rng.bytes_between(0, 100));
                    f
                }
                2 => {
                    let mut f = ethernet(&[], ETH_P_IP);
                    f.push(0x40 | rng.range(5, 15) as u8);
                    f.extend(rng.bytes_between(0, 80));
                    f
                }
                3 => {
                    let mut f = ethernet(&[], ETH_P_IPV6);
                    f.push(0x60);
                    f.extend(rng.bytes_between(0, 100));
                    f
                }
                _ => {
                    let mut f = ethernet(&[VLAN_AD], VLAN_Q);
                    f.extend(rng.bytes_between(0, 60));
                    f
                }
            };
            self.case(d, &f);
        }
        self.check_state();
    }

    /// One segment of a randomly chosen kind.
    pub fn segment(&mut self) {
        match self.gen.rng.weighted(&[40, 8, 22, 12, 10, 8]) {
            0 => self.scenario(),
            1 => self.bulk(300),
            2 => self.truncations(),
            3 => self.malformed(50),
            4 => self.ext_chains(50),
            _ => self.random_bytes(50),
        }
    }
}

/// Whether BPF_PROG_TEST_RUN takes `frame` for a TC program: it wants a
/// whole Ethernet header and, for an untagged IPv4/IPv6 frame, the fixed IP
/// header (the kernel checks `skb->protocol` against the linear length).
pub fn test_run_accepts(frame: &[u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    match u16::from_be_bytes([frame[12], frame[13]]) {
        ETH_P_IP => frame.len() >= 14 + 20,
        ETH_P_IPV6 => frame.len() >= 14 + 40,
        _ => true,
    }
}

/// The whole differential run; returns the driver for reporting.
pub fn run(seed: u64, target: u64, paranoid: bool) -> Driver {
    let started = Instant::now();
    let mut d = Driver::new(seed, paranoid);
    // Before any policy is written: generation 0, zeroed settings (deny).
    d.label = "unwritten".into();
    d.bulk(400);
    d.truncations();
    let policies = (target / 15_000).max(6) as usize;
    let per_policy = target / policies as u64;
    for serial in 0..policies {
        let force = Force { audit: serial == 1, inbound_drop: serial == 2 };
        // Flows opened under the outgoing policy, for the replay to re-check.
        d.bulk(300);
        d.switch_policy(serial, force);
        d.replay_recent();
        let until = d.cases + per_policy;
        while d.cases < until {
            d.segment();
        }
    }
    eprintln!("{} frames run in {:.1?} ({} cuts refused by test-run itself)", d.cases, started.elapsed(), d.refused);
    d
}
