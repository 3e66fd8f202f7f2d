//! The `fw run` daemon: its interface watcher (netlink, see `iface_watch`)
//! and its housekeeping, once a second: notice `fw stop`,
//! finish an interrupted command or roll back an unconfirmed switch, keep
//! the route maps fresh (refreshed when netlink reports a route or address
//! change), print the drops of the last interval.
//!
//! It compiles the enforced policy's phases ahead of `fw switch`, in the
//! background (see `ahead`), then writes the next phase into the maps
//! ahead of it (see `standby`).
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

pub mod ahead;
pub mod control;
pub mod dns;
pub mod events;
pub mod iface_watch;
mod job;
pub mod kernel_log;
pub mod learn;
pub mod metrics;
pub mod readiness;
pub mod standby;
pub mod watch;

use std::{
    fs,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};

use crate::{
    daemon::iface_watch::{Heard, Watcher},
    daemon::watch::Watch,
    instance,
    instance::paths,
    instance::state::InstanceState,
    kernel::counters::Snapshot,
    kernel::loader::{self, CounterMaps},
    policy::compile::tables::RuleInfo,
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
    write_ahead: bool,
    watcher: &mut Watcher,
    mut files: Option<Watch>,
) -> Result<()> {
    // Starting compiled the policy (for 100,000 rules, hundreds of MB of
    // parse tree and tables), all freed by now: hand the pages back, or the
    // daemon keeps the compiler's peak resident for its whole life.
    release_freed_memory();
    let mut housekeeping = Housekeeping::new(name, state, interval)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // --watch: the end of the debounce, when the files are to be looked at
    // (at once at the start: they may have changed while no daemon ran),
    // the look in progress, and whether a deferred one is to be retried.
    let mut look_due = files.as_ref().map(|_| tokio::time::Instant::now());
    let mut look: Option<tokio::task::JoinHandle<(watch::Reloader, watch::Outcome)>> = None;
    let mut retry_look = false;
    // The phases compiled ahead of `fw switch`: started at once.
    let mut ahead = ahead::Ahead::default();
    ahead.start_if_due(name, &housekeeping.state);
    // The next phase written ahead, once compiled ahead (unless
    // --no-write-ahead).
    let mut standby = standby::Standby::new(write_ahead);
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
            () = ahead.finish(name), if ahead.is_running() => {
                release_freed_memory();
                standby.start_if_due(name, &housekeeping.state, ahead.compiled_for());
            }
            () = standby.finish(name), if standby.is_running() => {
                release_freed_memory();
            }
            done = async { look.as_mut().expect("a look in progress").await }, if look.is_some() => {
                look = None;
                let (reloader, outcome) = done.context("the daemon's policy reload panicked")?;
                release_freed_memory();
                retry_look = outcome == watch::Outcome::Deferred;
                if let Some(files) = files.as_mut() {
                    files.reloader = Some(reloader);
                    // The files may live in other directories now (a
                    // ConfigMap update, a symlink changed).
                    if let Err(e) = files.refresh_dirs() {
                        say_err!("fw: {name}: {e:#}");
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
                    // `fw stop` removed the phases compiled ahead; one
                    // compile in progress would write some again.
                    ahead.abandon(name).await;
                    standby.abandon().await;
                    return Ok(());
                }
                ahead.start_if_due(name, &housekeeping.state);
                standby.start_if_due(name, &housekeeping.state, ahead.compiled_for());
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
    /// The generation and phase enforced.
    generation: u32,
    phase: String,
}

/// A change of what the instance enforces, noticed in the state file.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// A switch took effect: to (generation, phase), from (generation,
    /// phase); `Some(deadline)` when it awaits `fw confirm`.
    Switched { to: (u32, String), from: (u32, String), confirm_by: Option<u64> },
    /// A switch awaiting confirmation was confirmed.
    Confirmed { generation: u32, phase: String },
    /// Back to (generation, phase): a switch was rolled back.
    RolledBack { to: (u32, String), from: (u32, String) },
}

impl Change {
    /// What is new, from the state read before and the one read now.
    fn between(before: &InstanceState, now: &InstanceState) -> Option<Change> {
        let (b, n) = (&before.enforced, &now.enforced);
        let to = (n.generation, n.phase.clone());
        let from = (b.generation, b.phase.clone());
        if b.generation != n.generation {
            let back = before.pending.as_ref().is_some_and(|p| p.previous.generation == n.generation);
            return Some(if back {
                Change::RolledBack { to, from }
            } else {
                Change::Switched { to, from, confirm_by: now.pending.as_ref().map(|p| p.deadline) }
            });
        }
        (before.pending.is_some() && now.pending.is_none())
            .then(|| Change::Confirmed { generation: n.generation, phase: n.phase.clone() })
    }

    fn line(&self) -> String {
        match self {
            Change::Switched { to, from, confirm_by: Some(deadline) } => format!(
                "switched to phase {} (generation {}) from phase {} (generation {}); rolls back at {} (unix time) unless `fw confirm`",
                to.1, to.0, from.1, from.0, deadline
            ),
            Change::Switched { to, from, confirm_by: None } => {
                format!("switched to phase {} (generation {}) from phase {} (generation {})", to.1, to.0, from.1, from.0)
            }
            Change::Confirmed { generation, phase } => {
                format!("the switch to phase {phase} (generation {generation}) is confirmed")
            }
            Change::RolledBack { to, from } => format!(
                "rolled back to phase {} (generation {}) from phase {} (generation {})",
                to.1, to.0, from.1, from.0
            ),
        }
    }
}

struct Housekeeping {
    name: String,
    iface: String,
    interval: Duration,
    counters: CounterMaps,
    /// The deny rules of the enforced policy: the summary names them.
    deny_rules: Vec<RuleInfo>,
    last: Snapshot,
    /// When the current summary window started, and the generations (and
    /// phases) active in it, by phase slot: the kernel counts the packets
    /// judged under each slot apart, so a window that spans a switch
    /// reports each generation's drops as its own.
    window_started: Instant,
    window: [Vec<(u32, String)>; 2],
    /// When the route maps are to be refreshed: at start, after a route or
    /// address notification, after a failure. `None`: they are fresh.
    routes_due: Option<Instant>,
    /// When the maps were last counted for the metrics.
    last_census: Option<Instant>,
    seen: Seen,
    /// The state as last read, to tell what changed.
    state: InstanceState,
    /// The generation this daemon rolled back to (it says so itself).
    rolled_back_to: Option<u32>,
    /// No collection before this (after one failed: retried once a minute,
    /// not every second).
    collect_after: Option<Instant>,
}

impl Housekeeping {
    fn new(name: &str, state: &InstanceState, interval: Duration) -> Result<Self> {
        let counters = CounterMaps::open(name)?;
        let deny_rules = deny_rules(&state.enforced.rules);
        let last = Snapshot::read(&counters, &deny_rules)?;
        let e = &state.enforced;
        let mut window: [Vec<(u32, String)>; 2] = Default::default();
        window[(e.generation & 1) as usize].push((e.generation, e.phase.clone()));
        Ok(Self {
            name: name.to_string(),
            iface: state.iface.clone(),
            interval,
            counters,
            deny_rules,
            last,
            window_started: Instant::now(),
            window,
            routes_due: Some(Instant::now()),
            last_census: None,
            seen: Seen {
                stamp: None,
                pending_deadline: None,
                switching: false,
                generation: e.generation,
                phase: e.phase.clone(),
            },
            state: state.clone(),
            rolled_back_to: None,
            collect_after: None,
        })
    }

    /// One second's work. Returns true when the instance is gone.
    fn tick(&mut self) -> bool {
        let name = self.name.clone();
        if !paths::pin_dir(&name).exists() {
            self.summary("until it was stopped");
            say!("fw: {name}: the instance was stopped (`fw stop`)");
            return true;
        }
        match self.reread_state() {
            Ok(Some(change)) => self.changed(change),
            Ok(None) => {}
            Err(e) => say_err!("fw: {name}: reading the state: {e:#}"),
        }
        let now = crate::unix_now();
        if self.seen.switching || self.seen.pending_deadline.is_some_and(|d| now >= d) {
            match instance::rollback_if_due(&name, now) {
                Ok((back, notes)) => {
                    for note in notes {
                        say!("fw: {name}: {note}");
                    }
                    if let Some(back) = back {
                        say!(
                            "fw: {name}: the switch was not confirmed in time: rolled back to phase {} (generation {})",
                            back.phase,
                            back.generation
                        );
                        self.rolled_back_to = Some(back.generation);
                        // Noticed now rather than at the next tick.
                        match self.reread_state() {
                            Ok(Some(change)) => self.changed(change),
                            Ok(None) => {}
                            Err(e) => say_err!("fw: {name}: reading the state: {e:#}"),
                        }
                    }
                }
                Err(e) => say_err!("fw: {name}: rollback failed: {e:#}"),
            }
        }
        if !self.state.collected && self.collect_after.is_none_or(|t| Instant::now() >= t) {
            self.collect();
        }
        if self.routes_due.is_some_and(|due| Instant::now() >= due) {
            self.routes_due = None;
            if let Err(e) = loader::RouteMaps::open(&name).and_then(|mut m| m.refresh(&self.iface)) {
                say_err!("fw: {name}: refreshing the routes the kernel programs use: {e:#}");
                self.routes_due = Some(Instant::now() + ROUTES_RETRY);
            }
        }
        if self.window_started.elapsed() >= self.interval {
            self.summary("");
        }
        if metrics::enabled() && self.last_census.is_none_or(|t| t.elapsed() >= metrics::CENSUS_INTERVAL) {
            self.last_census = Some(Instant::now());
            if let Err(e) = metrics::refresh_census(&name) {
                say_err!("fw: {name}: counting the maps for the metrics: {e:#}");
            }
        }
        false
    }

    /// Deletes the generations no packet is judged by any more: what a
    /// switch left behind when it returned early (`fw switch` with this
    /// daemon running, a reload by the policy watch), or what an
    /// interrupted command left. The reconcile every command starts with,
    /// under the instance lock.
    fn collect(&mut self) {
        let name = self.name.clone();
        match instance::reconcile(&name) {
            Ok((_, notes)) => {
                self.collect_after = None;
                for note in notes {
                    say!("fw: {name}: {note}");
                }
                release_freed_memory();
            }
            Err(e) => {
                self.collect_after = Some(Instant::now() + Duration::from_secs(60));
                say_err!("fw: {name}: deleting unused generations (retried in a minute): {e:#}");
            }
        }
        match self.reread_state() {
            Ok(Some(change)) => self.changed(change),
            Ok(None) => {}
            Err(e) => say_err!("fw: {name}: reading the state: {e:#}"),
        }
    }

    /// Logs a change and closes the summary window at it, so that the
    /// drops before and after it are reported apart.
    fn changed(&mut self, change: Change) {
        let name = self.name.clone();
        let said_already = matches!(&change, Change::RolledBack { to, .. } if self.rolled_back_to == Some(to.0));
        if !said_already {
            say!("fw: {name}: {}", change.line());
        }
        self.rolled_back_to = None;
        if let Change::Switched { to, .. } | Change::RolledBack { to, .. } = &change {
            // The new generation joins the window first: packets it judged
            // before this was noticed are already counted under its slot.
            self.window[(to.0 & 1) as usize].push(to.clone());
            self.summary(" up to the switch");
            // The rules (and their ids) are the new generation's now.
            let deny = deny_rules(&self.state.enforced.rules);
            if deny != self.deny_rules {
                self.deny_rules = deny;
                match Snapshot::read(&self.counters, &self.deny_rules) {
                    Ok(now) => self.last = now,
                    Err(e) => say_err!("fw: {name}: reading the counters: {e:#}"),
                }
            }
        }
    }

    /// Prints the drops of the window that ends now, per generation when
    /// it spans more than one, and starts the next window.
    fn summary(&mut self, until: &str) {
        let name = self.name.clone();
        let secs = self.window_started.elapsed().as_secs();
        let now = match self.read_counters() {
            Ok(now) => now,
            Err(e) => {
                say_err!("fw: {name}: reading the counters: {e:#}");
                return;
            }
        };
        let delta = now.since(&self.last);
        let label = |gens: &[(u32, String)]| {
            gens.iter().map(|(g, p)| format!("phase {p} (generation {g})")).collect::<Vec<_>>().join(" then ")
        };
        let slots: Vec<usize> = (0..2).filter(|&s| !self.window[s].is_empty()).collect();
        if slots.len() <= 1 {
            let which = slots.first().map(|&s| label(&self.window[s])).unwrap_or_default();
            say!("fw: {name}: last {secs}s{until}, {which}: {}", delta.drop_line());
        } else {
            // Older generation first.
            let mut ordered = slots.clone();
            ordered.sort_by_key(|&s| self.window[s].first().map(|(g, _)| *g));
            for s in ordered {
                let drops = delta.slot_drops(s).unwrap_or_else(|| "no drops".to_string());
                say!("fw: {name}: last {secs}s{until}, {}: {drops}", label(&self.window[s]));
            }
        }
        self.last = now;
        self.window_started = Instant::now();
        let current = (self.seen.generation, self.seen.phase.clone());
        self.window = Default::default();
        self.window[(current.0 & 1) as usize].push(current);
    }

    /// The counters now. The deny rules' counters (one read each: 10,000
    /// reads for a 100,000-rule policy, every summary) are read only when
    /// some packet was judged since the last read: an idle daemon's cost
    /// does not grow with the policy. A rule counted between the two reads
    /// of an earlier summary shows in the next window with traffic.
    fn read_counters(&mut self) -> Result<Snapshot> {
        let reasons = Snapshot::read_reasons(&self.counters)?;
        if reasons == self.last.reasons {
            // Moved, not copied: `self.last` is replaced by the result.
            return Ok(Snapshot { reasons, rules: std::mem::take(&mut self.last.rules) });
        }
        Ok(Snapshot { reasons, rules: Snapshot::read_rules(&self.counters, &self.deny_rules)? })
    }

    /// Re-reads the state file when it changed since the last read; what
    /// changed in what it enforces, if anything.
    fn reread_state(&mut self) -> Result<Option<Change>> {
        let meta = fs::metadata(paths::state_file(&self.name)).context("the state file")?;
        let stamp = Some((meta.modified()?, meta.len()));
        if stamp == self.seen.stamp {
            return Ok(None);
        }
        let state = instance::load_state(&self.name)?;
        self.seen = Seen {
            stamp,
            pending_deadline: state.pending.as_ref().map(|p| p.deadline),
            switching: state.switching.is_some(),
            generation: state.enforced.generation,
            phase: state.enforced.phase.clone(),
        };
        let change = Change::between(&self.state, &state);
        self.state = state;
        Ok(change)
    }
}

/// Returns the heap's free pages to the kernel: glibc keeps what a large
/// compile freed (musl returns it by itself).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn deny_rules(rules: &[RuleInfo]) -> Vec<RuleInfo> {
    rules.iter().filter(|r| r.action == fw_common::Action::Deny).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::state::{Enforced, PendingConfirm};

    fn state(generation: u32, phase: &str, pending_from: Option<(u32, &str)>) -> InstanceState {
        let enforced = |generation: u32, phase: &str| Enforced {
            policy: "p.yaml".into(),
            policy_name: "p".into(),
            env_file: None,
            phase: phase.into(),
            generation,
            audit: false,
            rules: Vec::new(),
        };
        let mut s: InstanceState = serde_json::from_value(serde_json::json!({
            "name": "x", "iface": "veth-test", "ifindex": 2, "attach_mode": {"mode": "tcx"}, "audit_override": false,
            "started_at": 0, "policy": "p.yaml", "policy_name": "p", "env_file": null, "phase": phase,
            "generation": generation, "audit": false, "rules": [], "pending": null,
        }))
        .expect("a state");
        s.enforced = enforced(generation, phase);
        s.pending = pending_from.map(|(g, p)| PendingConfirm { deadline: 1000, previous: enforced(g, p) });
        s
    }

    /// Issue 12, finding 7: switches, confirms and rollbacks never reached
    /// the daemon's log. What changed is told from two states.
    #[test]
    fn finding7_switches_confirms_and_rollbacks_are_told_apart() {
        let install = state(1, "install", None);
        let switched = state(2, "runtime", Some((1, "install")));
        let confirmed = state(2, "runtime", None);
        let change = Change::between(&install, &switched).expect("a switch");
        assert_eq!(
            change.line(),
            "switched to phase runtime (generation 2) from phase install (generation 1); rolls back at 1000 (unix time) unless `fw confirm`"
        );
        let change = Change::between(&switched, &confirmed).expect("a confirm");
        assert_eq!(change.line(), "the switch to phase runtime (generation 2) is confirmed");
        let back = state(1, "install", None);
        let change = Change::between(&switched, &back).expect("a rollback");
        assert_eq!(change.line(), "rolled back to phase install (generation 1) from phase runtime (generation 2)");
        assert_eq!(Change::between(&confirmed, &confirmed), None);
        let plain = Change::between(&confirmed, &state(3, "install", None)).expect("a switch");
        assert_eq!(plain.line(), "switched to phase install (generation 3) from phase runtime (generation 2)");
    }
}
