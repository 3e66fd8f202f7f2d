use std::{path::PathBuf, process::ExitCode};

use anyhow::{anyhow, Result};
use clap::{Args, ValueEnum};

use super::source::{PhaseSource, Source};
use crate::{
    instance::state::InstanceState,
    policy::export::{self, Family, Options},
    source,
};

/// Print a phase of a policy as an nftables or iptables ruleset with the
/// same meaning (deny first, the phase defaults, replies of admitted
/// connections pass) and the same scope (one interface, forwarded traffic
/// included, loopback never), to compare or to migrate. `nft` keeps fw's
/// structure (address interval maps, one chain per address class) in its
/// own table `inet fw` and loads with `nft -f`; `iptables`/`ip6tables` is a
/// linear list in chains of its own for `iptables-restore --noflush`, which
/// replaces nothing else. Never touches the kernel.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Output language.
    #[arg(value_enum)]
    pub format: Format,
    /// What to export; a running instance exports its policy file and
    /// phase as recorded.
    #[command(flatten)]
    pub source: PhaseSource,
    /// Apply only to this interface (default: the instance's interface with
    /// --name; with --policy, every interface but loopback).
    #[arg(long)]
    pub iface: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `nft -f` input: table `inet fw`.
    Nft,
    /// `iptables-restore --noflush` input: the IPv4 rules.
    Iptables,
    /// `ip6tables-restore --noflush` input: the IPv6 rules.
    Ip6tables,
}

pub fn export(args: ExportArgs) -> Result<ExitCode> {
    let (policy_arg, env_file, phase, iface) = match args.source.resolve()? {
        Source::File { policy, phase, env_file } => (policy, env_file, phase, args.iface.clone()),
        Source::Instance(name) => {
            let state = InstanceState::load(&name)?.ok_or_else(|| anyhow!("no fw instance named {name}"))?;
            let e = state.enforced;
            (e.policy, e.env_file.map(PathBuf::from), e.phase, args.iface.clone().or(Some(state.iface)))
        }
    };
    let (_, loaded, _) = source::load_policy(&policy_arg, env_file.as_deref())?;
    let options = Options { iface };
    let text = match args.format {
        Format::Nft => export::nft(&loaded.policy, &phase, &options)?,
        Format::Iptables => export::iptables(&loaded.policy, &phase, Family::Ipv4, &options)?,
        Format::Ip6tables => export::iptables(&loaded.policy, &phase, Family::Ipv6, &options)?,
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
