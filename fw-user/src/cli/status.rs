use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::target::{require_root, resolve_name};
use crate::{
    daemon::{control, dns},
    instance::state::InstanceState,
    instance::txn,
    kernel::apply,
    kernel::counters::Snapshot,
    kernel::linkinfo,
    kernel::loader::{AttachMode, CounterMaps, Hook, PolicyMaps},
};

/// Is the instance attached and enforcing? Exit 0 only when it is (scripts
/// and tests use this as the readiness check), 1 when it is not.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Instance name (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, Debug)]
struct LinkStatus {
    hook: &'static str,
    link_id: u32,
    program_id: u32,
}

#[derive(Serialize, Debug)]
struct Status {
    name: String,
    enforcing: bool,
    /// Why not, when not enforcing.
    problem: Option<String>,
    iface: Option<String>,
    ifindex: Option<u32>,
    policy: Option<String>,
    policy_name: Option<String>,
    phase: Option<String>,
    generation: Option<u32>,
    attach_mode: Option<AttachMode>,
    /// (hook, link id, program id) of each pinned TCX link.
    links: Vec<LinkStatus>,
    audit: Option<bool>,
    uptime_seconds: Option<u64>,
    dropped_packets: Option<u64>,
    /// A switch awaiting `fw confirm`.
    pending_confirm: Option<PendingStatus>,
    /// The phase the daemon wrote ahead of `fw switch` (a switch to it is
    /// one map write).
    written_ahead: Option<AheadStatus>,
    /// Pid of the `fw run` daemon, when one runs.
    daemon_pid: Option<u32>,
    /// Entries of the active generation per map, and tracked flows.
    entries: Option<apply::EntryCounts>,
    /// Addresses the DNS proxy learned for name rules (still allowed or
    /// not yet swept), and the names they were answered for (from the
    /// daemon).
    learned_addresses: Option<u64>,
    /// Kernel memory of the learned-address maps (their `memlock`).
    learned_bytes: Option<u64>,
    learned_names: Option<usize>,
    /// A command was interrupted; the next one (or the daemon, within a
    /// second) finishes or discards it. What is shown is what the kernel
    /// enforces.
    repair_pending: bool,
}

#[derive(Serialize, Debug)]
struct AheadStatus {
    phase: String,
    generation: u32,
    entries: usize,
}

#[derive(Serialize, Debug)]
struct PendingStatus {
    rollback_to: String,
    seconds_left: u64,
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    require_root("fw status")?;
    let name = resolve_name(args.name)?;
    let status = inspect(&name);
    if args.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print_text(&status);
    }
    Ok(if status.enforcing { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn inspect(name: &str) -> Status {
    let mut s = Status {
        name: name.to_string(),
        enforcing: false,
        problem: None,
        iface: None,
        ifindex: None,
        policy: None,
        policy_name: None,
        phase: None,
        generation: None,
        attach_mode: None,
        links: Vec::new(),
        audit: None,
        uptime_seconds: None,
        dropped_packets: None,
        pending_confirm: None,
        written_ahead: None,
        daemon_pid: None,
        entries: None,
        learned_addresses: None,
        learned_bytes: None,
        learned_names: None,
        repair_pending: false,
    };
    let state = match InstanceState::load(name) {
        Ok(Some(state)) => state,
        Ok(None) => {
            s.problem = Some(format!("no fw instance named {name}"));
            return s;
        }
        Err(e) => {
            s.problem = Some(format!("{e:#}"));
            return s;
        }
    };
    s.iface = Some(state.iface.clone());
    s.ifindex = Some(state.ifindex);
    s.attach_mode = Some(state.attach_mode);
    s.daemon_pid = control::ping(name).ok().flatten().map(|d| d.pid);
    s.uptime_seconds = Some(crate::unix_now().saturating_sub(state.started_at));
    // The kernel is the truth: the state file only names what it enforces
    // (through its journal when a command was interrupted).
    let active = PolicyMaps::open(name).and_then(|maps| apply::active_generation(&maps));
    let enforced = active.as_ref().ok().and_then(|&a| txn::effective(&state, a)).cloned();
    if let Some(e) = &enforced {
        s.policy = Some(e.policy.clone());
        s.policy_name = Some(e.policy_name.clone());
        s.phase = Some(e.phase.clone());
        s.audit = Some(e.audit);
    }
    if let Ok(active) = &active {
        s.repair_pending = txn::read(&state, *active) != txn::Reading::Agrees;
    }
    s.pending_confirm = state.pending.as_ref().filter(|_| !s.repair_pending).map(|p| PendingStatus {
        rollback_to: p.previous.phase.clone(),
        seconds_left: p.deadline.saturating_sub(crate::unix_now()),
    });
    s.written_ahead = state.prepared.as_ref().filter(|_| !s.repair_pending).map(|p| AheadStatus {
        phase: p.to.phase.clone(),
        generation: p.to.generation,
        entries: p.entries,
    });
    s.problem = check_enforcing(name, &state, active, &mut s).err().map(|e| format!("{e:#}"));
    s.enforcing = s.problem.is_none();
    if let Ok(maps) = CounterMaps::open(name) {
        // The total is the sum of the reasons: no rule counter is needed
        // (a 100,000-rule policy would cost 100,000 map reads).
        s.dropped_packets = Snapshot::read(&maps, &[]).ok().map(|snap| snap.dropped());
    }
    if let (Ok(maps), Some(generation)) = (PolicyMaps::open(name), s.generation) {
        let ahead = s.written_ahead.as_ref().map(|a| a.generation);
        s.entries = apply::count_entries(&maps, generation, ahead).ok();
    }
    if let Ok((addresses, bytes)) = dns::count_learned(name) {
        s.learned_addresses = Some(addresses);
        s.learned_bytes = Some(bytes);
    }
    s.learned_names = control::names(name).ok().flatten().map(|r| r.names());
    s
}

fn check_enforcing(name: &str, state: &InstanceState, active: Result<u32>, s: &mut Status) -> Result<()> {
    let generation = active?;
    s.generation = Some(generation);
    anyhow::ensure!(generation != 0, "no policy generation is active");
    if s.phase.is_none() {
        s.phase =
            Some(format!("unknown (generation {generation} is not in the state file; the next command rebuilds it)"));
    }
    // The interface as this namespace sees it now (None from another
    // namespace too: then only the links can tell).
    let current = linkinfo::ifindex_of(&state.iface);
    let missing = |why: String| anyhow::anyhow!("interface {} missing: not enforcing ({why})", state.iface);
    if state.attach_mode == AttachMode::Tcx {
        let mut links = Vec::new();
        for (hook, label) in [(Hook::Egress, "egress"), (Hook::Ingress, "ingress")] {
            let link = linkinfo::tcx_link_info(&hook.link_pin(name))?
                .ok_or_else(|| anyhow::anyhow!("the {label} link is not pinned"))?;
            s.links.push(LinkStatus { hook: label, link_id: link.link_id, program_id: link.program_id });
            links.push((label, link));
        }
        for (label, link) in links {
            // The kernel detaches a TCX link when its interface goes away.
            if link.ifindex == 0 {
                return Err(missing(match current {
                    Some(index) => format!(
                        "the {label} link died with ifindex {}; the interface of that name now (ifindex {index}) has no enforcer",
                        state.ifindex
                    ),
                    None => format!("the {label} link died with ifindex {}", state.ifindex),
                }));
            }
            if let Some(index) = current.filter(|&index| index != link.ifindex) {
                return Err(missing(format!(
                    "the {label} link is on ifindex {}, the interface of that name is ifindex {index}",
                    link.ifindex
                )));
            }
            anyhow::ensure!(
                link.ifindex == state.ifindex,
                "the {label} link is on ifindex {}, the state says {}",
                link.ifindex,
                state.ifindex
            );
        }
    } else if current != Some(state.ifindex) {
        // clsact filters die with their interface.
        return Err(missing(format!("the filters were on ifindex {}", state.ifindex)));
    }
    Ok(())
}

fn print_text(s: &Status) {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("instance:   {}", s.name);
    println!(
        "enforcing:  {}{}",
        if s.enforcing { "yes" } else { "no" },
        s.problem.as_ref().map(|p| format!(" ({p})")).unwrap_or_default()
    );
    println!("interface:  {} (ifindex {})", opt(&s.iface), s.ifindex.map_or("-".into(), |i| i.to_string()));
    println!("policy:     {} ({})", opt(&s.policy_name), opt(&s.policy));
    println!("phase:      {} (generation {})", opt(&s.phase), s.generation.map_or("-".into(), |g| g.to_string()));
    println!("mode:       {}", if s.audit == Some(true) { "audit (would-drop only)" } else { "enforce" });
    let attach = match s.attach_mode {
        Some(AttachMode::Tcx) => s
            .links
            .iter()
            .map(|l| format!("{} tcx link {} program {}", l.hook, l.link_id, l.program_id))
            .collect::<Vec<_>>()
            .join(", "),
        Some(AttachMode::Clsact { egress, ingress }) => {
            format!("clsact filters egress prio {} ingress prio {}", egress.0, ingress.0)
        }
        None => "-".into(),
    };
    println!("attached:   {attach}");
    println!("uptime:     {}", s.uptime_seconds.map_or("-".into(), |u| format!("{u}s")));
    println!(
        "daemon:     {}",
        s.daemon_pid.map_or("not running (enforcement continues)".into(), |p| format!("pid {p}"))
    );
    if let Some(p) = &s.pending_confirm {
        println!("confirm:    pending: rolls back to {} in {}s unless `fw confirm`", p.rollback_to, p.seconds_left);
    }
    if let Some(a) = &s.written_ahead {
        println!(
            "ahead:      phase {} written (generation {}, {} entries): `fw switch {}` is one map write",
            a.phase, a.generation, a.entries, a.phase
        );
    }
    if let Some(e) = &s.entries {
        println!(
            "entries:    addr4 {} addr6 {} ports {} flows {} flows_in {}; written ahead {}; other generations {}",
            e.addr4, e.addr6, e.ports, e.flows, e.flows_in, e.written_ahead, e.other_generations
        );
    }
    if let Some(addresses) = s.learned_addresses.filter(|&n| n > 0 || s.learned_names.is_some()) {
        let names = s.learned_names.map_or_else(|| "names unknown: no daemon".to_string(), |n| format!("{n} names"));
        let kib = s.learned_bytes.unwrap_or(0) as f64 / 1024.0;
        println!("names:      {addresses} learned addresses, {kib:.0} KiB of kernel memory ({names}; `fw names`)");
    }
    println!("dropped:    {}", s.dropped_packets.map_or("-".into(), |d| d.to_string()));
}
