use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::instance::require_root;
use crate::{
    apply, bpffs, cgroup, control,
    counters::Snapshot,
    events, iface_watch,
    loader::{self, CounterMaps, PolicyMaps},
    kernel_log, metrics, ops, paths, policy_source,
    state::{Enforced, InstanceState},
};

/// The policy `fw run` starts with when --policy is not given.
const DEFAULT_POLICY: &str = "openvidu-ce";
/// The phase `fw run` starts with when --phase is not given.
const DEFAULT_PHASE: &str = "install";
/// How often the daemon re-reads the routing table (see `routes`).
const ROUTES_REFRESH: Duration = Duration::from_secs(10);

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
    /// Policy file, or the name of a policy shipped inside fw (openvidu-ce,
    /// openvidu-pro-master, openvidu-media-node, vonage-webrtc-client).
    /// Default: openvidu-ce.
    #[arg(long)]
    pub policy: Option<String>,
    /// Phase of the policy to enforce at a fresh start (default: install).
    #[arg(long)]
    pub phase: Option<String>,
    /// Instance name: selects /sys/fs/bpf/fw/NAME (default: the interface name).
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE file for ${VARS} in the policy (default: /opt/openvidu/.env when it exists).
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Count and report denied packets as "would drop" but let them pass.
    #[arg(long)]
    pub audit: bool,
    /// cgroup v2 directory whose processes get an immediate EPERM for a
    /// denied connect()/sendmsg(), or `none`. Default: the root of the
    /// hierarchy when IFACE is in the host's own network namespace, else none.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Drop events per second per (reason, rule) and CPU.
    #[arg(long, default_value_t = fw_common::maps::DEFAULT_EVENT_BUDGET)]
    pub event_budget: u32,
    /// Seconds between drop summaries.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by
    /// default). A bare PORT listens on 127.0.0.1 only; any other host
    /// must be written out (e.g. 0.0.0.0:9469).
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics::parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    require_root("fw run")?;
    let name = args.name.clone().unwrap_or_else(|| args.iface.clone());
    paths::validate_name(&name).map_err(anyhow::Error::msg).context("--name")?;
    let ifindex = ifindex(&args.iface)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _guard = runtime.enter();
    // Bound first: it fails when another daemon runs this instance.
    let listener = control::bind(&name)?;
    let _socket_file = control::SocketFile::new(&name);
    // Before the kernel is touched: a port in use fails the start cleanly.
    let metrics_server = args.metrics.map(metrics::Server::bind).transpose()?;
    // Before the interface is looked at: a deletion or re-creation from now
    // on is seen by the start/adopt below or by the watcher (finding 3).
    let mut watcher = iface_watch::Watcher::subscribe(&name, &args.iface)?;
    let state = if paths::pin_dir(&name).exists() {
        adopt(&name, &args)?
    } else {
        let state = start(&name, &args, ifindex)?;
        announce(&name, &args, &state);
        state
    };
    let info = control::DaemonInfo { pid: std::process::id(), started_at: crate::unix_now() };
    let log = events::EventLog::shared();
    runtime.spawn(control::serve(listener, info, log.clone()));
    runtime.spawn(events::reader::run(name.clone(), log.clone()));
    runtime.spawn(kernel_log::forward(name.clone()));
    if let Some(server) = metrics_server {
        println!("fw: {name}: metrics at http://{}/metrics", server.addr());
        server.spawn(name.clone(), log);
    }
    runtime.block_on(daemon(&name, &state, Duration::from_secs(args.interval), &mut watcher))?;
    if paths::pin_dir(&name).exists() {
        println!("fw: {name}: exiting; enforcement stays attached (fail closed). `fw stop --name {name}` detaches it.");
    }
    Ok(ExitCode::SUCCESS)
}

/// A fresh start: everything that can fail on bad input fails before the
/// kernel is touched, and a start that fails later removes what it made.
/// `fw learn` starts its temporary instance through this too.
pub(crate) fn start(name: &str, args: &RunArgs, ifindex: u32) -> Result<InstanceState> {
    let policy = args.policy.as_deref().unwrap_or(DEFAULT_POLICY);
    let phase = args.phase.as_deref().unwrap_or(DEFAULT_PHASE);
    let loaded = policy_source::load_phase(policy, args.env_file.as_deref(), phase)?;
    for warning in &loaded.warnings {
        eprintln!("fw: warning: {warning}");
    }
    let mut compiled = loaded.compiled;
    compiled.settings.audit |= args.audit;
    let cgroup = cgroup::resolve(args.cgroup.as_deref())?;

    bpffs::ensure_mounted()?;
    std::fs::create_dir_all(paths::PIN_ROOT).with_context(|| format!("creating {}", paths::PIN_ROOT))?;
    let pin_dir = paths::pin_dir(name);
    // Creating the pin directory is the lock against a concurrent start.
    std::fs::create_dir(&pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let mut cleanup = RemoveOnError { name: name.to_string(), armed: true };

    let generation = 1;
    let options = loader::LoadOptions { event_budget: args.event_budget, ..loader::LoadOptions::here()? };
    let mut ebpf = loader::load(&options)?;
    loader::pin_maps(&ebpf, name)?;
    let mut maps = PolicyMaps::take(&mut ebpf)?;
    apply::write_generation(&mut maps, &compiled, generation)?;
    apply::activate(&mut maps, generation)?;
    loader::RouteMaps::open(name)?.refresh(&args.iface)?;
    let attach_mode = loader::attach(&mut ebpf, name, &args.iface)?;
    if let Some(dir) = &cgroup {
        loader::attach_cgroup(&mut ebpf, name, dir)?;
    }
    let state = InstanceState {
        name: name.to_string(),
        iface: args.iface.clone(),
        ifindex,
        attach_mode,
        cgroup: cgroup.as_ref().map(|p| p.display().to_string()),
        audit_override: args.audit,
        started_at: crate::unix_now(),
        enforced: Enforced {
            policy: loaded.source,
            policy_name: loaded.policy_name,
            env_file: policy_source::env_file(args.env_file.as_deref()).map(|p| p.display().to_string()),
            phase: phase.to_string(),
            generation,
            audit: compiled.settings.audit,
            rules: compiled.rules,
        },
        highest_generation: generation,
        pending: None,
    };
    state.save()?;
    cleanup.armed = false;
    Ok(state)
}

/// What `fw run` says after a fresh start.
fn announce(name: &str, args: &RunArgs, state: &InstanceState) {
    let e = &state.enforced;
    println!(
        "fw: {name}: enforcing policy {} phase {} on {}{}; Ctrl-C leaves it enforcing, `fw stop --name {name}` removes it",
        e.policy_name,
        e.phase,
        state.iface,
        if e.audit { " (audit mode: would-drop only)" } else { "" }
    );
    if e.phase == DEFAULT_PHASE && args.phase.is_none() {
        println!("fw: next, when the install is done: `fw switch runtime --name {name} --confirm 120`, then `fw confirm --name {name}`");
    }
}

/// A restart: the pinned programs and maps keep enforcing; take them over.
fn adopt(name: &str, args: &RunArgs) -> Result<InstanceState> {
    let state = ops::load_state(name).with_context(|| {
        format!("{} exists but its state does not: `fw stop --name {name}` cleans up", paths::pin_dir(name).display())
    })?;
    if state.iface != args.iface {
        bail!("instance {name} enforces on {} (ifindex {}), not {}: pick another --name", state.iface, state.ifindex, args.iface);
    }
    if let Some(policy) = &args.policy {
        let wanted = policy_source::PolicyText::resolve(policy)?.label;
        if wanted != state.enforced.policy {
            bail!(
                "instance {name} enforces {}, not {wanted}: change it with `fw switch PHASE --name {name} --policy {policy}`",
                state.enforced.policy
            );
        }
    }
    if state.audit_override != args.audit {
        bail!("instance {name} runs with audit {}; `fw stop` it to change --audit", state.audit_override);
    }
    // The kernel must still be enforcing what the state says.
    let maps = PolicyMaps::open(name)?;
    let generation = apply::active_generation(&maps)?;
    if generation != state.enforced.generation {
        bail!(
            "instance {name}: the kernel enforces generation {generation} but the state says {}; `fw switch` to repair",
            state.enforced.generation
        );
    }
    // The interface was deleted and created again (finding 3): attach the
    // pinned enforcer to the new one, or fail leaving every pin in place.
    if !loader::attached_to(name, state.attach_mode, state.ifindex, &args.iface)? {
        let now = iface_watch::attach_again(name, &args.iface)
            .with_context(|| format!("instance {name}: the enforcer is not attached to {}", args.iface))?;
        println!("fw: {name}: interface {} was created again (ifindex {} -> {now}): attached the pinned enforcer to it", args.iface, state.ifindex);
    }
    let state = ops::load_state(name)?;
    let e = &state.enforced;
    println!(
        "fw: {name}: adopted the pinned enforcer on {}: policy {} phase {} (generation {}), no reload, no gap",
        state.iface, e.policy_name, e.phase, e.generation
    );
    if let Some(phase) = &args.phase {
        if *phase != e.phase {
            println!("fw: {name}: --phase {phase} applies to a fresh start only; the pinned phase {} stays (use `fw switch`)", e.phase);
        }
    }
    Ok(state)
}

pub(crate) fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("--iface")?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface named {iface} in this network namespace (see `ip link`): check --iface");
    }
    Ok(index)
}

/// Until SIGINT or SIGTERM: every second, roll back an unconfirmed switch
/// whose deadline passed; every `interval`, print the drops since the last
/// summary.
async fn daemon(name: &str, state: &InstanceState, interval: Duration, watcher: &mut iface_watch::Watcher) -> Result<()> {
    let counters = CounterMaps::open(name)?;
    let mut rules = state.enforced.rules.clone();
    let mut last = Snapshot::read(&counters, &rules)?;
    let mut last_summary = tokio::time::Instant::now();
    let mut last_routes = tokio::time::Instant::now() - ROUTES_REFRESH;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Enforcing on the interface? (READY=1 to systemd the first time.)
    watcher.check();
    loop {
        tokio::select! {
            changed = watcher.watch() => changed?,
            _ = tick.tick() => {
                if !paths::pin_dir(name).exists() {
                    println!("fw: {name}: the instance was stopped (`fw stop`)");
                    return Ok(());
                }
                if watcher.failed() {
                    watcher.check();
                }
                match ops::rollback_if_due(name, crate::unix_now()) {
                    Ok(Some(back)) => println!(
                        "fw: {name}: the switch was not confirmed in time: rolled back to phase {} (generation {})",
                        back.phase, back.generation
                    ),
                    Ok(None) => {}
                    Err(e) => eprintln!("fw: {name}: rollback failed: {e:#}"),
                }
                if last_routes.elapsed() >= ROUTES_REFRESH {
                    last_routes = tokio::time::Instant::now();
                    if let Err(e) = loader::RouteMaps::open(name).and_then(|mut m| m.refresh(&state.iface)) {
                        eprintln!("fw: {name}: refreshing the routes the kernel programs use: {e:#}");
                    }
                }
                if last_summary.elapsed() >= interval {
                    last_summary = tokio::time::Instant::now();
                    let current = ops::load_state(name)?.enforced.rules;
                    if current != rules {
                        rules = current;
                        last = Snapshot::read(&counters, &rules)?;
                        continue;
                    }
                    let now = Snapshot::read(&counters, &rules)?;
                    println!("fw: {name}: last {}s: {}", interval.as_secs(), now.since(&last).drop_line());
                    last = now;
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// Removes a half-created instance when `fw run` fails before it is up.
struct RemoveOnError {
    name: String,
    armed: bool,
}

impl Drop for RemoveOnError {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = loader::detach(&self.name, None, None) {
                eprintln!("fw: cleaning up the failed start of {}: {e:#}", self.name);
            }
            let _ = InstanceState::remove(&self.name);
        }
    }
}
