use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use fw_common::Direction;

use super::{
    target::require_root,
    source::{PhaseSource, Source},
};
use crate::{
    policy::compile::tables::CompiledPhase,
    policy::explain::{self, Explanation},
    source,
};

/// Which rule allows or denies a packet, and why: computed from compiled
/// tables (with --name, the tables live in the kernel), so it shows what is
/// enforced. DEST is `ADDR[:PORT][/PROTO]`, IPv6 as `[2001:db8::1]:443/tcp`.
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
    let queries = explain::parse_query(&query_text, direction)?;
    let phase = compiled_phase(&args)?;
    let explanations: Vec<Explanation> = queries.iter().map(|q| explain::explain(&phase, q)).collect();
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

fn compiled_phase(args: &ExplainArgs) -> Result<CompiledPhase> {
    match args.source.resolve()? {
        Source::File { policy, phase, env_file } => {
            Ok(source::load_phase(&policy, env_file.as_deref(), &phase)?.compiled)
        }
        Source::Instance(name) => {
            require_root("fw explain --name")?;
            crate::instance::read_enforced(&name)
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
