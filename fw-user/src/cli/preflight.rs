//! `fw preflight [PHASE]`: what a phase would break on this host, before
//! `fw switch` applies it (and `fw switch --confirm` runs it first).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::Args;

use super::{source::PolicyFile, target::resolve_name};
use crate::{
    policy::preflight::{preflight as judge, Finding},
    source::{self, LoadedPhase},
};

/// Read what this host needs at run time (its resolvers from
/// /etc/resolv.conf, the NTP servers of chrony or timesyncd, the DHCP
/// server of its leases, the ports its processes and containers serve) and
/// say which of them PHASE would drop, each with the rule that keeps it.
/// Exits 1 when it found something, 0 when the phase keeps every need.
#[derive(Args, Debug)]
pub struct PreflightArgs {
    /// The phase to check.
    #[arg(default_value = "runtime")]
    pub phase: String,
    /// --policy (default: the policy the running instance enforces) and
    /// --env-file.
    #[command(flatten)]
    pub file: PolicyFile,
    /// The running instance whose policy to check, when no --policy
    /// (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Read the host's files (/etc, /run, /var) under DIR instead of /;
    /// /proc stays this process's own (tests).
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
}

pub fn preflight(args: PreflightArgs) -> Result<ExitCode> {
    let loaded = load(args.name, &args.file, &args.phase)?;
    let findings = findings(&loaded, &args.root);
    if args.json {
        let report = serde_json::json!({ "phase": args.phase, "policy": loaded.source, "findings": findings });
        println!("{report}");
    } else if findings.is_empty() {
        println!(
            "fw: preflight of {} phase {}: this host keeps every need it has (DNS, NTP, DHCP, served ports)",
            loaded.source, args.phase
        );
    } else {
        print!("{}", render(&loaded.source, &args.phase, &findings));
    }
    Ok(if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The phase to check: of `--policy`, or of the policy the instance
/// enforces (with its env file unless one is given).
pub fn load(name: Option<String>, file: &PolicyFile, phase: &str) -> Result<LoadedPhase> {
    if let Some(policy) = &file.policy {
        return source::load_phase(policy, file.env_file.as_deref(), phase);
    }
    let name = resolve_name(name)?;
    let (_, _, enforced) = crate::instance::view(&name)?;
    let enforced = enforced.ok_or_else(|| anyhow::anyhow!("instance {name} enforces nothing: give --policy"))?;
    let env = file.env_file.clone().or_else(|| enforced.env_file.as_ref().map(PathBuf::from));
    source::load_phase(&enforced.policy, env.as_deref(), phase)
}

/// What `loaded` would break on the host at `root`.
pub fn findings(loaded: &LoadedPhase, root: &Path) -> Vec<Finding> {
    judge(&loaded.compiled, loaded.names.as_ref(), &source::host::facts(root))
}

pub fn render(policy: &str, phase: &str, findings: &[Finding]) -> String {
    let mut out =
        format!("fw: preflight of {policy} phase {phase}: {} need(s) of this host would break\n", findings.len());
    for f in findings {
        out.push_str(&format!("  {}: {}\n      fix: {}\n", f.kind, f.problem, f.fix));
    }
    out
}
