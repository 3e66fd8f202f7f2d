//! The daemon's memory of recent events: a bounded ring of the last
//! [`CAPACITY`] events, each with a sequence number, so that a client can
//! ask for "everything after the last one I saw" or "the last ten minutes".

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use super::Event;

/// Events kept; older ones are forgotten first (about 5 MB of memory).
pub const CAPACITY: usize = 10_000;

/// The log, shared by the ring buffer reader, the control socket and the
/// metrics endpoint. A std mutex: every critical section is a few copies.
pub type SharedLog = Arc<Mutex<EventLog>>;

#[derive(Debug)]
pub struct EventLog {
    capacity: usize,
    events: VecDeque<Event>,
    /// Sequence number of the next event.
    next_seq: u64,
    /// Records that were not events this fw understands.
    undecodable: u64,
}

/// A reply to a request for events.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EventBatch {
    pub events: Vec<Event>,
    /// Ask for `since_seq: next_seq` to get only newer events.
    pub next_seq: u64,
    /// Ring buffer records the daemon could not decode, since it started.
    pub undecodable: u64,
}

impl EventLog {
    pub fn new(capacity: usize) -> EventLog {
        EventLog { capacity, events: VecDeque::with_capacity(capacity.min(1024)), next_seq: 1, undecodable: 0 }
    }

    pub fn shared() -> SharedLog {
        Arc::new(Mutex::new(EventLog::new(CAPACITY)))
    }

    /// The sequence number the next pushed event must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn push(&mut self, event: Event) {
        debug_assert_eq!(event.seq, self.next_seq);
        self.next_seq = event.seq + 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn count_undecodable(&mut self) {
        self.undecodable += 1;
    }

    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Events with `seq >= since_seq` and `time >= since_time` (unix seconds).
    pub fn query(&self, since_seq: u64, since_time: f64) -> EventBatch {
        // Sequence numbers are consecutive: skip straight to the first wanted.
        let first = self.events.front().map_or(0, |e| e.seq);
        let skip = usize::try_from(since_seq.saturating_sub(first)).unwrap_or(usize::MAX);
        let events = self.events.iter().skip(skip).filter(|e| e.time >= since_time).cloned().collect();
        EventBatch { events, next_seq: self.next_seq, undecodable: self.undecodable }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::events::{EventReason, EventSource};

    fn event(seq: u64, time: f64) -> Event {
        Event {
            seq,
            time,
            reason: EventReason::Kernel(fw_common::Reason::DropDefault),
            direction: fw_common::Direction::Egress,
            audit: false,
            source: EventSource::Packet,
            rule_id: None,
            rule: None,
            proto: fw_common::policy::proto::UDP,
            src: None,
            src_port: None,
            dst: "198.18.0.1".parse().unwrap(),
            dst_port: 53,
            pid: None,
            comm: None,
            cgroup_id: None,
            cgroup: None,
            container: None,
            dns_name: None,
        }
    }

    #[test]
    fn the_log_keeps_the_last_events_and_answers_by_seq_and_time() {
        let mut log = EventLog::new(3);
        for seq in 1..=5 {
            log.push(event(seq, seq as f64 * 10.0));
        }
        let seqs = |b: EventBatch| b.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.query(0, 0.0)), [3, 4, 5]);
        assert_eq!(seqs(log.query(4, 0.0)), [4, 5]);
        assert_eq!(seqs(log.query(0, 45.0)), [5]);
        let after = log.query(6, 0.0);
        assert!(after.events.is_empty());
        assert_eq!(after.next_seq, 6);
    }
}
