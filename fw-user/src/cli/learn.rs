use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use super::{duration, target::require_root};
use crate::{
    kernel::cgroup,
    daemon::events::reader::EventReader,
    instance::{self, records::PolicyCopy, StartRequest},
    daemon::learn::{self, Tally},
    instance::paths, source,
};

/// The learning instance's policy: one phase, audit mode, no egress rule,
/// so every new outbound connection is a would-drop event (and passes).
/// Inbound stays `allow` (tracked): replies to what this host serves are
/// flows, not events.
const LEARNING_POLICY: &str = "name: learning\nphases:\n  learning:\n    mode: audit\n";
const LEARNING_PHASE: &str = "learning";
/// Events per second per (reason, rule) and CPU while learning: every
/// connection of a busy host, not a sample.
const LEARN_EVENT_BUDGET: u32 = 5000;

/// Watch what this host connects to and write it as a policy: starts a
/// temporary instance on IFACE in audit mode with no egress rule (nothing is
/// blocked), records every new outbound flow with the process, container
/// and destination behind it, then writes a phase that allows exactly
/// those flows (one rule per program, container and destination, ports
/// folded into ranges, a comment on who used each and how often). Runs for
/// --duration or until Ctrl-C; the temporary instance is removed either way.
#[derive(Args, Debug)]
pub struct LearnArgs {
    /// Interface to watch.
    #[arg(long)]
    pub iface: String,
    /// Name of the phase to write.
    #[arg(long, default_value = "learned")]
    pub phase: String,
    /// A policy file to add the learned phase to (its `phases:` must be its
    /// last top-level key). Default: write a policy of its own.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// How long to watch (30s, 10m, 2h...; at most 365d). Default: until Ctrl-C.
    #[arg(long, value_parser = duration::parse)]
    pub duration: Option<Duration>,
    /// cgroup v2 directory whose processes are named in the learned rules
    /// (connect()/sendmsg() hooks), or `none`: same default as `fw run`.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Where to write the policy (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Name of the temporary instance (default: learn-IFACE).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn learn(args: LearnArgs) -> Result<ExitCode> {
    require_root("fw learn")?;
    let name = args.name.clone().unwrap_or_else(|| format!("learn-{}", args.iface));
    paths::validate_name(&name).map_err(anyhow::Error::msg).context("--name")?;
    if paths::pin_dir(&name).exists() {
        bail!("an instance named {name} exists: pick another --name, or `fw stop --name {name}`");
    }
    let base = args.policy.as_deref().map(read_base).transpose()?;
    if let Some((path, _)) = &base {
        check_phase_is_new(path, &args.phase)?;
    }
    instance::ifindex(&args.iface)?;
    let copy = PolicyCopy { policy_text: LEARNING_POLICY.to_string(), env_text: None };
    let loaded = source::load_phase_text("builtin:learning", None, copy, LEARNING_PHASE)?;
    let cgroup = cgroup::resolve(args.cgroup.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _guard = runtime.enter();
    // Taken over before the instance exists: a Ctrl-C from here on stops
    // learning and removes the instance instead of killing the process.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let mut temporary = Temporary { name: name.clone(), started: false };
    let state = instance::start(StartRequest {
        name: name.clone(),
        iface: args.iface.clone(),
        loaded,
        phase: LEARNING_PHASE.to_string(),
        audit: true,
        cgroup,
        event_budget: LEARN_EVENT_BUDGET,
        ephemeral: true,
    })?;
    temporary.started = true;
    let hooks = state.cgroup.as_deref().map_or("no socket hooks: processes are not named".into(), |c| format!("processes in cgroup {c}"));
    eprintln!(
        "fw: learning what {} connects to ({hooks}), {}; nothing is blocked",
        args.iface,
        args.duration.map_or("until Ctrl-C".into(), |d| format!("for {}s or until Ctrl-C", d.as_secs()))
    );

    let mut tally = Tally::default();
    runtime.block_on(async {
        let mut reader = EventReader::open(&name)?;
        let deadline = async {
            match args.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                batch = reader.next_batch(&mut tally) => batch?,
                _ = &mut deadline => break,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // What the kernel submitted up to now, still unread.
        reader.drain(&mut tally);
        anyhow::Ok(())
    })?;
    temporary.stop()?;

    let rules = tally.rules();
    let header = format!(
        "# Learned by `fw learn --iface {}`: {} destinations in {} rules.\n# Each rule allows exactly what was seen; review before enforcing.\n",
        args.iface,
        tally.destinations(),
        rules.len()
    );
    let text = match &base {
        None => learn::policy_yaml(&header, &args.phase, &rules),
        Some((path, base)) => learn::append_phase(base, &header, &args.phase, &rules)
            .map_err(|e| anyhow::anyhow!("cannot add the learned phase to {}: {e}", path.display()))?,
    };
    write_checked(&text, &args.phase, args.output.as_deref(), &name)?;
    if tally.undecodable > 0 {
        eprintln!("fw: warning: {} events could not be decoded (is this fw older than its kernel object?)", tally.undecodable);
    }
    eprintln!(
        "fw: learned {} rules{}",
        rules.len(),
        args.output.as_ref().map(|p| format!(", written to {}", p.display())).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// The policy to add the learned phase to: a regular file under the size
/// limit, like every policy (a FIFO or /dev/zero must not hang or fill
/// memory).
fn read_base(path: &Path) -> Result<(PathBuf, String)> {
    let text = crate::source::file::read_text(path, &path.display().to_string())?;
    Ok((path.to_path_buf(), text))
}

/// Fails before learning, not after, when the phase to write exists.
fn check_phase_is_new(path: &Path, phase: &str) -> Result<()> {
    let (_, loaded, _) = source::load_policy(&path.display().to_string(), None)?;
    if loaded.policy.phase(phase).is_some() {
        bail!("{} already has a phase {phase}: pick another --phase", path.display());
    }
    Ok(())
}

/// Checks `text` the way `fw check` does (parse, compile the phase, fit
/// the maps), then writes it to `output` or prints it.
fn write_checked(text: &str, phase: &str, output: Option<&Path>, name: &str) -> Result<()> {
    let draft = match output {
        Some(path) => path.with_extension(format!("tmp.{}", std::process::id())),
        None => PathBuf::from(paths::RUN_DIR).join(format!("{name}.learned.yaml")),
    };
    std::fs::write(&draft, text).with_context(|| format!("writing {}", draft.display()))?;
    let checked = source::load_phase(&draft.display().to_string(), None, phase);
    let result = match (checked, output) {
        (Err(e), _) => Err(e.context("the learned policy does not pass `fw check` (a bug in fw learn)")),
        (Ok(_), Some(path)) => {
            std::fs::rename(&draft, path).with_context(|| format!("writing {}", path.display()))
        }
        (Ok(_), None) => {
            print!("{text}");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&draft);
    result
}

/// The learning instance: stopped and removed when learning ends, fails or
/// is interrupted.
struct Temporary {
    name: String,
    started: bool,
}

impl Temporary {
    fn stop(&mut self) -> Result<()> {
        if std::mem::take(&mut self.started) {
            instance::stop(&self.name, true)?;
        }
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("fw: removing the learning instance {}: {e:#} (`fw stop --name {}` retries)", self.name, self.name);
        }
    }
}
