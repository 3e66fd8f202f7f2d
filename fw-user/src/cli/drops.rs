use std::{collections::VecDeque, io::IsTerminal as _, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{
    duration,
    target::{require_root, resolve_name},
};
use crate::{
    daemon::control::{self, EventQuery},
    daemon::events::Event,
    instance,
    instance::paths,
    instance::state::InstanceState,
    kernel::counters::{RuleCount, Snapshot},
    kernel::loader::CounterMaps,
};

/// Event lines kept on screen under the table by `--follow` on a terminal.
const SCREEN_EVENTS: usize = 20;

/// Packet counters of an instance, per drop reason and per rule (allow
/// rules show what they matched), with the change since the last call;
/// with --follow or --since, the drop events too (one line each: verdict,
/// reason, rule, process, container, source -> destination/protocol).
#[derive(Args, Debug)]
pub struct DropsArgs {
    /// Instance name (default: $FW_NAME, else the only running instance).
    #[arg(long)]
    pub name: Option<String>,
    /// One JSON object instead of a table; with --follow, one JSON object
    /// per drop event, one per line.
    #[arg(long)]
    pub json: bool,
    /// Also list reasons and rules whose counters are zero.
    #[arg(long)]
    pub all: bool,
    /// Refresh the counters every second and stream new drop events until
    /// interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Also show the drop events the daemon kept from this long ago on
    /// (30s, 10m, 2h...; at most 365d).
    #[arg(long, value_parser = duration::parse)]
    pub since: Option<Duration>,
}

#[derive(Serialize)]
struct DropsReport<'a> {
    name: &'a str,
    policy_name: &'a str,
    phase: &'a str,
    dropped: u64,
    #[serde(flatten)]
    counters: &'a Snapshot,
    /// The change since the previous `fw drops` (or since start).
    delta: &'a Snapshot,
    /// With --since: the events the daemon kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [Event]>,
}

pub fn drops(args: DropsArgs) -> Result<ExitCode> {
    require_root("fw drops")?;
    let name = resolve_name(args.name.clone())?;
    let mut events = (args.follow || args.since.is_some()).then(|| EventCursor::new(args.since));
    let mut screen: VecDeque<String> = VecDeque::new();
    let clear_screen = args.follow && !args.json && std::io::stdout().is_terminal();
    loop {
        let state = instance::load_state(&name)?;
        let snapshot = Snapshot::read(&CounterMaps::open(&name)?, &state.enforced.rules)?;
        let previous = load_previous(&name, &snapshot);
        let delta = snapshot.since(&previous);
        save_previous(&name, &snapshot);
        let new_events = match events.as_mut() {
            Some(cursor) => cursor.fetch(&name, args.json)?,
            None => Vec::new(),
        };
        if args.json && args.follow {
            for event in &new_events {
                println!("{}", serde_json::to_string(event)?);
            }
        } else {
            if clear_screen {
                // Home and clear: the table stays on top, events below it.
                print!("\x1b[H\x1b[2J");
            }
            let kept = (!args.follow).then_some(new_events.as_slice());
            print_report(&args, &name, &state, &snapshot, &delta, kept)?;
            if !args.json {
                if let Some(note) = events.as_ref().and_then(|c| c.note.as_deref()) {
                    println!("{note}");
                }
                let lines = new_events.iter().map(Event::line);
                if clear_screen {
                    screen.extend(lines);
                    while screen.len() > SCREEN_EVENTS {
                        screen.pop_front();
                    }
                    screen.iter().for_each(|l| println!("{l}"));
                } else {
                    lines.for_each(|l| println!("{l}"));
                }
            }
        }
        if !args.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Where the next request for events starts.
struct EventCursor {
    since: Option<Duration>,
    /// `next_seq` of the last reply; `None` before the first one.
    next_seq: Option<u64>,
    /// Set while no daemon answers: said once under the table.
    note: Option<String>,
}

impl EventCursor {
    fn new(since: Option<Duration>) -> Self {
        Self { since, next_seq: None, note: None }
    }

    /// The events that are new since the last call (the first call: those
    /// of the --since window, or none). Without a daemon: none, and a note.
    fn fetch(&mut self, name: &str, json: bool) -> Result<Vec<Event>> {
        let query = match self.next_seq {
            Some(seq) => EventQuery { since_seq: Some(seq), since_secs: None },
            // From now on, unless a window was asked for.
            None => EventQuery { since_seq: None, since_secs: Some(self.since.map_or(0, |d| d.as_secs())) },
        };
        let Some(batch) = control::events(name, query)? else {
            if self.note.is_none() {
                let note =
                    format!("no fw daemon runs instance {name}: no drop events (counters only; `fw run` keeps them)");
                if json {
                    eprintln!("fw: {note}");
                }
                self.note = Some(note);
            }
            self.next_seq = None;
            return Ok(Vec::new());
        };
        self.note = None;
        let restarted = self.next_seq.is_some_and(|seq| batch.next_seq < seq);
        self.next_seq = Some(batch.next_seq);
        if restarted {
            // A new daemon counts from 1 again: take all it has.
            return Ok(control::events(name, EventQuery { since_seq: Some(0), since_secs: None })?
                .map(|b| {
                    self.next_seq = Some(b.next_seq);
                    b.events
                })
                .unwrap_or_default());
        }
        Ok(batch.events)
    }
}

/// The counters at the last call, when they are of the same rules; else
/// zeros, so the delta counts from the start.
fn load_previous(name: &str, now: &Snapshot) -> Snapshot {
    std::fs::read(paths::drops_snapshot(name))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Snapshot>(&bytes).ok())
        .filter(|prev| prev.rules.iter().map(|r| &r.name).eq(now.rules.iter().map(|r| &r.name)))
        .filter(|prev| prev.reasons.len() == now.reasons.len())
        .unwrap_or_else(|| now.zeroed())
}

fn save_previous(name: &str, snapshot: &Snapshot) {
    // Best effort: a failure only makes the next delta count from older numbers.
    if let Ok(bytes) = serde_json::to_vec(snapshot) {
        let _ = std::fs::write(paths::drops_snapshot(name), bytes);
    }
}

fn print_report(
    args: &DropsArgs,
    name: &str,
    state: &InstanceState,
    snapshot: &Snapshot,
    delta: &Snapshot,
    events: Option<&[Event]>,
) -> Result<()> {
    let e = &state.enforced;
    if args.json {
        let report = DropsReport {
            name,
            policy_name: &e.policy_name,
            phase: &e.phase,
            dropped: snapshot.dropped(),
            counters: snapshot,
            delta,
            events,
        };
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!("{name}: policy {} phase {} on {}", e.policy_name, e.phase, state.iface);
    println!("{:<9} {:<22} {:>12} {:>10} {:>14}", "DIRECTION", "REASON", "PACKETS", "+DELTA", "BYTES");
    for (r, d) in snapshot.reasons.iter().zip(&delta.reasons).filter(|(r, _)| args.all || r.packets > 0) {
        println!(
            "{:<9} {:<22} {:>12} {:>10} {:>14}",
            r.direction,
            r.reason,
            r.packets,
            format!("+{}", d.packets),
            r.bytes
        );
    }
    println!();
    println!(
        "{:<5} {:<24} {:<9} {:<6} {:>12} {:>10} {:>14}",
        "RULE", "NAME", "DIRECTION", "ACTION", "PACKETS", "+DELTA", "BYTES"
    );
    for (RuleCount { id, name, direction, action, packets, bytes }, d) in
        snapshot.rules.iter().zip(&delta.rules).filter(|(r, _)| args.all || r.packets > 0)
    {
        let plus = format!("+{}", d.packets);
        println!("{id:<5} {name:<24} {direction:<9} {action:<6} {packets:>12} {plus:>10} {bytes:>14}");
    }
    if snapshot.dropped() == 0 {
        println!("\nno drops recorded");
    }
    println!();
    Ok(())
}
