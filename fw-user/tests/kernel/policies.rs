//! Random policies, written as YAML and taken through the real front end
//! (`policy::parse_str`) and compiler (`compile_phase`): nested and
//! overlapping CIDRs of both families in small windows, port lists and
//! ranges, ICMP types, deny rules, inbound rules, phases extending each
//! other, both defaults and audit mode.

use fw_user::{
    policy::compile::{compile_phase, tables::CompiledPhase},
    policy::{self, Vars},
};

use fw_lab::rng::Rng;

/// 198.18.0.0 + 0..1024: the IPv4 window rules and packets share.
pub const V4_BASE: u32 = 0xc612_0000;
/// 2001:db8:: + 0..1024.
pub const V6_BASE: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0000;
const WINDOW: u64 = 1024;

/// Values packets should hit: the edges of every CIDR and port range.
#[derive(Clone, Debug, Default)]
pub struct Hints {
    pub v4: Vec<[u8; 4]>,
    pub v6: Vec<[u8; 16]>,
    pub ports: Vec<u16>,
    pub icmp: Vec<u16>,
}

pub struct RandomPolicy {
    pub yaml: String,
    pub phase: String,
    pub compiled: CompiledPhase,
    pub hints: Hints,
}

/// A canonical CIDR in the family's window; its edges and their
/// neighbours become hints.
fn cidr(rng: &mut Rng, hints: &mut Hints, v6: bool) -> String {
    let (bits, base, lens): (u32, u128, &[u32]) = if v6 {
        (128, V6_BASE, &[0, 32, 64, 118, 120, 120, 124, 126, 127, 128, 128])
    } else {
        (32, u128::from(V4_BASE), &[0, 16, 22, 24, 24, 26, 28, 29, 30, 31, 32, 32])
    };
    let len = *rng.pick(lens);
    let space = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    let host = if bits - len == 128 { u128::MAX } else { (1u128 << (bits - len)) - 1 };
    let first = (base + u128::from(rng.below(WINDOW))) & !host & space;
    let last = first | host;
    for a in [first.wrapping_sub(1), first, first.wrapping_add(1), last.wrapping_sub(1), last, last.wrapping_add(1)] {
        let a = a & space;
        if v6 {
            hints.v6.push(a.to_be_bytes());
        } else {
            hints.v4.push((a as u32).to_be_bytes());
        }
    }
    if v6 {
        format!("{}/{len}", std::net::Ipv6Addr::from(first))
    } else {
        format!("{}/{len}", std::net::Ipv4Addr::from(first as u32))
    }
}

fn port_value(rng: &mut Rng) -> u16 {
    match rng.below(3) {
        0 => *rng
            .pick(&[1u16, 2, 53, 80, 123, 255, 256, 443, 1023, 1024, 3478, 40000, 49152, 57000, 57001, 65534, 65535]),
        1 => rng.range(1, 65535) as u16,
        _ => rng.range(1, 600) as u16,
    }
}

fn ports_list(rng: &mut Rng, hints: &mut Hints) -> String {
    if rng.percent(8) {
        hints.ports.extend([0, 1, 65535]);
        return "[any]".into();
    }
    let n = rng.usize(1, 3);
    let mut items = Vec::new();
    for _ in 0..n {
        let a = port_value(rng);
        if rng.percent(50) {
            let b = port_value(rng);
            let (lo, hi) = (a.min(b), a.max(b));
            hints.ports.extend([lo - 1, lo, lo.saturating_add(1), hi - 1, hi, hi.saturating_add(1)]);
            items.push(format!("\"{lo}-{hi}\""));
        } else {
            hints.ports.extend([a - 1, a, a.saturating_add(1)]);
            items.push(a.to_string());
        }
    }
    format!("[{}]", items.join(", "))
}

fn icmp_list(rng: &mut Rng, v6: bool, hints: &mut Hints) -> Option<String> {
    if rng.percent(30) {
        return None;
    }
    let types: &[u8] = if v6 { &[1, 2, 3, 4, 128, 129, 135, 136, 140] } else { &[0, 3, 5, 8, 11, 12, 13] };
    let n = rng.usize(1, 2);
    let mut items = Vec::new();
    for _ in 0..n {
        let t = *rng.pick(types);
        if rng.percent(40) {
            let c = rng.below(5) as u8;
            hints.icmp.push(u16::from(t) << 8 | u16::from(c));
            items.push(format!("\"{t}/{c}\""));
        } else {
            hints.icmp.extend([u16::from(t) << 8, u16::from(t) << 8 | 0xff]);
            items.push(t.to_string());
        }
    }
    Some(format!("[{}]", items.join(", ")))
}

fn rule(rng: &mut Rng, id: usize, inbound: bool, hints: &mut Hints) -> String {
    let mut fields = vec![format!("name: r{id}")];
    let peers_key = if inbound { "from" } else { "to" };
    match rng.weighted(&[2, 1, 7]) {
        0 => {}
        1 => fields.push(format!("{peers_key}: [any]")),
        _ => {
            let n = rng.usize(1, 3);
            let nets: Vec<String> = (0..n)
                .map(|_| {
                    let v6 = rng.percent(45);
                    let net = cidr(rng, hints, v6);
                    format!("\"{net}\"")
                })
                .collect();
            fields.push(format!("{peers_key}: [{}]", nets.join(", ")));
        }
    }
    match rng.weighted(&[12, 6, 40, 15, 12, 8]) {
        0 => {}
        1 => fields.push("proto: any".into()),
        2 => {
            let p = rng.pick(&["tcp", "udp", "sctp"]);
            fields.push(format!("proto: {p}"));
            fields.push(format!("ports: {}", ports_list(rng, hints)));
        }
        3 => {
            let p = rng.pick(&["[tcp, udp]", "[udp, sctp]", "[tcp, sctp]", "[tcp, udp, sctp]"]);
            fields.push(format!("proto: {p}"));
            fields.push(format!("ports: {}", ports_list(rng, hints)));
        }
        4 => {
            fields.push("proto: icmp".into());
            if let Some(l) = icmp_list(rng, false, hints) {
                fields.push(format!("ports: {l}"));
            }
        }
        _ => {
            fields.push("proto: icmpv6".into());
            if let Some(l) = icmp_list(rng, true, hints) {
                fields.push(format!("ports: {l}"));
            }
        }
    }
    if rng.percent(30) {
        fields.push(format!("action: {}", rng.pick(&["deny", "drop"])));
    } else if rng.percent(20) {
        fields.push("action: allow".into());
    }
    format!("      - {{ {} }}\n", fields.join(", "))
}

/// Settings to impose on every phase instead of random ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Force {
    pub audit: bool,
    pub inbound_drop: bool,
}

/// A random policy with 1-3 phases; one of them is compiled.
/// Phase `phase` of the policy `yaml` (no variables), compiled; `file`
/// names it in errors.
pub fn compile_yaml(yaml: &str, file: &str, phase: &str) -> fw_user::policy::compile::tables::CompiledPhase {
    let loaded = policy::parse_str(yaml, file, &Vars::from_pairs(Vec::<(String, String)>::new()))
        .unwrap_or_else(|e| panic!("{e}"));
    compile_phase(&loaded.policy, phase).unwrap_or_else(|e| panic!("compiling {phase}: {e}"))
}

pub fn random_policy(rng: &mut Rng, serial: usize, force: Force) -> RandomPolicy {
    let mut hints = Hints::default();
    let phases = rng.usize(1, 3);
    let mut yaml = format!("name: diff-{serial}\nphases:\n");
    let mut id = 0;
    for p in 0..phases {
        yaml += &format!("  p{p}:\n");
        let phase_start = yaml.len();
        if p > 0 && rng.percent(60) {
            yaml += &format!("    extends: p{}\n", rng.below(p as u64));
        }
        match rng.below(3) {
            0 => yaml += "    egress_default: allow\n",
            1 => yaml += "    egress_default: drop\n",
            _ => {}
        }
        match rng.below(3) {
            _ if force.inbound_drop => yaml += "    inbound_default: drop\n",
            0 => yaml += "    inbound_default: allow\n",
            1 => yaml += "    inbound_default: drop\n",
            _ => {}
        }
        match rng.weighted(&[2, 1, 6]) {
            _ if force.audit => yaml += "    mode: audit\n",
            0 => yaml += "    mode: enforce\n",
            1 => yaml += "    mode: audit\n",
            _ => {}
        }
        if rng.percent(30) {
            // DNS to these resolvers passes as `pass_resolver` (issue 14).
            let v4 = std::net::Ipv4Addr::from(V4_BASE + rng.below(WINDOW) as u32);
            let v6 = std::net::Ipv6Addr::from(V6_BASE + u128::from(rng.below(WINDOW)));
            hints.v4.push(v4.octets());
            hints.v6.push(v6.octets());
            yaml += &format!("    dns: {{ resolvers: [{v4}, \"{v6}\"] }}\n");
        }
        if rng.percent(25) {
            // Timeouts of their own (10 s at least: no flow the run opens
            // may come near one while the model is not looking).
            let mut set = Vec::new();
            for key in ["tcp_established", "tcp_closing", "udp", "other"] {
                if rng.percent(50) {
                    set.push(format!("{key}: {}", rng.pick(&["10s", "30", "2m", "1h", "5d", "365d"])));
                }
            }
            if !set.is_empty() {
                yaml += &format!("    timeouts: {{ {} }}\n", set.join(", "));
            }
        }
        for (key, inbound, most) in [("inbound", true, 5), ("egress", false, 7)] {
            let count = rng.usize(0, most);
            if count > 0 {
                yaml += &format!("    {key}:\n");
                for _ in 0..count {
                    yaml += &rule(rng, id, inbound, &mut hints);
                    id += 1;
                }
            }
        }
        if yaml.len() == phase_start {
            // An empty phase must still be a mapping.
            yaml += "    mode: enforce\n";
        }
    }
    let phase = format!("p{}", rng.below(phases as u64));
    let loaded = policy::parse_str(&yaml, "random.yaml", &Vars::from_pairs(Vec::<(String, String)>::new()))
        .unwrap_or_else(|e| panic!("the generated policy does not parse: {e}\n{yaml}"));
    let compiled = compile_phase(&loaded.policy, &phase).unwrap_or_else(|e| panic!("compiling {phase}: {e}\n{yaml}"));
    hints.ports.extend([0, 1, 53, 443, 65535]);
    RandomPolicy { yaml, phase, compiled, hints }
}
