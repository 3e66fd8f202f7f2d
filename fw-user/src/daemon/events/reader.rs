//! Reading `FW_EVENTS`, the pinned ring buffer of an instance, from tokio:
//! the ring buffer's fd becomes readable when the kernel submits records
//! (`AsyncFd`), and each record is decoded, named and handed to a [`Sink`].

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};

use super::{decode, Context, DecodeError, Event, Resolver, SharedLog};
use crate::{instance, instance::paths, policy::compile::tables::RuleInfo};

/// How often rule names are re-read from the instance state (a switch may
/// have changed the policy).
const RULES_REFRESH: Duration = Duration::from_secs(1);

/// Where decoded events go: the daemon's log, or `fw learn`'s tally.
pub trait Sink {
    /// The sequence number the next event gets.
    fn next_seq(&mut self) -> u64;
    fn push(&mut self, event: Event);
    /// [`Sink::push`] with the kernel's timestamp of the event
    /// (`bpf_ktime_get_coarse_ns`), for a sink that orders events against
    /// something else seen on that clock (`fw learn`: DNS answers).
    fn push_at(&mut self, event: Event, _time_ns: u64) {
        self.push(event);
    }
    fn undecodable(&mut self, error: DecodeError);
}

impl Sink for SharedLog {
    fn next_seq(&mut self) -> u64 {
        self.lock().expect("event log lock").next_seq()
    }

    fn push(&mut self, event: Event) {
        self.lock().expect("event log lock").push(event);
    }

    fn undecodable(&mut self, _error: DecodeError) {
        self.lock().expect("event log lock").count_undecodable();
    }
}

pub struct EventReader {
    name: String,
    ring: AsyncFd<RingBuf<MapData>>,
    resolver: Resolver,
    rules: Vec<RuleInfo>,
    rules_read: Option<Instant>,
}

impl EventReader {
    /// Opens the ring buffer of instance `name` from its pin. Must run
    /// inside a tokio runtime.
    pub fn open(name: &str) -> Result<EventReader> {
        let path = paths::map_pin(name, fw_common::maps::EVENTS);
        let map = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        let ring = RingBuf::try_from(Map::RingBuf(map)).context("FW_EVENTS is not a ring buffer")?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd that owns the RingBuf lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.context("polling FW_EVENTS")?;
        Ok(EventReader { name: name.to_string(), ring, resolver: Resolver::new(), rules: Vec::new(), rules_read: None })
    }

    /// Waits for records, then hands every available one to `sink`.
    pub async fn next_batch(&mut self, sink: &mut impl Sink) -> Result<()> {
        let mut guard = self.ring.readable_mut().await.context("waiting on FW_EVENTS")?;
        // Clear readiness first: a record submitted while we drain wakes us again.
        guard.clear_ready();
        drop(guard);
        self.drain(sink);
        Ok(())
    }

    /// Hands every record available now to `sink`, without waiting.
    pub fn drain(&mut self, sink: &mut impl Sink) {
        if self.rules_read.is_none_or(|t| t.elapsed() >= RULES_REFRESH) {
            self.rules_read = Some(Instant::now());
            if let Ok(state) = instance::load_state(&self.name) {
                self.rules = state.enforced.rules;
            }
        }
        let clock = Clock::now();
        let ring = self.ring.get_mut();
        while let Some(record) = ring.next() {
            match decode(&record) {
                Ok(raw) => {
                    let seq = sink.next_seq();
                    let time = clock.wall(raw.time_ns);
                    let cx = Context { seq, time, rules: &self.rules, resolver: &mut self.resolver };
                    sink.push_at(Event::new(&raw, cx), raw.time_ns);
                }
                Err(e) => sink.undecodable(e),
            }
        }
    }
}

/// Events carry `bpf_ktime_get_ns` (CLOCK_MONOTONIC); this converts them to
/// wall-clock time with one reading of both clocks per batch.
struct Clock {
    mono_ns: u64,
    wall: f64,
}

impl Clock {
    fn now() -> Clock {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let wall = crate::unix_time().as_secs_f64();
        Clock { mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64, wall }
    }

    /// Unix seconds, rounded to the millisecond.
    fn wall(&self, mono_ns: u64) -> f64 {
        let age = self.mono_ns.saturating_sub(mono_ns) as f64 / 1e9;
        ((self.wall - age) * 1000.0).round() / 1000.0
    }
}

/// The daemon's reader: events into `log` until the runtime stops. A reader
/// that cannot start says so once; enforcement does not depend on it.
pub async fn run(name: String, mut log: SharedLog) {
    let mut reader = match EventReader::open(&name) {
        Ok(r) => r,
        Err(e) => {
            say_err!("fw: {name}: drop events unavailable: {e:#}");
            return;
        }
    };
    loop {
        if let Err(e) = reader.next_batch(&mut log).await {
            say_err!("fw: {name}: reading drop events stopped: {e:#}");
            return;
        }
    }
}
