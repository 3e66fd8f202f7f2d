//! `fw check`: what a policy compiles to, printed like `nft list ruleset`
//! (settings, rules with ids, then the tables: address classes and port
//! entries), followed by warnings; or the same as one JSON object.
//!
//! Public API:
//! * [`check`]`(&LoadedPolicy, Option<phase>, &Limits) -> Result<CheckReport, CompileError>`:
//!   compiles the phase (or all), checks capacity, runs the lints;
//! * [`render_text`]`(&CheckReport) -> String`;
//! * [`render_json`]`(&CheckReport) -> serde_json::Value`.

use std::fmt::Write as _;

use fw_common::{Action, Direction};
use ipnet::IpNet;
use serde_json::json;

use crate::{
    policy::compile::{check_capacity, compile_phase, tables::CompiledPhase, CompileError, Limits},
    policy::{
        ir::{Policy, PortRange, Protocols, Rule},
        lint::lint,
        protocols::{is_icmp, protocol_name},
        LoadedPolicy, Warning,
    },
};

/// Everything `fw check` shows.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub policy: Policy,
    /// The phases compiled, in file order.
    pub phases: Vec<CompiledPhase>,
    /// Loading warnings, then lints.
    pub warnings: Vec<Warning>,
}

/// Compiles `phase` (or every phase), checks that each fits the maps, and
/// collects warnings.
pub fn check(
    loaded: &LoadedPolicy,
    phase: Option<&str>,
    limits: &Limits,
    ephemeral: Option<PortRange>,
) -> Result<CheckReport, CompileError> {
    let policy = &loaded.policy;
    let names: Vec<&str> = match phase {
        Some(p) => vec![p],
        None => policy.phases.iter().map(|p| p.name.as_str()).collect(),
    };
    let phases = names.iter().map(|name| compile_phase(policy, name)).collect::<Result<Vec<_>, _>>()?;
    for compiled in &phases {
        check_capacity(compiled, limits)?;
    }
    let mut warnings = loaded.warnings.clone();
    warnings.extend(lint(policy, &phases, ephemeral));
    Ok(CheckReport { policy: policy.clone(), phases, warnings })
}

/// Approximate kernel memory of one LPM trie node holding an entry:
/// `struct lpm_trie_node` (40 bytes) + key data + value, in its kmalloc size
/// class. Intermediate nodes can add up to as many nodes again.
fn trie_node_bytes(key_data: usize, value: usize) -> usize {
    kmalloc_class(40 + key_data + value)
}

/// A hash element without preallocation: the kernel's element header
/// (about 48 bytes), the key and the value each rounded up to 8 bytes.
fn hash_element_bytes(key: usize, value: usize) -> usize {
    kmalloc_class(48 + key.next_multiple_of(8) + value.next_multiple_of(8))
}

/// The slab size class an allocation of `raw` bytes takes.
fn kmalloc_class(raw: usize) -> usize {
    [32, 64, 96, 128, 192, 256, 512].into_iter().find(|&class| class >= raw).unwrap_or(raw)
}

/// What a compiled phase takes of the maps by default.
struct MapUsage {
    /// (map, entries, approximate bytes).
    /// (map, entries, bytes); the IPv6 hash's maps only when the phase
    /// gets it.
    maps: Vec<(&'static str, usize, usize)>,
    /// (direction, /16) pairs the IPv4 table has no room for: their new
    /// flows are looked up in the `FW_ADDR4` trie (docs/datapath.md).
    slash16s_in_trie: usize,
    /// Address classes the port hash has no room for: their new flows are
    /// looked up in the `FW_PORTS` trie.
    port_classes_in_trie: usize,
}

fn map_usage(phase: &CompiledPhase) -> MapUsage {
    use crate::policy::compile::{addr6::Table6, dir4, port_hash::PortHash};
    use fw_common::{
        addr6::{NetKey, HASH_FROM_ENTRIES},
        dir4::Chunk,
        maps::DEFAULT_ADDR_ENTRIES,
        port_hash::{PortHashKey, PortHashValue},
        AddrKey4, AddrKey6, PolicyValue, PortKey,
    };
    use std::mem::size_of;
    let trie_bytes = |entries: usize, key: usize, value: usize| entries * trie_node_bytes(key, value);
    // The IPv4 table packets read (docs/datapath.md): its chunks come out
    // of an array allocated at load, its hosts are hash elements.
    let (chunks, hosts, slash16s_in_trie) = dir4::needs(&phase.addr4, dir4::Budget::DEFAULT);
    let port_hash = PortHash::build(&phase.ports, fw_common::maps::DEFAULT_PORT_HASH_ENTRIES as usize / 2);
    let port_hash_entries = port_hash.entries.len();
    let mut maps = vec![
        (fw_common::maps::ADDR4, phase.addr4.len(), trie_bytes(phase.addr4.len(), size_of::<AddrKey4>(), 4)),
        (fw_common::maps::ADDR4_MID, chunks, chunks * size_of::<Chunk>()),
        (fw_common::maps::ADDR4_HOSTS, hosts, hosts * hash_element_bytes(size_of::<AddrKey4>(), 4)),
        (fw_common::maps::ADDR6, phase.addr6.len(), trie_bytes(phase.addr6.len(), size_of::<AddrKey6>(), 4)),
        (
            fw_common::maps::PORTS,
            phase.ports.len(),
            trie_bytes(phase.ports.len(), size_of::<PortKey>(), size_of::<PolicyValue>()),
        ),
        (
            fw_common::maps::PORTS_HASH,
            port_hash_entries,
            port_hash_entries * hash_element_bytes(size_of::<PortHashKey>(), size_of::<PortHashValue>()),
        ),
    ];
    // The IPv6 hash packets read in a phase with many IPv6 entries.
    if let Some(table) = Table6::for_phase(&phase.addr6, HASH_FROM_ENTRIES, DEFAULT_ADDR_ENTRIES as usize / 2) {
        let (nets, hosts) = (table.nets.len(), table.hosts.len());
        maps.push((fw_common::maps::ADDR6_NETS, nets, nets * hash_element_bytes(size_of::<NetKey>(), 4)));
        maps.push((fw_common::maps::ADDR6_HOSTS, hosts, hosts * hash_element_bytes(size_of::<AddrKey6>(), 4)));
    }
    MapUsage { maps, slash16s_in_trie, port_classes_in_trie: port_hash.to_trie }
}

fn default_word(action: Action) -> &'static str {
    match action {
        Action::Allow => "allow",
        Action::Deny => "drop",
    }
}

fn peers_text(peers: &[IpNet]) -> String {
    match peers {
        [] => "(left out)".into(),
        [a, b] if a.prefix_len() == 0 && b.prefix_len() == 0 => "any".into(),
        nets => nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    }
}

fn range_text(proto: u8, range: &PortRange) -> String {
    if *range == PortRange::ALL {
        return "any".into();
    }
    if is_icmp(proto) {
        let (t1, c1, t2, c2) = (range.first >> 8, range.first & 0xff, range.last >> 8, range.last & 0xff);
        return match (t1 == t2, c1 == 0 && c2 == 255, c1 == c2) {
            (true, true, _) => format!("type {t1}"),
            (true, _, true) => format!("type {t1}/{c1}"),
            _ => format!("{t1}/{c1}-{t2}/{c2}"),
        };
    }
    if range.first == range.last {
        range.first.to_string()
    } else {
        format!("{}-{}", range.first, range.last)
    }
}

fn protocols_text(protocols: &Protocols) -> String {
    match protocols {
        Protocols::Any => "proto any".into(),
        Protocols::Only(list) => list
            .iter()
            .map(|p| {
                let ports: Vec<String> = p.ports.iter().map(|r| range_text(p.proto, r)).collect();
                format!("{} {}", protocol_name(p.proto), ports.join(","))
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

fn rule_line(rule: &Rule) -> String {
    let peer_key = match rule.direction {
        Direction::Egress => "to",
        Direction::Inbound => "from",
    };
    // Names are tracked at run time: what DNS answers for them (rules
    // with `dns:` in their phase; elsewhere names were resolved already).
    let names: Vec<String> = rule.names.iter().map(ToString::to_string).collect();
    let peers = match (rule.peers.is_empty(), names.is_empty()) {
        (true, true) => None,
        (false, true) => Some(peers_text(&rule.peers)),
        (true, false) => Some(format!("{} (tracked at run time)", names.join(", "))),
        (false, false) => Some(format!("{}, {} (tracked at run time)", peers_text(&rule.peers), names.join(", "))),
    };
    let matches = match peers {
        None => "(left out)".to_string(),
        Some(peers) => format!("{peer_key} {peers}  {}", protocols_text(&rule.protocols)),
    };
    format!(
        "#{:<4} {:<24} {matches}  {}   # {} line {}",
        rule.id,
        rule.name,
        rule.action.as_str(),
        if rule.phase.is_empty() { "-" } else { &rule.phase },
        rule.pos.line
    )
}

/// The nft-like listing.
pub fn render_text(report: &CheckReport) -> String {
    let policy = &report.policy;
    let mut out = String::new();
    let _ = writeln!(out, "policy {} {{   # {}", policy.name, policy.file);
    for phase in &report.phases {
        let chain = policy.phase_chain(&phase.phase).unwrap_or_default();
        let s = phase.settings;
        let _ = writeln!(out, "  phase {} {{", phase.phase);
        if chain.len() > 1 {
            let _ = writeln!(out, "    extends {};", chain[1..].join(" -> "));
        }
        let _ = writeln!(
            out,
            "    egress policy {}; inbound policy {}; mode {};",
            default_word(s.egress_default),
            default_word(s.inbound_default),
            if s.audit { "audit" } else { "enforce" }
        );
        let t = s.timeouts;
        let _ = writeln!(
            out,
            "    timeouts tcp_established {}s, tcp_closing {}s, udp {}s, other {}s;",
            t.tcp_established, t.tcp_closing, t.udp, t.other
        );
        if let Some(dns) = policy.dns_of_phase(&phase.phase) {
            let resolvers: Vec<String> = dns
                .resolvers
                .iter()
                .map(|r| match r {
                    crate::policy::ir::Resolver::System => "system".to_string(),
                    crate::policy::ir::Resolver::Addr(a) => a.to_string(),
                })
                .collect();
            let tracked =
                policy.rules_of_phase(&phase.phase).unwrap_or_default().iter().filter(|r| !r.names.is_empty()).count();
            let _ = writeln!(
                out,
                "    dns resolvers {}; queries {}; min_ttl {}s; at most {} addresses per name, {} in all; {tracked} rules tracked at run time;",
                resolvers.join(", "),
                if dns.only_policy_names { "policy" } else { "any" },
                dns.min_ttl,
                dns.max_per_name,
                dns.max_total
            );
        }
        let rules = policy.rules_of_phase(&phase.phase).unwrap_or_default();
        for direction in Direction::ALL {
            let _ = writeln!(out, "    {} {{", direction.as_str());
            for rule in rules.iter().filter(|r| r.direction == direction) {
                let _ = writeln!(out, "      {}", rule_line(rule));
            }
            let _ = writeln!(out, "    }}");
        }

        let _ = writeln!(out, "    address classes {{");
        let addr4 = phase.addr4.iter().map(|e| (e.direction, IpNet::new(e.addr.into(), e.prefix_len), e.class));
        let addr6 = phase.addr6.iter().map(|e| (e.direction, IpNet::new(e.addr.into(), e.prefix_len), e.class));
        for (direction, net, class) in addr4.chain(addr6) {
            let net = net.map_or_else(|_| "?".to_string(), |n| n.to_string());
            let _ = writeln!(out, "      {:<8} {net:<44} -> class {class}", direction.as_str());
        }
        let _ = writeln!(out, "    }}");

        let _ = writeln!(out, "    port entries {{");
        for e in &phase.ports {
            let rule = phase.rules.get(e.value.rule as usize).map_or("?", |r| r.name.as_str());
            let key = match e.proto {
                None => "any".to_string(),
                Some(p) => {
                    let size = 1u32 << (16 - u32::from(e.port_prefix_len));
                    let last = (u32::from(e.port) + size - 1) as u16;
                    let range = range_text(p, &PortRange { first: e.port, last });
                    format!("{} {}/{} ({range})", protocol_name(p), e.port, e.port_prefix_len)
                }
            };
            let _ = writeln!(
                out,
                "      class {:<4} {key:<36} -> #{} {rule} {}",
                e.class,
                e.value.rule,
                e.value.action().as_str()
            );
        }
        let _ = writeln!(out, "    }}");

        let usage = map_usage(phase);
        let parts: Vec<String> = usage.maps.iter().map(|(map, n, _)| format!("{map} {n}")).collect();
        let bytes: usize = usage.maps.iter().map(|(_, _, b)| b).sum();
        let _ =
            writeln!(out, "    # entries: {}; about {:.1} KiB of map memory", parts.join(", "), bytes as f64 / 1024.0);
        let in_trie = usage.slash16s_in_trie;
        if in_trie > 0 {
            let _ = writeln!(
                out,
                "    # {in_trie} IPv4 /16s (per direction) do not fit {} and {}: new flows to them are looked up in \
                 the {} trie, slower at many rules",
                fw_common::maps::ADDR4_MID,
                fw_common::maps::ADDR4_HOSTS,
                fw_common::maps::ADDR4
            );
        }
        if usage.port_classes_in_trie > 0 {
            let _ = writeln!(
                out,
                "    # {} address classes do not fit {}: new flows to them are looked up in the {} trie, slower at \
                 many rules",
                usage.port_classes_in_trie,
                fw_common::maps::PORTS_HASH,
                fw_common::maps::PORTS
            );
        }
        let _ = writeln!(out, "  }}");
    }
    let _ = writeln!(out, "}}");
    for warning in &report.warnings {
        let _ = writeln!(out, "{warning}");
    }
    out
}

/// The same information as one JSON object.
pub fn render_json(report: &CheckReport) -> serde_json::Value {
    let policy = &report.policy;
    let rule_json = |r: &Rule| {
        json!({
            "id": r.id,
            "name": r.name,
            "phase": r.phase,
            "direction": r.direction.as_str(),
            "action": r.action.as_str(),
            "peers": r.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            // DNS names tracked at run time (a phase with `dns:`).
            "names": r.names.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "match": protocols_text(&r.protocols),
            "line": r.pos.line,
        })
    };
    let phases: Vec<serde_json::Value> = report
        .phases
        .iter()
        .map(|phase| {
            let usage = map_usage(phase);
            json!({
                "name": phase.phase,
                "extends": policy.phase(&phase.phase).and_then(|p| p.extends.clone()),
                "egress_default": phase.settings.egress_default.as_str(),
                "inbound_default": phase.settings.inbound_default.as_str(),
                "mode": if phase.settings.audit { "audit" } else { "enforce" },
                "timeouts": {
                    "tcp_established": phase.settings.timeouts.tcp_established,
                    "tcp_closing": phase.settings.timeouts.tcp_closing,
                    "udp": phase.settings.timeouts.udp,
                    "other": phase.settings.timeouts.other,
                },
                "rules": policy.rules_of_phase(&phase.phase).unwrap_or_default().into_iter().map(|r| r.id).collect::<Vec<_>>(),
                "addr4": phase.addr4.iter().map(|e| json!({
                    "direction": e.direction.as_str(), "cidr": format!("{}/{}", e.addr, e.prefix_len), "class": e.class,
                })).collect::<Vec<_>>(),
                "addr6": phase.addr6.iter().map(|e| json!({
                    "direction": e.direction.as_str(), "cidr": format!("{}/{}", e.addr, e.prefix_len), "class": e.class,
                })).collect::<Vec<_>>(),
                "ports": phase.ports.iter().map(|e| json!({
                    "class": e.class,
                    "proto": e.proto.map(protocol_name),
                    "port": e.port,
                    "prefix_len": e.port_prefix_len,
                    "rule": e.value.rule,
                    "action": e.value.action().as_str(),
                })).collect::<Vec<_>>(),
                "entries": usage.maps.iter().map(|(map, n, _)| (map.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "approx_bytes": usage.maps.iter().map(|(_, _, b)| b).sum::<usize>(),
                "ipv4_slash16s_in_trie": usage.slash16s_in_trie,
                "port_classes_in_trie": usage.port_classes_in_trie,
            })
        })
        .collect();
    json!({
        "policy": policy.name,
        "file": policy.file,
        "rules": policy.rules.iter().map(rule_json).collect::<Vec<_>>(),
        "phases": phases,
        "warnings": report.warnings,
    })
}
