use std::{
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::instance::require_root;
use crate::{
    apply, bpffs,
    counters::Snapshot,
    loader::{self, CounterMaps, PolicyMaps},
    paths, policy_source,
    state::InstanceState,
};

/// Load the enforcer, attach it to IFACE's egress, pin it, and stay in the
/// foreground printing a drop summary.
///
/// Enforcement is pinned in the kernel: when this process exits (Ctrl-C,
/// SIGTERM, a crash) the interface stays filtered, fail closed. Only
/// `fw stop` detaches it.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Interface to enforce on (its egress).
    #[arg(long)]
    pub iface: String,
    /// Policy file, or the name of a policy shipped inside fw
    /// (openvidu-ce, openvidu-pro-master, openvidu-media-node, vonage-webrtc-client).
    #[arg(long, default_value = "openvidu-ce")]
    pub policy: String,
    /// Phase of the policy to enforce.
    #[arg(long, default_value = "install")]
    pub phase: String,
    /// Instance name: selects /sys/fs/bpf/fw/NAME (default: the interface name).
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE file for ${VARS} in the policy (default: /opt/openvidu/.env when it exists).
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Count and report denied packets as "would drop" but let them pass.
    #[arg(long)]
    pub audit: bool,
    /// Seconds between drop summaries.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: u64,
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    require_root("fw run")?;
    let name = args.name.clone().unwrap_or_else(|| args.iface.clone());
    paths::validate_name(&name).map_err(anyhow::Error::msg).context("--name")?;
    let ifindex = ifindex(&args.iface)?;

    // Everything that can fail on bad input fails here, before the kernel
    // is touched: a policy that does not compile is never applied.
    let loaded = policy_source::load_phase(&args.policy, args.env_file.as_deref(), &args.phase)?;
    for warning in &loaded.warnings {
        eprintln!("fw: warning: {warning}");
    }
    let mut compiled = loaded.compiled;
    compiled.settings.audit |= args.audit;

    bpffs::ensure_mounted()?;
    let pin_dir = paths::pin_dir(&name);
    std::fs::create_dir_all(paths::PIN_ROOT).with_context(|| format!("creating {}", paths::PIN_ROOT))?;
    // Creating the pin directory is the lock: a second `fw run` for the same
    // name fails here, before it can touch the first one's maps.
    if let Err(e) = std::fs::create_dir(&pin_dir) {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            bail!(
                "an fw instance named {name} already exists ({}): stop it first with `fw stop --name {name}`, or pick another --name",
                pin_dir.display()
            );
        }
        return Err(e).with_context(|| format!("creating {}", pin_dir.display()));
    }
    let mut cleanup = RemoveOnError { name: name.clone(), armed: true };

    let generation = 1;
    let mut ebpf = loader::load(loader::Capacity::default())?;
    loader::pin_maps(&ebpf, &name)?;
    let mut maps = PolicyMaps::take(&mut ebpf)?;
    apply::write_generation(&mut maps, &compiled, generation)?;
    apply::activate(&mut maps, generation)?;
    let attach_mode = loader::attach(&mut ebpf, &name, &args.iface)?;
    let state = InstanceState {
        name: name.clone(),
        iface: args.iface.clone(),
        ifindex,
        policy: loaded.source,
        policy_name: loaded.policy_name,
        phase: args.phase.clone(),
        generation,
        attach_mode,
        audit: compiled.settings.audit,
        started_at: crate::unix_now(),
        rules: compiled.rules.clone(),
    };
    state.save()?;
    cleanup.armed = false;

    println!(
        "fw: {name}: enforcing policy {} phase {} on {} ({}{}); Ctrl-C leaves it enforcing, `fw stop --name {name}` removes it",
        state.policy_name,
        state.phase,
        state.iface,
        attach_mode_label(&state),
        if state.audit { ", audit mode" } else { "" }
    );
    report_until_signal(&name, &state, Duration::from_secs(args.interval))?;
    println!("fw: {name}: exiting; enforcement stays attached (fail closed). `fw stop --name {name}` detaches it.");
    Ok(ExitCode::SUCCESS)
}

fn attach_mode_label(state: &InstanceState) -> &'static str {
    match state.attach_mode {
        loader::AttachMode::Tcx => "tcx",
        loader::AttachMode::Clsact { .. } => "clsact",
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).context("--iface")?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no interface named {iface} in this network namespace (see `ip link`): check --iface");
    }
    Ok(index)
}

/// Prints a drop summary every `interval` until SIGINT or SIGTERM.
fn report_until_signal(name: &str, state: &InstanceState, interval: Duration) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let counters = CounterMaps::open(name)?;
        let mut last = Snapshot::read(&counters, &state.rules)?;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = Snapshot::read(&counters, &state.rules)?;
                    println!("fw: {name}: last {}s: {}", interval.as_secs(), now.since(&last).drop_line());
                    last = now;
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
            }
        }
        Ok(())
    })
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
