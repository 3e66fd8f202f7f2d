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
    pub reason: String,
    pub direction: String,
    /// The packet was passed (audit mode): a would-drop.
    pub audit: bool,
    /// `socket`: a connect()/sendmsg() the cgroup hook judged (nothing was
    /// sent); `packet`: a packet the TC program judged.
    pub source: String,
    pub rule_id: Option<u32>,
    pub rule: Option<String>,
    pub proto: String,
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
            reason: Reason::from_u8(raw.reason).map_or("unknown", Reason::as_str).to_string(),
            direction: if raw.direction == Direction::Inbound as u8 { "inbound" } else { "egress" }.to_string(),
            audit: raw.flags & EVENT_AUDIT != 0,
            source: if from_socket { "socket" } else { "packet" }.to_string(),
            rule_id,
            rule: rule_id.and_then(|id| cx.rules.iter().find(|r| r.id == id)).map(|r| r.name.clone()),
            proto: protocol_name(raw.proto),
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
            reason: DNS_REFUSED.to_string(),
            direction: "egress".to_string(),
            audit: false,
            source: "dns".to_string(),
            rule_id: None,
            rule: None,
            proto: if tcp { "tcp" } else { "udp" }.to_string(),
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
            self.proto
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
