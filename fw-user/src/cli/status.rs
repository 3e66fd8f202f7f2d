use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::instance::{require_root, resolve_name};
use crate::{
    apply, control, counters::Snapshot, linkinfo, loader::{AttachMode, CounterMaps, Hook, PolicyMaps},
    state::InstanceState,
};

/// Is the instance attached and enforcing? Exit 0 only when it is (scripts
/// and tests use this as the readiness check), 1 when it is not.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Instance name (default: the only running instance).
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
    /// Pid of the `fw run` daemon, when one runs.
    daemon_pid: Option<u32>,
    /// Entries of the active generation per map, and tracked flows.
    entries: Option<apply::EntryCounts>,
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
        daemon_pid: None,
        entries: None,
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
    s.policy = Some(state.enforced.policy.clone());
    s.policy_name = Some(state.enforced.policy_name.clone());
    s.phase = Some(state.enforced.phase.clone());
    s.attach_mode = Some(state.attach_mode);
    s.audit = Some(state.enforced.audit);
    s.pending_confirm = state.pending.as_ref().map(|p| PendingStatus {
        rollback_to: p.previous.phase.clone(),
        seconds_left: p.deadline.saturating_sub(crate::unix_now()),
    });
    s.daemon_pid = control::ping(name).ok().flatten().map(|d| d.pid);
    s.uptime_seconds = Some(crate::unix_now().saturating_sub(state.started_at));
    s.problem = check_enforcing(name, &state, &mut s).err().map(|e| format!("{e:#}"));
    s.enforcing = s.problem.is_none();
    if let Ok(maps) = CounterMaps::open(name) {
        s.dropped_packets = Snapshot::read(&maps, &state.enforced.rules).ok().map(|snap| snap.dropped());
    }
    if let Ok(maps) = PolicyMaps::open(name) {
        s.entries = apply::count_entries(&maps, state.enforced.generation).ok();
    }
    s
}

fn check_enforcing(name: &str, state: &InstanceState, s: &mut Status) -> Result<()> {
    let maps = PolicyMaps::open(name)?;
    let generation = apply::active_generation(&maps)?;
    s.generation = Some(generation);
    anyhow::ensure!(generation != 0, "no policy generation is active");
    anyhow::ensure!(
        generation == state.enforced.generation || state.pending.is_some(),
        "the kernel enforces generation {generation} but the state says {}",
        state.enforced.generation
    );
    if state.attach_mode == AttachMode::Tcx {
        for (hook, label) in [(Hook::Egress, "egress"), (Hook::Ingress, "ingress")] {
            let link = linkinfo::tcx_link_info(&hook.link_pin(name))?
                .ok_or_else(|| anyhow::anyhow!("the {label} link is not pinned"))?;
            s.links.push(LinkStatus { hook: label, link_id: link.link_id, program_id: link.program_id });
            anyhow::ensure!(link.ifindex != 0, "the {label} link is defunct: interface {} is gone", state.iface);
            anyhow::ensure!(
                link.ifindex == state.ifindex,
                "the {label} link is on ifindex {}, expected {}",
                link.ifindex,
                state.ifindex
            );
        }
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
    println!("daemon:     {}", s.daemon_pid.map_or("not running (enforcement continues)".into(), |p| format!("pid {p}")));
    if let Some(p) = &s.pending_confirm {
        println!("confirm:    pending: rolls back to {} in {}s unless `fw confirm`", p.rollback_to, p.seconds_left);
    }
    if let Some(e) = &s.entries {
        println!(
            "entries:    addr4 {} addr6 {} ports {} flows {} flows_in {}",
            e.addr4, e.addr6, e.ports, e.flows, e.flows_in
        );
    }
    println!("dropped:    {}", s.dropped_packets.map_or("-".into(), |d| d.to_string()));
}
