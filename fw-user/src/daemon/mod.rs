//! The `fw run` daemon: its interface watcher (netlink, see `iface_watch`)
//! and its housekeeping, once a second: notice `fw stop`,
//! finish an interrupted command or roll back an unconfirmed switch, keep
//! the route maps fresh, print the drops of the last interval.
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

use std::{
    fs,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};

use crate::{
    policy::compile::tables::RuleInfo,
    kernel::counters::Snapshot,
    daemon::iface_watch::Watcher,
    instance,
    kernel::loader::{self, CounterMaps},
    instance::paths,
    instance::state::InstanceState,
};

/// How often the daemon re-reads the routing table (see `routes`).
const ROUTES_REFRESH: Duration = Duration::from_secs(10);

/// Until SIGINT or SIGTERM, or until the instance is stopped. `watcher`
/// follows the interface (netlink): it re-attaches the enforcer to an
/// interface created again, and tells systemd when it enforces.
pub async fn run(name: &str, state: &InstanceState, interval: Duration, watcher: &mut Watcher) -> Result<()> {
    let mut housekeeping = Housekeeping::new(name, state, interval)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Enforcing on the interface? (READY=1 to systemd the first time.)
    watcher.check();
    loop {
        tokio::select! {
            changed = watcher.watch() => changed?,
            _ = tick.tick() => {
                if watcher.failed() {
                    watcher.check();
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
    last_routes: Option<Instant>,
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
            last_routes: None,
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
        if self.last_routes.is_none_or(|t| t.elapsed() >= ROUTES_REFRESH) {
            self.last_routes = Some(Instant::now());
            if let Err(e) = loader::RouteMaps::open(&name).and_then(|mut m| m.refresh(&self.iface)) {
                eprintln!("fw: {name}: refreshing the routes the kernel programs use: {e:#}");
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
