use std::{process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{source::PolicyFile, target::require_root};
use crate::{
    daemon,
    daemon::control,
    daemon::events,
    daemon::iface_watch,
    daemon::kernel_log,
    daemon::metrics,
    daemon::watch,
    instance::lock,
    instance::paths,
    instance::state::InstanceState,
    instance::{self, Leftover, StartRequest},
    kernel::cgroup,
    kernel::loader,
    source::{self, LoadedPhase},
};

/// The policy `fw run` starts with when --policy is not given.
const DEFAULT_POLICY: &str = "openvidu-ce";
/// The phase `fw run` starts with when --phase is not given.
const DEFAULT_PHASE: &str = "install";
/// The largest `--event-budget`.
const MAX_EVENT_BUDGET: i64 = 100_000;

/// Load the enforcer, attach it to IFACE (egress enforcing, ingress
/// tracking), pin it, and stay in the foreground as its daemon: drop
/// summaries, the control socket, and the rollback of unconfirmed switches.
///
/// Enforcement is pinned in the kernel: when this process exits (Ctrl-C,
/// SIGTERM, a crash) the interface stays filtered, fail closed. Only
/// `fw stop` detaches it. Started again for an instance that is still
/// pinned, `fw run` adopts it without reloading: no moment without
/// enforcement, and the phase it enforces stays (change it with `fw switch`).
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Interface to enforce on.
    #[arg(long)]
    pub iface: String,
    #[command(flatten)]
    pub file: PolicyFile,
    /// Phase of the policy to enforce at a fresh start (default: install).
    #[arg(long)]
    pub phase: Option<String>,
    /// Instance name: selects /sys/fs/bpf/fw/NAME (default: $FW_NAME, else the
    /// interface name). A container sets FW_NAME once for `fw run` and for
    /// the `fw status` of its health check alike.
    #[arg(long)]
    pub name: Option<String>,
    /// Count and report denied packets as "would drop" but let them pass.
    #[arg(long)]
    pub audit: bool,
    /// Start in a runtime phase even though its egress lets every address
    /// out on every port (refused otherwise).
    #[arg(long)]
    pub force: bool,
    /// cgroup v2 directory whose processes get an immediate EPERM for a
    /// denied connect()/sendmsg(), or `none`. Default: the root of the
    /// hierarchy when IFACE is in the host's own network namespace, else none.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Drop events per second per (reason, rule) and CPU, at most 100000
    /// (the ring buffer holds about 10,000 events: more only loses events).
    #[arg(long, default_value_t = fw_common::maps::DEFAULT_EVENT_BUDGET,
          value_parser = clap::value_parser!(u32).range(..=MAX_EVENT_BUDGET))]
    pub event_budget: u32,
    /// Seconds between drop summaries (1 to 86400).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub interval: u64,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by
    /// default). A bare PORT listens on 127.0.0.1 only; any other host
    /// must be written out (e.g. 0.0.0.0:9469).
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics::parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Follow the policy file and the env file: an edit switches the
    /// enforced phase to it atomically, as `fw switch` would (debounced,
    /// logged, counted in fw_policy_reloads_total); an edit that does not
    /// compile changes nothing. The files are the truth: at start, and
    /// after a switch awaiting `fw confirm` ends, what they hold is loaded.
    #[arg(long)]
    pub watch: bool,
    /// Do not write the next phase into the maps ahead of `fw switch`: the
    /// maps then hold one generation between switches (half the kernel
    /// memory of a large policy), and a switch writes its entries while
    /// you wait (at 100,000 rules about 0.5 s more).
    #[arg(long)]
    pub no_write_ahead: bool,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    require_root("fw run")?;
    let name = super::target::run_name(args.name.clone(), &args.iface);
    paths::validate_name(&name).map_err(anyhow::Error::msg).context("--name")?;
    // One daemon per instance, taken before anything is created: a second
    // `fw run` changes nothing of the first's (its socket included).
    let _daemon = lock::daemon_lock(&name)?;
    instance::ifindex(&args.iface)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _guard = runtime.enter();
    let listener = control::bind(&name)?;
    let _socket_file = control::SocketFile::new(&name);
    // Before the kernel is touched: a port in use fails the start cleanly.
    let metrics_server = args.metrics.map(metrics::Server::bind).transpose()?;
    // Before the interface is looked at: a deletion or re-creation from now
    // on is seen by the start/adopt below or by the watcher (finding 3).
    let mut watcher = iface_watch::Watcher::subscribe(&name, &args.iface)?;
    // Likewise for the files: an edit from now on is seen (see `watch`).
    let files = if args.watch {
        let policy = args.file.policy.as_deref().unwrap_or(DEFAULT_POLICY);
        Some(watch::Watch::subscribe(&name, watch::Watched::new(policy, args.file.env_file.as_deref())?)?)
    } else {
        None
    };
    let state = if paths::pin_dir(&name).exists() {
        match instance::leftover(&name)? {
            Leftover::Instance => adopt(&name, &args)?,
            Leftover::NotAttached => {
                say!("fw: {name}: found pins that enforce nothing (a start or stop was interrupted): starting afresh");
                instance::discard_unattached(&name)?;
                fresh(&name, &args)?
            }
            Leftover::NoState => {
                let candidate = initial_policy(&name, &args).ok();
                let candidate = candidate.as_ref().map(|(loaded, phase, _)| (loaded, phase.as_str()));
                for note in instance::rebuild_state(&name, &args.iface, candidate)? {
                    say!("fw: {name}: {note}");
                }
                adopt(&name, &args)?
            }
        }
    } else {
        fresh(&name, &args)?
    };
    // Enforcing: the parse's and the compile's memory goes back now, and
    // from here on what the daemon frees.
    crate::allocator::settle();
    let info = control::DaemonInfo { pid: std::process::id(), started_at: crate::unix_now() };
    let log = events::EventLog::shared();
    runtime.spawn(control::serve(listener, info, log.clone()));
    runtime.spawn(events::reader::run(name.clone(), log.clone()));
    runtime.spawn(kernel_log::forward(name.clone()));
    runtime.spawn(daemon::dns::serve(name.clone(), log.clone()));
    if let Some(server) = metrics_server {
        say!("fw: {name}: metrics at http://{}/metrics", server.addr());
        server.spawn(name.clone(), log);
    }
    let write_ahead = !args.no_write_ahead;
    runtime.block_on(daemon::run(
        &name,
        &state,
        Duration::from_secs(args.interval),
        write_ahead,
        &mut watcher,
        files,
    ))?;
    if paths::pin_dir(&name).exists() {
        say!("fw: {name}: exiting; enforcement stays attached (fail closed). `fw stop --name {name}` detaches it.");
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy a fresh start enforces: the boot record's (the last
/// confirmed phase) when there is one, else --policy/--phase. Returns the
/// compiled phase, its name, and whether it came from the boot record.
fn initial_policy(name: &str, args: &RunArgs) -> Result<(LoadedPhase, String, bool)> {
    if let Some((record, loaded)) = instance::boot_policy(name)? {
        return Ok((loaded, record.phase, true));
    }
    let policy = args.file.policy.as_deref().unwrap_or(DEFAULT_POLICY);
    let phase = args.phase.as_deref().unwrap_or(DEFAULT_PHASE);
    Ok((source::load_phase(policy, args.file.env_file.as_deref(), phase)?, phase.to_string(), false))
}

/// A fresh start: everything that can fail on bad input fails before
/// anything is pinned or attached (the object loading meanwhile, for the
/// verifier's second, leaves nothing behind when dropped).
fn fresh(name: &str, args: &RunArgs) -> Result<InstanceState> {
    let options = loader::LoadOptions { event_budget: args.event_budget, ..loader::LoadOptions::here()? };
    let kernel = loader::Preloading::start(options);
    crate::mark("run: start");
    let (loaded, phase, from_boot) = initial_policy(name, args)?;
    crate::mark("run: policy parsed and compiled");
    if from_boot {
        say!(
            "fw: {name}: starting in phase {phase} of {}, the last one confirmed ({}); --policy/--phase only seed the first start (`fw stop --forget` resets)",
            loaded.source,
            paths::boot_dir(name).display()
        );
    }
    crate::say_warnings(&loaded.warnings);
    if !args.force {
        instance::refuse_open_egress(&loaded.warnings)?;
    }
    crate::mark("run: warnings said");
    let cgroup = cgroup::resolve(args.cgroup.as_deref())?;
    let state = instance::start(StartRequest {
        name: name.to_string(),
        iface: args.iface.clone(),
        loaded,
        phase,
        audit: args.audit,
        cgroup,
        kernel,
        ephemeral: false,
    })?;
    announce(name, args, &state, from_boot);
    Ok(state)
}

/// What `fw run` says after a fresh start.
fn announce(name: &str, args: &RunArgs, state: &InstanceState, from_boot: bool) {
    let e = &state.enforced;
    say!(
        "fw: {name}: enforcing policy {} phase {} on {}{}; Ctrl-C leaves it enforcing, `fw stop --name {name}` removes it",
        e.policy_name,
        e.phase,
        state.iface,
        if e.audit { " (audit mode: would-drop only)" } else { "" }
    );
    if e.phase == DEFAULT_PHASE && args.phase.is_none() && !from_boot {
        say!("fw: next, when the install is done: `fw switch runtime --name {name} --confirm 120`, then `fw confirm --name {name}`");
    }
}

/// A restart: the pinned programs and maps keep enforcing; take them over,
/// finishing whatever an interrupted command left half done.
fn adopt(name: &str, args: &RunArgs) -> Result<InstanceState> {
    let (state, notes) = instance::reconcile(name)?;
    for note in notes {
        say!("fw: {name}: {note}");
    }
    if state.iface != args.iface {
        bail!(
            "instance {name} enforces on {} (ifindex {}), not {}: pick another --name",
            state.iface,
            state.ifindex,
            args.iface
        );
    }
    if let Some(policy) = &args.file.policy {
        let wanted = source::PolicyText::resolve(policy)?.label;
        if wanted != state.enforced.policy && args.watch {
            // The watched file is the truth: the daemon's first look loads it.
            say!("fw: {name}: instance enforces {}; --watch loads {wanted} in its phase", state.enforced.policy);
        } else if wanted != state.enforced.policy {
            bail!(
                "instance {name} enforces {}, not {wanted}: change it with `fw switch PHASE --name {name} --policy {policy}`",
                state.enforced.policy
            );
        }
    }
    if state.audit_override != args.audit {
        bail!("instance {name} runs with audit {}; `fw stop` it to change --audit", state.audit_override);
    }
    // The interface was deleted and created again (finding 3), or a stop
    // was interrupted between its unpins: attach the pinned enforcer again,
    // or fail leaving every pin in place.
    if !loader::attached_to(name, state.attach_mode, state.ifindex, &args.iface)? {
        let now = iface_watch::attach_again(name, &args.iface)
            .with_context(|| format!("instance {name}: the enforcer is not attached to {}", args.iface))?;
        say!(
            "fw: {name}: interface {} was not enforced (ifindex {} -> {now}): attached the pinned enforcer to it",
            args.iface,
            state.ifindex
        );
    }
    let state = instance::load_state(name)?;
    let e = &state.enforced;
    say!(
        "fw: {name}: adopted the pinned enforcer on {}: policy {} phase {} (generation {}), no reload, no gap",
        state.iface,
        e.policy_name,
        e.phase,
        e.generation
    );
    if let Some(phase) = &args.phase {
        if *phase != e.phase {
            say!("fw: {name}: --phase {phase} applies to a fresh start only; the pinned phase {} stays (use `fw switch`)", e.phase);
        }
    }
    Ok(state)
}
