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
//!   the test-run overhead, so their floor is `fw_noop` at repeat 1;
//! * `learned established` / `learned new`: the `established` and `new`
//!   packets to an address a name rule allows because the DNS proxy learned
//!   it (`FW_NAMES4`/`FW_NAMES6`, written here as the proxy writes them),
//!   in no static rule's CIDRs: issue 14 wants the first exactly what a
//!   static CIDR's costs (the flow table decides before any policy), the
//!   second shows the learned-address lookup of a new flow.
//!
//! The program's size goes with the rows: instructions after the verifier's
//! rewrites, bytes of JIT code, and instructions the verifier processed.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::HashMap,
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf,
};
use fw_common::{
    maps,
    names::{Learned, NAME_SLOTS},
};
use fw_user::{
    kernel::apply,
    kernel::loader::{self, LoadOptions, PolicyMaps},
    policy::compile::{check_capacity, compile_phase, Limits},
    policy::{names::NameRules, parse_str_with_resolver, Vars},
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
    /// The IPv6 entries from which a phase gets the /64 hash (`fw` uses
    /// `fw_common::addr6::HASH_FROM_ENTRIES`): 0 and a huge number race
    /// the hash against the trie through `fw_egress` itself.
    pub addr6_hash_from: usize,
}

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// The name the learned rows' rules name, and the addresses "learned" for
/// it: in no rule's CIDRs (checked: the packet is dropped by the phase
/// default until the address is learned). Not in the bench's ranges, which
/// the generated rules cover entirely at 10,000 rules and more: TEST-NET-1
/// and the IPv6 discard prefix (RFC 6666). Test-run frames are never sent.
const LEARNED_NAME: &str = "learned.bench.test";
const LEARNED4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const LEARNED6: Ipv6Addr = Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 2);

/// The generated policy of `rules` rules, with `dns:` and two name rules
/// for [`LEARNED_NAME`] (the flow's UDP port; ICMP, for the `new` packet).
fn policy_with_names(rules: usize) -> String {
    let rule = |name: &str, what: &str| format!("      - {{ name: {name}, to: [{LEARNED_NAME}], {what} }}\n");
    gen::policy(rules).replacen(
        "    egress:\n",
        &format!(
            "    dns: {{ resolvers: [\"{}\"] }}\n    egress:\n{}{}",
            gen::RECEIVER4,
            rule("bench-name", &format!("proto: udp, ports: [{}]", gen::UDP_PORT)),
            rule("bench-name-icmp", "proto: [icmp, icmpv6]")
        ),
        1,
    )
}

/// Writes `addr` as learned for `rule_ids`, as the DNS proxy does, for an hour.
fn learn(ebpf: &mut Ebpf, addr: IpAddr, rule_ids: &[u32]) -> Result<()> {
    let mut value = Learned::EMPTY;
    let expires = coarse_now() + 3600 * 1_000_000_000;
    for (i, id) in rule_ids.iter().take(NAME_SLOTS).enumerate() {
        value.rule[i] = *id;
        value.expires_ns[i] = expires;
    }
    match addr {
        IpAddr::V4(a) => {
            let mut map: HashMap<_, [u8; 4], Learned> =
                HashMap::try_from(ebpf.map_mut(maps::NAMES4).context("no FW_NAMES4")?)?;
            map.insert(a.octets(), value, 0)?;
        }
        IpAddr::V6(a) => {
            let mut map: HashMap<_, [u8; 16], Learned> =
                HashMap::try_from(ebpf.map_mut(maps::NAMES6).context("no FW_NAMES6")?)?;
            map.insert(a.octets(), value, 0)?;
        }
    }
    Ok(())
}

/// CLOCK_MONOTONIC_COARSE, the clock of the learned entries' expiry.
fn coarse_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

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
        let yaml = policy_with_names(rules);
        let vars = Vars::from_pairs::<&str, &str>([]);
        let loaded = parse_str_with_resolver(&yaml, "bench.yaml", &vars, &|h| Err(format!("no DNS ({h})")))?;
        let compiled = compile_phase(&loaded.policy, "a")?;
        check_capacity(&compiled, &Limits::default())?;
        let name_rules = NameRules::of_phase(&loaded.policy, "a").context("the bench phase has no name rules")?;
        let learned_rules = name_rules.matching(LEARNED_NAME);
        if learned_rules.len() != 2 {
            bail!("{LEARNED_NAME}: expected two name rules, found {learned_rules:?}");
        }

        let mut ebpf = loader::load(&LoadOptions::here()?)?;
        let mut policy = PolicyMaps::take(&mut ebpf)?;
        policy.addr6_hash_from = opts.addr6_hash_from;
        apply::write_generation(&mut policy, &compiled, 1, &|| {})?;
        apply::activate(&mut policy, 1)?;
        for name in [maps::PROG_EGRESS, maps::PROG_NOOP] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            p.load().with_context(|| format!("the verifier rejected {name}"))?;
        }
        let egress = program(&ebpf, maps::PROG_EGRESS)?;
        let info = egress.info()?;
        let size = json!({
            "translated": info.size_translated().unwrap_or(0) / 8,
            "jited_bytes": info.size_jitted(),
            "verified": info.verified_instruction_count().unwrap_or(0),
        });
        // Not learned yet: the learned rows' packets must meet the phase
        // default, or they would not measure the learned-address path.
        for (dst, kind) in [(LEARNED4.into(), UDP), (LEARNED6.into(), UDP), (LEARNED4.into(), ECHO_REPLY)] {
            let src = if matches!(dst, IpAddr::V4(_)) { "198.18.200.1" } else { "2001:db8:c8::1" };
            measure(egress, &frame(src.parse()?, dst, kind, 40_000, gen::UDP_PORT), 1, 1, TC_ACT_SHOT)
                .with_context(|| format!("{dst} is in a static rule's CIDRs: pick another learned address"))?;
        }
        for addr in [IpAddr::V4(LEARNED4), IpAddr::V6(LEARNED6)] {
            learn(&mut ebpf, addr, &learned_rules)?;
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

        for (family, src, dst, learned) in [
            ("ipv4", IpAddr::from([198, 18, 200, 1]), IpAddr::V4(gen::RECEIVER4), IpAddr::V4(LEARNED4)),
            ("ipv6", "2001:db8:c8::1".parse::<IpAddr>()?, IpAddr::V6(gen::RECEIVER6), IpAddr::V6(LEARNED6)),
        ] {
            let (r, k) = (opts.repeat, opts.rounds);
            let udp = frame(src, dst, UDP, 40_000, gen::UDP_PORT);
            let floor = measure(noop, &udp, r, k, TC_ACT_UNSPEC)?;
            // The first run admits the flow.
            measure(egress, &udp, 1, 1, TC_ACT_UNSPEC)?;
            let established = measure(egress, &udp, r, k, TC_ACT_UNSPEC)?;
            let new = measure(egress, &frame(src, dst, ECHO_REPLY, 7, 0), r, k, TC_ACT_UNSPEC)?;
            let denied = measure(egress, &frame(src, dst, TCP, 40_001, gen::DENIED_PORT), r, k, TC_ACT_SHOT)?;
            let learned_udp = frame(src, learned, UDP, 40_000, gen::UDP_PORT);
            measure(egress, &learned_udp, 1, 1, TC_ACT_UNSPEC)?;
            let learned_established = measure(egress, &learned_udp, r, k, TC_ACT_UNSPEC)?;
            let learned_new = measure(egress, &frame(src, learned, ECHO_REPLY, 7, 0), r, k, TC_ACT_UNSPEC)?;

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
                "learned_established": learned_established, "learned_new": learned_new, "program": size,
            });
            eprintln!("testrun: {row}");
            rows.push(row);
        }
    }
    Ok(json!({ "repeat": opts.repeat, "rounds": opts.rounds, "distinct": opts.distinct, "rows": rows }))
}
