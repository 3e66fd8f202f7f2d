//! Drop events' budgets (`fw-ebpf/src/events.rs`): one per rule, and one
//! per reason for the drops no rule decides, per CPU. A flood that uses up
//! one rule's budget must leave every other rule and reason theirs: the
//! budgets are slots of an array indexed by rule id, and a slot shared by
//! mistake would silence the events of a rule nobody flooded.

use aya::programs::{TestRun, TestRunOptions};
use fw_common::{event::event_stats, maps::DEFAULT_EVENT_BUDGET, Direction};

use crate::{gen::LOCAL4, kernel::TC_ACT_SHOT, packets::*};

const POLICY: &str = r#"
name: budgets
phases:
  runtime:
    egress_default: drop
    inbound_default: allow
    egress:
      - { name: no-ssh, to: ["198.18.7.0/24"], proto: udp, ports: [22], action: deny }
      - { name: no-telnet, to: ["198.18.7.0/24"], proto: udp, ports: [23], action: deny }
"#;

const FLOODED: u32 = 5 * DEFAULT_EVENT_BUDGET;

fn denied(dport: u16) -> Vec<u8> {
    frame(&[], &Ip::new(false, v4(LOCAL4), v4([198, 18, 7, 9]), UDP), &udp(40000, dport, 4), 0)
}

/// This thread on the CPU it runs on: the budgets are per CPU, so every
/// run of the test must land on the one the flood used.
fn stay_on_this_cpu() {
    // SAFETY: plain syscalls on this thread, with a zeroed set that gets
    // one CPU.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set), 0, "sched_setaffinity");
    }
}

#[test]
fn a_flood_of_one_rule_leaves_the_other_rules_and_reasons_their_event_budgets() {
    crate::require_root();
    stay_on_this_cpu();
    let mut d = crate::diff::Driver::new(1, false);
    d.apply_yaml(POLICY, "runtime");
    let kernel = &d.kernel;
    let stat = |index| kernel.event_stat(index);
    let run = |frame: &[u8], repeat: u32| {
        let opts = TestRunOptions { data_in: Some(frame), repeat, ..Default::default() };
        let out = kernel.program(Direction::Egress).test_run(opts).expect("BPF_PROG_TEST_RUN");
        assert_eq!(out.return_value, TC_ACT_SHOT, "the frames of this test are all dropped");
    };
    let (emitted, suppressed) = (stat(event_stats::EMITTED), stat(event_stats::SUPPRESSED));

    // One call: the kernel runs the repeats back to back on this CPU, well
    // within one budget window (a second).
    run(&denied(22), FLOODED);
    let flood_emitted = stat(event_stats::EMITTED) - emitted;
    let flood_suppressed = stat(event_stats::SUPPRESSED) - suppressed;
    assert_eq!(
        (flood_emitted, flood_suppressed),
        (u64::from(DEFAULT_EVENT_BUDGET), u64::from(FLOODED - DEFAULT_EVENT_BUDGET)),
        "{FLOODED} drops of one rule: its budget's worth of events, the rest suppressed"
    );

    for (what, frame) in [("the other deny rule", denied(23)), ("the egress default", denied(24))] {
        let before = stat(event_stats::EMITTED);
        run(&frame, 1);
        assert_eq!(stat(event_stats::EMITTED) - before, 1, "{what}'s first drop after the flood must send its event");
    }
}
