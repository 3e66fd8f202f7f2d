//! Part 1: ns per packet through the real programs with BPF_PROG_TEST_RUN.
//!
//! The object is loaded (never attached), a generated policy written and
//! activated as `fw run` does, then each case runs `repeat` times per call
//! (the kernel reports the mean per run), median of `rounds` calls:
//!
//! * `floor`: `fw_noop`, the same object's do-nothing classifier;
//! * `established`: a UDP packet of an admitted flow (the first run admits
//!   it, every other run is a flow-table hit);
//! * `new`: an ICMP echo reply the policy allows: the whole untracked path
//!   (flow miss, both LPM lookups, verdict, counters) but no flow insert,
//!   which is why repeating it stays a new packet;
//! * `denied`: a TCP SYN a deny rule drops (counted, drop event
//!   rate-limited): repeating it stays a miss too;
//! * `new+insert`: `distinct` different UDP flows, one run each (repeat 1),
//!   median: the first packet of a flow with its insert. Repeat-1 runs carry
//!   the test-run overhead, so their floor is `fw_noop` at repeat 1.

use std::{net::IpAddr, time::Instant};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use fw_common::maps;
use fw_user::{
    kernel::apply,
    kernel::loader::{self, LoadOptions, PolicyMaps},
    policy::compile::{check_capacity, compile_phase, Limits},
    policy::{parse_str_with_resolver, Vars},
};
use serde_json::{json, Value};

use crate::{
    frames::{frame, ECHO_REPLY, TCP, UDP},
    gen,
    stats::median,
};

pub struct Options {
    pub sizes: Vec<usize>,
    pub repeat: u32,
    pub rounds: usize,
    pub distinct: usize,
}

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX;

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    Ok(ebpf.program(name).with_context(|| format!("no program {name}"))?.try_into()?)
}

/// Mean ns per run of `repeat` runs, median over `rounds`; the verdict is checked.
fn measure(prog: &SchedClassifier, data: &[u8], repeat: u32, rounds: usize, expect: u32) -> Result<f64> {
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let r = prog.test_run(TestRunOptions { data_in: Some(data), repeat, ..Default::default() })?;
        if r.return_value != expect {
            bail!("verdict {} instead of {expect}", r.return_value as i32);
        }
        samples.push(r.duration.as_nanos() as f64);
    }
    Ok(median(&mut samples))
}

pub fn run(opts: &Options) -> Result<Value> {
    let mut rows = Vec::new();
    for &rules in &opts.sizes {
        let started = Instant::now();
        let yaml = gen::policy(rules);
        let vars = Vars::from_pairs::<&str, &str>([]);
        let loaded = parse_str_with_resolver(&yaml, "bench.yaml", &vars, &|h| Err(format!("no DNS ({h})")))?;
        let compiled = compile_phase(&loaded.policy, "a")?;
        check_capacity(&compiled, &Limits::default())?;

        let mut ebpf = loader::load(&LoadOptions::here()?)?;
        let mut policy = PolicyMaps::take(&mut ebpf)?;
        apply::write_generation(&mut policy, &compiled, 1, &mut || {})?;
        apply::activate(&mut policy, 1)?;
        for name in [maps::PROG_EGRESS, maps::PROG_NOOP] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            p.load().with_context(|| format!("the verifier rejected {name}"))?;
        }
        let egress = program(&ebpf, maps::PROG_EGRESS)?;
        let noop = program(&ebpf, maps::PROG_NOOP)?;
        eprintln!(
            "testrun: {rules} rules: addr4 {}, addr6 {}, ports {} entries (set up in {:.1?})",
            compiled.addr4.len(),
            compiled.addr6.len(),
            compiled.ports.len(),
            started.elapsed()
        );

        for (family, src, dst) in [
            ("ipv4", IpAddr::from([198, 18, 200, 1]), IpAddr::V4(gen::RECEIVER4)),
            ("ipv6", "2001:db8:c8::1".parse::<IpAddr>()?, IpAddr::V6(gen::RECEIVER6)),
        ] {
            let (r, k) = (opts.repeat, opts.rounds);
            let udp = frame(src, dst, UDP, 40_000, gen::UDP_PORT);
            let floor = measure(noop, &udp, r, k, TC_ACT_UNSPEC)?;
            // The first run admits the flow.
            measure(egress, &udp, 1, 1, TC_ACT_UNSPEC)?;
            let established = measure(egress, &udp, r, k, TC_ACT_UNSPEC)?;
            let new = measure(egress, &frame(src, dst, ECHO_REPLY, 7, 0), r, k, TC_ACT_UNSPEC)?;
            let denied = measure(egress, &frame(src, dst, TCP, 40_001, gen::DENIED_PORT), r, k, TC_ACT_SHOT)?;

            let mut firsts = Vec::with_capacity(opts.distinct);
            let mut floors1 = Vec::with_capacity(opts.distinct);
            for i in 0..opts.distinct {
                // Fresh flows: another source port (and address) each time.
                let src_i = match src {
                    IpAddr::V4(a) => IpAddr::V4((u32::from(a) + (i as u32 >> 14)).into()),
                    IpAddr::V6(a) => IpAddr::V6((u128::from(a) + (i as u128 >> 14)).into()),
                };
                let f = frame(src_i, dst, UDP, 1024 + (i as u16 & 0x3fff), gen::UDP_PORT);
                firsts.push(measure(egress, &f, 1, 1, TC_ACT_UNSPEC)?);
                floors1.push(measure(noop, &f, 1, 1, TC_ACT_UNSPEC)?);
            }
            // Leave the flow table as it was for the next family.
            let keys: Vec<_> = policy.flows.keys().filter_map(|k| k.ok()).collect();
            for key in keys {
                let _ = policy.flows.remove(&key);
            }
            let row = json!({
                "rules": rules, "family": family,
                "floor": floor, "established": established, "new": new, "denied": denied,
                "new_insert": median(&mut firsts), "floor_repeat1": median(&mut floors1),
            });
            eprintln!("testrun: {row}");
            rows.push(row);
        }
    }
    Ok(json!({ "repeat": opts.repeat, "rounds": opts.rounds, "distinct": opts.distinct, "rows": rows }))
}
