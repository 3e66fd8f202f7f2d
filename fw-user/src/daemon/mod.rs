//! The `fw run` daemon: its interface watcher (netlink, see `iface_watch`)
//! and its housekeeping, once a second: notice `fw stop`,
//! finish an interrupted command or roll back an unconfirmed switch, keep
//! the route maps fresh (refreshed when netlink reports a route or address
//! change), print the drops of the last interval.
//!
//! With `--watch` (see `watch`) it also follows the policy and env files:
//! inotify events arm a debounce, and the look at the files (a switch when
//! they changed) runs on the blocking pool like the housekeeping.
//!
//! The work runs on the blocking pool, never on the runtime thread that
//! answers the control socket and reads events: taking the instance lock
//! waits for a switch in progress, and that must not make the daemon deaf.
//! Its cost does not grow with the policy: the state file is re-read only
//! when it changed, and the summary reads the reason counters and the deny
//! rules' counters only.

pub mod control;
pub mod dns;
pub mod events;
pub mod iface_watch;
pub mod kernel_log;
pub mod learn;
pub mod metrics;
pub mod readiness;
pub mod watch;

use std::{
    fs,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};

use crate::{
    policy::compile::tables::RuleInfo,
    kernel::counters::Snapshot,
    daemon::iface_watch::{Heard, Watcher},
    instance,
    kernel::loader::{self, CounterMaps},
    instance::paths,
    instance::state::InstanceState,
    daemon::watch::Watch,
};

/// After a failed refresh of the route maps, when to try again (a route
/// change notification tries at once).
const ROUTES_RETRY: Duration = Duration::from_secs(10);

/// Until SIGINT or SIGTERM, or until the instance is stopped. `watcher`
/// follows the interface (netlink): it re-attaches the enforcer to an
/// interface created again, and tells systemd when it enforces. `files`
/// (`--watch`) follows the policy and env files.
pub async fn run(
    name: &str,
    state: &InstanceState,
    interval: Duration,
    watcher: &mut Watcher,
    mut files: Option<Watch>,
) -> Result<()> {
    let mut housekeeping = Housekeeping::new(name, state, interval)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // --watch: the end of the debounce, when the files are to be looked at
    // (at once at the start: they may have changed while no daemon ran),
    // the look in progress, and whether a deferred one is to be retried.
    let mut look_due = files.as_ref().map(|_| tokio::time::Instant::now());
    let mut look: Option<tokio::task::JoinHandle<(watch::Reloader, watch::Outcome)>> = None;
    let mut retry_look = false;
    // Enforcing on the interface? (READY=1 to systemd the first time.)
    watcher.check();
    loop {
        tokio::select! {
            heard = watcher.watch() => {
                if heard? == Heard::Routes {
                    housekeeping.routes_due = Some(Instant::now());
                }
            }
            event = async {
                match files.as_mut() {
                    Some(files) => files.event().await,
                    None => std::future::pending().await,
                }
            } => {
                event?;
                // Every event restarts the quiet time: one look per save.
                look_due = Some(tokio::time::Instant::now() + watch::DEBOUNCE);
            }
            _ = async {
                match look_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if look.is_none() => {
                look_due = None;
                if let Some(mut reloader) = files.as_mut().and_then(|f| f.reloader.take()) {
                    look = Some(tokio::task::spawn_blocking(move || {
                        let outcome = reloader.check();
                        (reloader, outcome)
                    }));
                }
            }
            done = async { look.as_mut().expect("a look in progress").await }, if look.is_some() => {
                look = None;
                let (reloader, outcome) = done.context("the daemon's policy reload panicked")?;
                retry_look = outcome == watch::Outcome::Deferred;
                if let Some(files) = files.as_mut() {
                    files.reloader = Some(reloader);
                    // The files may live in other directories now (a
                    // ConfigMap update, a symlink changed).
                    if let Err(e) = files.refresh_dirs() {
                        eprintln!("fw: {name}: {e:#}");
                    }
                }
            }
            _ = tick.tick() => {
                if watcher.failed() {
                    watcher.check();
                }
                if retry_look && look_due.is_none() {
                    // A switch awaited confirmation: look again each second.
                    look_due = Some(tokio::time::Instant::now());
                }
                let (back, stopped) = tokio::task::spawn_blocking(move || {
                    let stopped = housekeeping.tick();
                    (housekeeping, stopped)
                })
                .await
                .context("the daemon's housekeeping panicked")?;
                housekeeping = back;
                if stopped {
                    return Ok(());
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
    }
}

/// What the state file said when last read, and when that was written.
struct Seen {
    stamp: Option<(SystemTime, u64)>,
    pending_deadline: Option<u64>,
    switching: bool,
}

struct Housekeeping {
    name: String,
    iface: String,
    interval: Duration,
    counters: CounterMaps,
    /// The deny rules of the enforced policy: the summary names them.
    deny_rules: Vec<RuleInfo>,
    last: Snapshot,
    last_summary: Instant,
    /// When the route maps are to be refreshed: at start, after a route or
    /// address notification, after a failure. `None`: they are fresh.
    routes_due: Option<Instant>,
    seen: Seen,
}

impl Housekeeping {
    fn new(name: &str, state: &InstanceState, interval: Duration) -> Result<Self> {
        let counters = CounterMaps::open(name)?;
        let deny_rules = deny_rules(&state.enforced.rules);
        let last = Snapshot::read(&counters, &deny_rules)?;
        Ok(Self {
            name: name.to_string(),
            iface: state.iface.clone(),
            interval,
            counters,
            deny_rules,
            last,
            last_summary: Instant::now(),
            routes_due: Some(Instant::now()),
            seen: Seen { stamp: None, pending_deadline: None, switching: false },
        })
    }

    /// One second's work. Returns true when the instance is gone.
    fn tick(&mut self) -> bool {
        let name = self.name.clone();
        if !paths::pin_dir(&name).exists() {
            println!("fw: {name}: the instance was stopped (`fw stop`)");
            return true;
        }
        if let Err(e) = self.reread_state() {
            eprintln!("fw: {name}: reading the state: {e:#}");
        }
        let now = crate::unix_now();
        if self.seen.switching || self.seen.pending_deadline.is_some_and(|d| now >= d) {
            match instance::rollback_if_due(&name, now) {
                Ok((back, notes)) => {
                    for note in notes {
                        println!("fw: {name}: {note}");
                    }
                    if let Some(back) = back {
                        println!(
                            "fw: {name}: the switch was not confirmed in time: rolled back to phase {} (generation {})",
                            back.phase, back.generation
                        );
                    }
                }
                Err(e) => eprintln!("fw: {name}: rollback failed: {e:#}"),
            }
        }
        if self.routes_due.is_some_and(|due| Instant::now() >= due) {
            self.routes_due = None;
            if let Err(e) = loader::RouteMaps::open(&name).and_then(|mut m| m.refresh(&self.iface)) {
                eprintln!("fw: {name}: refreshing the routes the kernel programs use: {e:#}");
                self.routes_due = Some(Instant::now() + ROUTES_RETRY);
            }
        }
        if self.last_summary.elapsed() >= self.interval {
            self.last_summary = Instant::now();
            match Snapshot::read(&self.counters, &self.deny_rules) {
                Ok(now) => {
                    println!("fw: {name}: last {}s: {}", self.interval.as_secs(), now.since(&self.last).drop_line());
                    self.last = now;
                }
                Err(e) => eprintln!("fw: {name}: reading the counters: {e:#}"),
            }
        }
        false
    }

    /// Re-reads the state file when it changed since the last read.
    fn reread_state(&mut self) -> Result<()> {
        let meta = fs::metadata(paths::state_file(&self.name)).context("the state file")?;
        let stamp = Some((meta.modified()?, meta.len()));
        if stamp == self.seen.stamp {
            return Ok(());
        }
        let state = instance::load_state(&self.name)?;
        self.seen = Seen {
            stamp,
            pending_deadline: state.pending.as_ref().map(|p| p.deadline),
            switching: state.switching.is_some(),
        };
        let deny = deny_rules(&state.enforced.rules);
        if deny != self.deny_rules {
            // Rule ids name other rules now: start the deltas afresh.
            self.deny_rules = deny;
            self.last = Snapshot::read(&self.counters, &self.deny_rules)?;
        }
        Ok(())
    }
}

fn deny_rules(rules: &[RuleInfo]) -> Vec<RuleInfo> {
    rules.iter().filter(|r| r.action == "deny").cloned().collect()
}
