//! Compiles a generated 100,000-rule policy (written as YAML, so the front
//! end is measured too) and prints how long each step took. Not a timed
//! assertion: timings depend on the machine and on debug/release builds.
//! `cargo test -p fw-user --release --test compiler_scale -- --nocapture`
//! shows release numbers.

use std::{fmt::Write as _, time::Instant};

use fw_user::{
    policy::compile::{check_capacity, compile_phase, Limits},
    policy::{parse_str_with_resolver, Vars},
};

const RULES: usize = 100_000;

#[test]
fn compile_a_100k_rule_policy() {
    let mut yaml = String::from("name: scale\nphases:\n  runtime:\n    egress:\n");
    yaml.push_str("      - { name: no-smtp, to: [any], proto: tcp, ports: [25], action: deny }\n");
    yaml.push_str("      - { name: dns, to: [198.18.0.0/15, \"2001:db8::/32\"], proto: [udp, tcp], ports: [53] }\n");
    for i in 0..RULES - 2 {
        // /32s in 198.18.0.0/16 (some named by two rules), every 400th rule a
        // /24 in 198.19.0.0/16; single ports and ranges that straddle prefix
        // boundaries; every 7th rule a deny.
        let cidr = if i % 400 == 0 {
            format!("198.19.{}.0/24", (i / 400) % 256)
        } else {
            format!("198.18.{}.{}", (i >> 8) & 0xff, i & 0xff)
        };
        let lo = 1000 + (i % 50_000);
        let ports = if i % 2 == 0 { lo.to_string() } else { format!("\"{lo}-{}\"", lo + 37) };
        let action = if i % 7 == 0 { ", action: deny" } else { "" };
        let _ = writeln!(yaml, "      - {{ name: r{i}, to: [\"{cidr}\"], proto: tcp, ports: [{ports}]{action} }}");
    }

    let vars = Vars::from_pairs::<&str, &str>([]);
    let start = Instant::now();
    let loaded = parse_str_with_resolver(&yaml, "scale.yaml", &vars, &|h| Err(format!("no DNS ({h})"))).unwrap();
    let parsed = start.elapsed();
    assert_eq!(loaded.policy.rules.len(), RULES);

    let start = Instant::now();
    let compiled = compile_phase(&loaded.policy, "runtime").unwrap();
    let compiled_in = start.elapsed();

    println!(
        "{RULES} rules: parse+validate {parsed:.2?}, compile {compiled_in:.2?}; entries: addr4 {}, addr6 {}, ports {}",
        compiled.addr4.len(),
        compiled.addr6.len(),
        compiled.ports.len()
    );
    match check_capacity(&compiled, &Limits::default()) {
        Ok(()) => println!("fits the default maps"),
        Err(e) => println!("capacity: {e}"),
    }
    // Spot checks that the result is the policy and not just fast.
    let first = "198.18.0.1".parse().unwrap();
    assert_eq!(compiled.lookup(fw_common::Direction::Egress, first, 6, 25).rule(), Some(0));
    assert_eq!(compiled.lookup(fw_common::Direction::Egress, first, 17, 53).rule(), Some(1));
}
