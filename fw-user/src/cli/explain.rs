use std::{net::IpAddr, process::ExitCode};

use anyhow::Result;
use clap::Args;
use fw_common::Direction;

use super::{
    source::{PhaseSource, Source},
    target::require_root,
};
use crate::{
    policy::compile::tables::CompiledPhase,
    policy::explain::{self, Explanation},
    policy::names::NameRules,
    source,
};

/// Which rule allows or denies a packet, and why: computed from compiled
/// tables (with --name, the tables live in the kernel), so it shows what is
/// enforced. DEST is `ADDR[:PORT][/PROTO]`, IPv6 as `[2001:db8::1]:443/tcp`.
/// A host name that a name rule of the phase matches is judged by that rule
/// without DNS (what DNS answers for it is allowed on the rule's ports);
/// with --name, an address the DNS proxy learned names its rule and name.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// `203.0.113.5:443/tcp`, `[2001:db8::1]:443/tcp`, `host.example.com:443`,
    /// `203.0.113.5/icmp`. With --inbound, the peer that connects and the
    /// local port.
    pub dest: String,
    #[command(flatten)]
    pub source: PhaseSource,
    /// The peer of an inbound packet (same as giving it as DEST with --inbound).
    #[arg(long)]
    pub from: Option<String>,
    /// Explain a packet arriving at this host instead of one leaving it.
    #[arg(long)]
    pub inbound: bool,
    /// One JSON object (`verdict`, `rule`, ...) per address.
    #[arg(long)]
    pub json: bool,
}

pub fn explain(args: ExplainArgs) -> Result<ExitCode> {
    let direction = if args.inbound || args.from.is_some() { Direction::Inbound } else { Direction::Egress };
    let query_text = match &args.from {
        // `--from PEER DEST:PORT`: the peer's address with the local port.
        Some(from) => format!("{}{}", from.trim_end_matches('/'), port_part(&args.dest)),
        None => args.dest.clone(),
    };
    let (dest, proto, port) = explain::parse_target(&query_text)?;
    let target = target(&args)?;
    let mut explanations: Vec<Explanation> = Vec::new();
    // A name a name rule matches is judged by that rule, offline: what DNS
    // answers for it is allowed on the rule's ports (no DNS needed).
    if direction == Direction::Egress && dest.parse::<IpAddr>().is_err() {
        if let Some(rules) = &target.loaded_names {
            explanations.extend(explain::explain_name(&target.phase, rules, &dest, proto, port));
        }
    }
    if explanations.is_empty() {
        let learned = match &target.instance {
            Some(name) => super::names::report(name).ok(),
            None => None,
        };
        for query in explain::parse_query(&query_text, direction)? {
            // An address the DNS proxy learned, which no static rule decides.
            let by_name =
                learned.as_ref().and_then(|r| r.entries.iter().find(|e| e.address == query.address)).and_then(|e| {
                    let rules: Vec<u32> = e.rules.iter().map(|(id, _)| *id).collect();
                    explain::explain_learned(&target.phase, &query, &rules, e.names.clone())
                });
            explanations.push(by_name.unwrap_or_else(|| explain::explain(&target.phase, &query)));
        }
    }
    for e in &explanations {
        if args.json {
            println!("{}", e.to_json());
        } else {
            print!("{}", e.render_text());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `:443/tcp` of `203.0.113.5:443/tcp` or `[2001:db8::1]:443/tcp`, `/icmp`
/// of `198.18.0.1/icmp`: the part after the address.
fn port_part(dest: &str) -> &str {
    let rest = match dest.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or("", |(_, rest)| rest),
        None => dest,
    };
    match rest.find([':', '/']) {
        Some(i) => &rest[i..],
        None => "",
    }
}

/// What a query is judged against.
struct Target {
    phase: CompiledPhase,
    /// The phase's name rules, when it has `dns:`.
    loaded_names: Option<NameRules>,
    /// `--name`: the running instance (its learned addresses count).
    instance: Option<String>,
}

fn target(args: &ExplainArgs) -> Result<Target> {
    match args.source.resolve()? {
        Source::File { policy, phase, env_file } => {
            let loaded = source::load_phase(&policy, env_file.as_deref(), &phase)?;
            Ok(Target { phase: loaded.compiled, loaded_names: loaded.names, instance: None })
        }
        Source::Instance(name) => {
            require_root("fw explain --name")?;
            let phase = crate::instance::read_enforced(&name)?;
            // The name rules of the policy the instance enforces, if that
            // file still compiles to the same rules.
            let loaded_names = crate::instance::view(&name).ok().and_then(|(_, _, e)| e).and_then(|e| {
                let loaded =
                    source::load_phase(&e.policy, e.env_file.as_deref().map(std::path::Path::new), &e.phase).ok()?;
                (loaded.compiled.rules == e.rules).then_some(loaded.names).flatten()
            });
            Ok(Target { phase, loaded_names, instance: Some(name) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::port_part;

    #[test]
    fn the_local_port_part_is_taken_from_any_destination_form() {
        assert_eq!(port_part("198.18.0.1:443/tcp"), ":443/tcp");
        assert_eq!(port_part("[2001:db8::1]:443/tcp"), ":443/tcp");
        assert_eq!(port_part(":3478/udp"), ":3478/udp");
        assert_eq!(port_part("198.18.0.1/icmp"), "/icmp");
        assert_eq!(port_part("198.18.0.1"), "");
    }
}
