//! Drop events in userspace: decoding the kernel's `DropEvent` records
//! ([`decode`]), naming who sent them ([`cgroups`]), keeping the recent ones
//! ([`log`]) and reading them off the `FW_EVENTS` ring buffer ([`reader`]).
//!
//! The daemon keeps events; `fw drops --follow/--since` fetch them over the
//! control socket; `fw learn` turns them into a policy.

pub mod cgroups;
pub mod log;
pub mod reader;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fw_common::{
    event::{DropEvent, EVENT_AUDIT, EVENT_FROM_SOCKET, EVENT_VERSION},
    Direction, Reason,
};
use serde::{Deserialize, Serialize};

use crate::{policy::compile::tables::RuleInfo, policy::protocols::protocol_name};

pub use self::{
    cgroups::{Container, Resolver},
    log::{EventLog, SharedLog},
};

/// Why a record from the ring buffer could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("drop event of {0} bytes, expected {expected}", expected = std::mem::size_of::<DropEvent>())]
    Size(usize),
    /// A kernel object newer (or older) than this binary: refuse rather than
    /// misread its fields (Cilium's `DropNotifyVersion` check).
    #[error("drop event version {0}, this fw understands version {EVENT_VERSION}")]
    Version(u8),
    #[error("drop event with unknown reason {0}")]
    Reason(u8),
}

/// Checks and copies one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<DropEvent, DecodeError> {
    if bytes.len() != std::mem::size_of::<DropEvent>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length is checked; DropEvent is repr(C) plain data for
    // which every bit pattern is valid; read_unaligned copes with any
    // alignment of the ring buffer slice.
    let event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DropEvent>()) };
    if event.version != EVENT_VERSION {
        return Err(DecodeError::Version(event.version));
    }
    if Reason::from_u8(event.reason).is_none() {
        return Err(DecodeError::Reason(event.reason));
    }
    Ok(event)
}

/// A decoded event, as the daemon keeps it and `fw drops --json` prints it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Position in the daemon's log, from 1; restarts with the daemon.
    pub seq: u64,
    /// Unix time in seconds (millisecond precision).
    pub time: f64,
    pub reason: EventReason,
    pub direction: Direction,
    /// The packet was passed (audit mode): a would-drop.
    pub audit: bool,
    pub source: EventSource,
    pub rule_id: Option<u32>,
    pub rule: Option<String>,
    /// The protocol number, written by its policy-language name (`tcp`,
    /// `icmpv6`; a number for others).
    #[serde(with = "proto_name")]
    pub proto: u8,
    /// Source address and port; absent for socket events (not bound yet).
    pub src: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst: IpAddr,
    /// Destination port; ICMP: `type << 8 | code`.
    pub dst_port: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    /// The cgroup's path under the cgroup v2 mount, when it still exists.
    pub cgroup: Option<String>,
    pub container: Option<Container>,
    /// The name a refused DNS query asked for ([`DNS_REFUSED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
}

/// The reason of a query the DNS proxy refused (`queries: policy` and a
/// name no rule mentions): not a kernel [`Reason`], the daemon's own.
pub const DNS_REFUSED: &str = "dns_refused";

/// Why an event was logged: a kernel reason, or the DNS proxy's refusal.
/// Written by name (`drop_default`, `dns_refused`), as before it was an
/// enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventReason {
    Kernel(Reason),
    DnsRefused,
}

impl EventReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::Kernel(reason) => reason.as_str(),
            EventReason::DnsRefused => DNS_REFUSED,
        }
    }

    pub fn from_name(name: &str) -> Option<EventReason> {
        if name == DNS_REFUSED {
            return Some(EventReason::DnsRefused);
        }
        Reason::from_name(name).map(EventReason::Kernel)
    }
}

impl std::fmt::Display for EventReason {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for EventReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<EventReason, D::Error> {
        let name = String::deserialize(d)?;
        EventReason::from_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown event reason {name:?}")))
    }
}

/// What judged the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSource {
    /// A connect()/sendmsg() the cgroup hook judged (nothing was sent).
    Socket,
    /// A packet the TC program judged.
    Packet,
    /// A query the DNS proxy refused.
    Dns,
}

/// Serde for a protocol number by its policy-language name.
mod proto_name {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::policy::protocols::{protocol_name, protocol_number};

    pub fn serialize<S: Serializer>(proto: &u8, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&protocol_name(*proto))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let name = String::deserialize(d)?;
        protocol_number(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown protocol {name:?}")))
    }
}

/// What a decoded record needs from its surroundings to become an [`Event`].
pub struct Context<'a> {
    pub seq: u64,
    pub time: f64,
    pub rules: &'a [RuleInfo],
    pub resolver: &'a mut Resolver,
}

impl Event {
    pub fn new(raw: &DropEvent, cx: Context<'_>) -> Event {
        let family = raw.family;
        let addr = |bytes: &[u8; 16]| -> IpAddr {
            if family == 6 {
                Ipv6Addr::from(*bytes).into()
            } else {
                Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
            }
        };
        let from_socket = raw.flags & EVENT_FROM_SOCKET != 0;
        let rule_id = (raw.rule != u32::MAX).then_some(raw.rule);
        let comm_len = raw.comm.iter().position(|&b| b == 0).unwrap_or(raw.comm.len());
        let comm = String::from_utf8_lossy(&raw.comm[..comm_len]).into_owned();
        let cgroup_id = (raw.cgroup_id != 0).then_some(raw.cgroup_id);
        let cgroup = cgroup_id.and_then(|id| cx.resolver.path(id));
        let container = cgroup.as_deref().and_then(|p| cx.resolver.container(p));
        Event {
            seq: cx.seq,
            time: cx.time,
            // Checked by `decode`.
            // `decode` refused unknown reasons.
            reason: EventReason::Kernel(Reason::from_u8(raw.reason).unwrap_or(Reason::DropDefault)),
            direction: if raw.direction == Direction::Inbound as u8 { Direction::Inbound } else { Direction::Egress },
            audit: raw.flags & EVENT_AUDIT != 0,
            source: if from_socket { EventSource::Socket } else { EventSource::Packet },
            rule_id,
            rule: rule_id.and_then(|id| cx.rules.iter().find(|r| r.id == id)).map(|r| r.name.clone()),
            proto: raw.proto,
            src: (!from_socket).then(|| addr(&raw.src)),
            src_port: (!from_socket).then_some(raw.src_port),
            dst: addr(&raw.dst),
            dst_port: raw.dst_port,
            pid: (raw.pid != 0).then_some(raw.pid),
            comm: (!comm.is_empty()).then_some(comm),
            cgroup_id,
            cgroup,
            container,
            dns_name: None,
        }
    }

    /// A query for `name` to `resolver` that the DNS proxy refused. Who
    /// asked is not known here (the query came through loopback).
    pub fn dns_refused(seq: u64, time: f64, resolver: IpAddr, tcp: bool, name: &str) -> Event {
        Event {
            seq,
            time,
            reason: EventReason::DnsRefused,
            direction: Direction::Egress,
            audit: false,
            source: EventSource::Dns,
            rule_id: None,
            rule: None,
            proto: if tcp { fw_common::policy::proto::TCP } else { fw_common::policy::proto::UDP },
            src: None,
            src_port: None,
            dst: resolver,
            dst_port: fw_common::names::DNS_PORT,
            pid: None,
            comm: None,
            cgroup_id: None,
            cgroup: None,
            container: None,
            dns_name: Some(name.to_string()),
        }
    }

    /// One line in Cilium's monitor style:
    /// `drop (drop_default) rule - proc nginx[812] (container web-1) 198.18.0.5:51514 -> 203.0.113.9:443/tcp`.
    pub fn line(&self) -> String {
        let verdict = if self.audit { "would-drop" } else { "drop" };
        let rule = self.rule.as_deref().unwrap_or("-");
        let mut who = match (&self.comm, self.pid) {
            (Some(comm), Some(pid)) => format!("proc {comm}[{pid}]"),
            (None, Some(pid)) => format!("proc [{pid}]"),
            _ => "proc -".to_string(),
        };
        if let Some(c) = &self.container {
            who.push_str(&format!(" ({})", c.label()));
        } else if let Some(cgroup) = &self.cgroup {
            who.push_str(&format!(" (cgroup {cgroup})"));
        }
        let from = match (self.src, self.src_port) {
            (Some(addr), Some(port)) => format!("{} ", endpoint(addr, port)),
            _ => String::new(),
        };
        let asked = self.dns_name.as_ref().map_or_else(String::new, |n| format!(" query {n}"));
        format!(
            "{verdict} ({}) rule {rule} {who} {from}-> {}/{}{asked}",
            self.reason,
            endpoint(self.dst, self.dst_port),
            protocol_name(self.proto)
        )
    }
}

/// `1.2.3.4:443` or `[2001:db8::1]:443`.
fn endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> DropEvent {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[203, 0, 113, 9]);
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[198, 18, 0, 5]);
        DropEvent {
            version: EVENT_VERSION,
            direction: Direction::Egress as u8,
            reason: Reason::DropDefault as u8,
            family: 4,
            proto: 6,
            rule: u32::MAX,
            pid: 812,
            src_port: 51514,
            dst_port: 443,
            src,
            dst,
            comm,
            ..DropEvent::default()
        }
    }

    fn bytes(e: &DropEvent) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts((e as *const DropEvent).cast::<u8>(), std::mem::size_of::<DropEvent>()) }
            .to_vec()
    }

    /// The enums are written by the names `fw drops --json` has always
    /// printed, and read back as the same event.
    #[test]
    fn events_are_written_by_name_and_read_back() {
        let refused = Event::dns_refused(3, 1.5, "198.18.0.53".parse().unwrap(), true, "x.example");
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(
            (&json["reason"], &json["direction"], &json["source"], &json["proto"]),
            (&"dns_refused".into(), &"egress".into(), &"dns".into(), &"tcp".into())
        );
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), refused);
        let icmp6 = Event { reason: EventReason::Kernel(Reason::DropRule), proto: 58, ..refused.clone() };
        let json = serde_json::to_value(&icmp6).unwrap();
        assert_eq!((&json["reason"], &json["proto"]), (&"drop_rule".into(), &"icmpv6".into()));
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), icmp6);
        let odd = Event { proto: 47, ..refused };
        assert_eq!(serde_json::to_value(&odd).unwrap()["proto"], "47");
        assert!(serde_json::from_str::<EventReason>("\"drop_sideways\"").is_err());
    }

    #[test]
    fn decoding_refuses_unknown_versions_sizes_and_reasons() {
        let good = raw();
        assert_eq!(decode(&bytes(&good)), Ok(good));
        assert_eq!(decode(&bytes(&good)[..40]), Err(DecodeError::Size(40)));
        let newer = DropEvent { version: EVENT_VERSION + 1, ..good };
        assert_eq!(decode(&bytes(&newer)), Err(DecodeError::Version(EVENT_VERSION + 1)));
        let odd = DropEvent { reason: 200, ..good };
        assert_eq!(decode(&bytes(&odd)), Err(DecodeError::Reason(200)));
    }

    #[test]
    fn an_event_prints_as_one_cilium_style_line() {
        let mut resolver = Resolver::empty();
        let event = Event::new(&raw(), Context { seq: 1, time: 0.0, rules: &[], resolver: &mut resolver });
        assert_eq!(event.line(), "drop (drop_default) rule - proc nginx[812] 198.18.0.5:51514 -> 203.0.113.9:443/tcp");
        let socket = DropEvent { flags: EVENT_FROM_SOCKET, reason: Reason::DropSocket as u8, ..raw() };
        let event = Event::new(&socket, Context { seq: 2, time: 0.0, rules: &[], resolver: &mut resolver });
        assert_eq!(event.line(), "drop (drop_socket) rule - proc nginx[812] -> 203.0.113.9:443/tcp");
        assert_eq!((event.src, event.src_port), (None, None));
    }
}
