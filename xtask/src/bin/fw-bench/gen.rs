//! Generated policies: realistic and adversarial. Dense nested CIDRs in
//! 198.18.0.0/15 (prefixes /16 to /32 inside each other, so the LPM tries are
//! deep) and their IPv6 twins in 2001:db8::/32 (/33 to /49 networks, /128
//! hosts), single ports, port lists and ranges that straddle prefix
//! boundaries (many port prefixes per rule), about one rule in ten a deny.
//!
//! Wide prefixes carry what wide rules carry in practice (any protocol, or
//! one denied service); port ranges sit on narrow prefixes. That keeps the
//! compiled port table of a 100,000-rule phase within the default map size
//! (every class repeats the port entries of the rules around it).
//!
//! Last come the rules the benchmarks' packets hit: `bench-flows` (the
//! receiver, udp/tcp ports of the traffic runs), `bench-icmp` (echo replies:
//! allowed, but they open no flow) and `bench-deny` (tcp 25, denied). Being
//! last in file order, they are the worst case for a linear ruleset.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

pub const RECEIVER4: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 2);
pub const RECEIVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc8, 0, 0, 0, 0, 2);
/// UDP port of the small-packet runs, TCP port of iperf3.
pub const UDP_PORT: u16 = 9000;
pub const TCP_PORT: u16 = 5201;
/// A port every phase denies to the receiver.
pub const DENIED_PORT: u16 = 25;

/// The lab's SplitMix64: a fixed sequence, so every run benchmarks the same
/// policy.
pub use fw_lab::rng::Rng;

/// v4 prefix lengths and their weights (per mille).
const LENGTHS: [(u8, u64); 9] =
    [(16, 2), (18, 6), (20, 12), (22, 30), (24, 80), (26, 110), (28, 160), (30, 200), (32, 400)];

fn pick_len(rng: &mut Rng) -> u8 {
    let mut x = rng.below(1000);
    for (len, w) in LENGTHS {
        if x < w {
            return len;
        }
        x -= w;
    }
    32
}

/// One rule's `to:` (v4 CIDR and its v6 twin) for a v4 prefix of about
/// `len`: each CIDR is named by one rule only (a longer one when `len` is
/// taken), so the tree is deep but a wide prefix does not pile up rules.
/// `None` when no free prefix was found.
fn peers(rng: &mut Rng, used: &mut HashSet<(u32, u8)>, mut len: u8) -> Option<(String, u8)> {
    let mut offset = rng.below(1 << 17) as u32;
    let mut tries = 0;
    loop {
        let host_bits = 32 - u32::from(len);
        if used.insert((offset >> host_bits << host_bits, len)) {
            offset = offset >> host_bits << host_bits;
            break;
        }
        if len < 28 {
            len = (len + 2).min(32);
        } else {
            tries += 1;
            if tries > 8 {
                return None;
            }
            offset = rng.below(1 << 17) as u32;
        }
    }
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + offset);
    // The 17 bits of the offset go to bits 32..49 of the v6 address.
    let net6 = (0x2001_0db8u128 << 96) | (u128::from(offset) << (128 - 49));
    let v6 = if len == 32 {
        format!("{}/128", Ipv6Addr::from(net6 | u128::from(rng.next_u64() | 1)))
    } else {
        format!("{}/{}", Ipv6Addr::from(net6), 32 + u32::from(len) - 15)
    };
    Some((format!("[\"{v4}/{len}\", \"{v6}\"]"), len))
}

/// A host (or one /24 in eight) in 10.0.0.0/8, and one in 3fff::/20 (RFC 9637).
fn sparse(rng: &mut Rng) -> (String, u8) {
    let a = 0x0a00_0000 | (rng.next_u64() as u32 & 0x00ff_ffff);
    let h = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
    let v6 = Ipv6Addr::from((0x3fffu128 << 112) | (h & ((1u128 << 108) - 1)));
    if rng.below(8) == 0 {
        let net6 = Ipv6Addr::from(u128::from(v6) >> 64 << 64);
        (format!("[\"{}/24\", \"{net6}/64\"]", Ipv4Addr::from(a & 0xffff_ff00)), 24)
    } else {
        (format!("[\"{}\", \"{v6}\"]", Ipv4Addr::from(a)), 32)
    }
}

/// A port range that does not start or end on a prefix boundary.
fn range(rng: &mut Rng, min: u64, span: u64) -> String {
    let lo = 1024 + rng.below(60_000 - span);
    let hi = lo + min + rng.below(span);
    format!("\"{lo}-{hi}\"")
}

/// A rule body for prefix length `len` (without name and peers).
fn body(rng: &mut Rng, len: u8) -> String {
    let roll = rng.below(100);
    if len <= 22 {
        return match roll {
            0..=39 => "proto: any".into(),
            40..=69 => format!("proto: tcp, ports: [{}], action: deny", [23, 25, 135, 139, 445][rng.below(5) as usize]),
            _ => format!("proto: [tcp, udp], ports: [{}]", [53, 123, 443][rng.below(3) as usize]),
        };
    }
    if len < 28 {
        return match roll {
            0..=9 => format!("proto: [tcp, udp], ports: [{}], action: deny", 100 + rng.below(900)),
            10..=69 => format!("proto: tcp, ports: [{}]", 1024 + rng.below(60_000)),
            _ => "proto: any".into(),
        };
    }
    match roll {
        0..=7 => format!("proto: [tcp, udp], ports: [{}], action: deny", 100 + rng.below(900)),
        8..=39 => format!("proto: tcp, ports: [{}]", 1024 + rng.below(60_000)),
        40..=54 => format!("proto: udp, ports: [{}, {}]", 1024 + rng.below(30_000), 30_000 + rng.below(30_000)),
        55..=79 => format!("proto: tcp, ports: [{}]", range(rng, 10, 500)),
        80..=89 => format!("proto: udp, ports: [{}]", range(rng, 1000, 20_000)),
        90..=93 => "proto: icmp, ports: [8]".into(),
        _ => "proto: any".into(),
    }
}

/// A policy with `rules` egress rules in phase `a` and one more in phase
/// `b` (which extends `a`): a switch a -> b rewrites every entry.
pub fn policy(rules: usize) -> String {
    let mut rng = Rng::new(0xbe7c_4000 + rules as u64);
    let mut y = format!("name: bench-{rules}\nphases:\n  a:\n");
    y += "    inbound:\n";
    y += "      - { name: https, proto: tcp, ports: [443] }\n";
    y += "      - { name: media, proto: [tcp, udp], ports: [\"40000-65535\"] }\n";
    y += "    egress:\n";
    let generated = rules.saturating_sub(3);
    let mut used = HashSet::new();
    for i in 0..generated {
        // Half dense and nested, half sparse hosts and /24s elsewhere.
        let dense = if i % 2 == 0 {
            let len = pick_len(&mut rng);
            peers(&mut rng, &mut used, len)
        } else {
            None
        };
        let (to, len) = dense.unwrap_or_else(|| sparse(&mut rng));
        let _ = writeln!(y, "      - {{ name: r{i}, to: {to}, {} }}", body(&mut rng, len));
    }
    let to = format!("[\"{RECEIVER4}\", \"{RECEIVER6}\"]");
    let _ = writeln!(y, "      - {{ name: bench-deny, to: {to}, proto: tcp, ports: [{DENIED_PORT}], action: deny }}");
    let _ = writeln!(y, "      - {{ name: bench-icmp, to: {to}, proto: [icmp, icmpv6] }}");
    let _ =
        writeln!(y, "      - {{ name: bench-flows, to: {to}, proto: [udp, tcp], ports: [{UDP_PORT}, {TCP_PORT}] }}");
    y += "  b:\n    extends: a\n    egress:\n";
    y += "      - { name: webhook, to: [\"198.19.0.10\"], proto: tcp, ports: [443] }\n";
    y
}

/// The "nested" shape of issue 16, the shape of real merged allowlists: half
/// the rules on /16../32 prefixes (lengths drawn evenly, so the few wide
/// prefixes of 198.18.0.0/15 are named by many rules each) with their IPv6
/// twins in 2001:db8::/32, half sparse hosts; one rule in ten a deny, one
/// in ten `proto: any`, and distinct ports per rule, wide prefixes
/// included. Unlike [`policy`], nothing keeps the wide prefixes simple:
/// every narrow CIDR sits under thousands of rules, which is what shows
/// whether the compiler's work follows its output or rules times depth.
pub fn nested_policy(rules: usize) -> String {
    let mut rng = Rng::new(0x4e57_ed00 + rules as u64);
    let mut y = format!("name: nested-{rules}\nphases:\n  a:\n    egress:\n");
    for i in 0..rules {
        let to = if i % 2 == 0 {
            let offset = rng.below(1 << 17) as u32;
            let len = 16 + rng.below(17) as u8;
            let host_bits = 32 - u32::from(len);
            let net = offset >> host_bits << host_bits;
            let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + net);
            let v6 = Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(net) << (128 - 49)));
            format!("[\"{v4}/{len}\", \"{v6}/{}\"]", u32::from(len) + 17)
        } else {
            sparse(&mut rng).0
        };
        // Distinct ports: a stride coprime with the 60,000 ports used.
        let port = 1024 + (i as u64 * 7_919) % 60_000;
        let proto = match rng.below(10) {
            0 => "proto: any".to_string(),
            1..=4 => format!("proto: tcp, ports: [{port}]"),
            5..=6 => format!("proto: udp, ports: [{port}, \"{}-{}\"]", port + 1, port + 1 + rng.below(40)),
            _ => format!("proto: [tcp, udp], ports: [{port}]"),
        };
        let action = if rng.below(10) == 0 { ", action: deny" } else { "" };
        let _ = writeln!(y, "      - {{ name: n{i}, to: {to}, {proto}{action} }}");
    }
    // Phase b as in [`policy`], so that `control` can time a switch.
    y += "  b:\n    extends: a\n    egress:\n";
    y += "      - { name: webhook, to: [\"198.19.0.10\"], proto: tcp, ports: [443] }\n";
    y
}

/// The generated policy of a shape: `dense` ([`policy`], the one the traffic
/// runs use) or `nested` ([`nested_policy`], the compiler's worst case).
pub fn by_shape(shape: &str, rules: usize) -> anyhow::Result<String> {
    match shape {
        "dense" => Ok(policy(rules)),
        "nested" => Ok(nested_policy(rules)),
        other => anyhow::bail!("--shape {other}: expected dense or nested"),
    }
}
