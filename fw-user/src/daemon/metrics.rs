//! `fw run --metrics ADDR:PORT`: the instance's counters for Prometheus, at
//! `/metrics`, read from the pinned maps at scrape time (no copy to go
//! stale, and nothing to update on the packet path).
//!
//! Encoding: `prometheus-client`'s text encoder (OpenMetrics 1.0 text,
//! which Prometheus scrapes natively; counters get their `_total` suffix
//! from it). Serving: `tiny_http` on one thread of its own: a scrape is a
//! few map reads, and a blocking thread keeps them off the daemon's
//! single-threaded runtime.
//!
//! ```text
//! fw_packets_total{reason,direction}        fw_bytes_total{reason,direction}
//! fw_rule_packets_total{rule,direction,action}  fw_rule_bytes_total{...}
//! fw_events_total{outcome=emitted|suppressed|lost|undecodable}
//! fw_map_entries{map}  fw_map_capacity{map}
//! fw_flows_opened_total{table=flows|flows_in}
//! fw_flows_promoted_total  fw_flows_demoted_total
//! fw_phase_info{policy,phase} 1             fw_generation
//! fw_interface_up   1 while the enforcer is attached to the interface
//! fw_policy_reloads_total{outcome=ok|failed}   `fw run --watch` reloads
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use fw_common::{event::event_stats, flow::flow_stats, maps, FragKey, FragValue};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    kernel::apply,
    kernel::counters::{ReasonCount, RuleCount, Snapshot},
    daemon::events::SharedLog,
    instance,
    kernel::loader::{self, CounterMaps, PolicyMaps},
    instance::paths,
};

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `--metrics`: `PORT` (loopback), `HOST:PORT` or `[V6]:PORT`. Exposing
/// counters beyond the host is a choice the operator writes out.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?}: expected PORT, ADDR:PORT or [ADDR]:PORT (e.g. 9469, 127.0.0.1:9469)"))
}

/// A bound metrics endpoint, not serving yet.
pub struct Server {
    http: tiny_http::Server,
    addr: SocketAddr,
}

impl Server {
    pub fn bind(addr: SocketAddr) -> Result<Server> {
        let http = tiny_http::Server::http(addr).map_err(|e| anyhow!("--metrics {addr}: {e}"))?;
        let addr = http.server_addr().to_ip().unwrap_or(addr);
        Ok(Server { http, addr })
    }

    /// The address bound (the actual port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves scrapes of instance `name` on a thread until the process exits.
    pub fn spawn(self, name: String, log: SharedLog) {
        std::thread::spawn(move || {
            for request in self.http.incoming_requests() {
                let response = respond(&name, &log, request.method(), request.url());
                let _ = request.respond(response);
            }
        });
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn respond(name: &str, log: &SharedLog, method: &tiny_http::Method, url: &str) -> Response {
    let text = |body: String, status: u16, content_type: &str| {
        let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
        tiny_http::Response::from_string(body).with_status_code(status).with_header(header)
    };
    let path = url.split('?').next().unwrap_or(url);
    match (method, path) {
        (tiny_http::Method::Get, "/metrics") => match render(name, log) {
            Ok(body) => text(body, 200, CONTENT_TYPE),
            Err(e) => text(format!("reading the counters of {name}: {e:#}\n"), 500, "text/plain"),
        },
        (tiny_http::Method::Get, _) => text("fw metrics: see /metrics\n".into(), 404, "text/plain"),
        _ => text("only GET\n".into(), 405, "text/plain"),
    }
}

/// The exposition for instance `name`, read now.
pub fn render(name: &str, log: &SharedLog) -> Result<String> {
    let scrape = Scrape::read(name, log)?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).context("encoding metrics")?;
    Ok(out)
}

/// Everything one scrape reports, read from the maps up front so that the
/// encoder cannot fail half-way on a map error.
#[derive(Debug)]
struct Scrape {
    reasons: Vec<ReasonCount>,
    rules: Vec<RuleCount>,
    /// (outcome, count).
    events: Vec<(&'static str, u64)>,
    /// (map, entries, capacity).
    maps: Vec<(&'static str, u64, u64)>,
    /// (flow table, flows inserted into it).
    flows_opened: Vec<(&'static str, u64)>,
    /// Inbound TCP connections moved from probation to the protected table.
    flows_promoted: u64,
    /// Promoted connections moved back to probation when they closed.
    flows_demoted: u64,
    policy: String,
    phase: String,
    generation: u32,
    /// The enforcer is attached to the interface (read from the kernel).
    interface_up: bool,
    /// `--watch` reloads of this daemon: (applied, failed).
    reloads: (u64, u64),
}

impl Scrape {
    fn read(name: &str, log: &SharedLog) -> Result<Scrape> {
        let state = instance::load_state(name)?;
        let snapshot = Snapshot::read(&CounterMaps::open(name)?, &state.enforced.rules)?;
        let policy_maps = PolicyMaps::open(name)?;
        let generation = apply::active_generation(&policy_maps)?;
        let interface_up = loader::attached_to(name, state.attach_mode, state.ifindex, &state.iface)?;

        let stats = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(pinned(name, maps::EVENT_STATS)?))?;
        let event_sum = |index: u32| -> Result<u64> { Ok(stats.get(&index, 0)?.iter().sum()) };
        let undecodable = log.lock().expect("event log lock").undecodable();
        let events = vec![
            ("emitted", event_sum(event_stats::EMITTED)?),
            ("suppressed", event_sum(event_stats::SUPPRESSED)?),
            ("lost", event_sum(event_stats::LOST)?),
            ("undecodable", undecodable),
        ];

        let flow_stats = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(pinned(name, maps::FLOW_STATS)?))?;
        let flow_sum = |index: u32| -> Result<u64> { Ok(flow_stats.get(&index, 0)?.iter().sum()) };
        let flows_opened = vec![("flows", flow_sum(flow_stats::OPENED)?), ("flows_in", flow_sum(flow_stats::OPENED_IN)?)];
        let flows_promoted = flow_sum(flow_stats::PROMOTED)?;
        let flows_demoted = flow_sum(flow_stats::DEMOTED)?;

        let frags: HashMap<_, FragKey, FragValue> = HashMap::try_from(Map::LruHashMap(pinned(name, maps::FRAGS)?))?;
        let count = |keys: usize| keys as u64;
        // Counting walks every key (one syscall each): the cost of a scrape
        // grows with the flow tables.
        let entries = [
            ("flows", maps::FLOWS, count(policy_maps.flows.keys().filter_map(|k| k.ok()).count())),
            ("flows_in", maps::FLOWS_IN, count(policy_maps.flows_in.keys().filter_map(|k| k.ok()).count())),
            ("frags", maps::FRAGS, count(frags.keys().filter_map(|k| k.ok()).count())),
            ("addr4", maps::ADDR4, count(policy_maps.addr4.keys().filter_map(|k| k.ok()).count())),
            ("addr6", maps::ADDR6, count(policy_maps.addr6.keys().filter_map(|k| k.ok()).count())),
            ("ports", maps::PORTS, count(policy_maps.ports.keys().filter_map(|k| k.ok()).count())),
        ];
        let mut fill = Vec::new();
        for (label, map, n) in entries {
            let capacity = pinned(name, map)?.info()?.max_entries();
            fill.push((label, n, u64::from(capacity)));
        }
        Ok(Scrape {
            reasons: snapshot.reasons,
            rules: snapshot.rules,
            events,
            maps: fill,
            flows_opened,
            flows_promoted,
            flows_demoted,
            policy: state.enforced.policy_name,
            phase: state.enforced.phase,
            generation,
            interface_up,
            reloads: crate::daemon::watch::reload_counts(),
        })
    }
}

fn pinned(name: &str, map: &str) -> Result<MapData> {
    let path = paths::map_pin(name, map);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reasons = |r: &ReasonCount| [("reason", r.reason.clone()), ("direction", r.direction.clone())];
        counter_family(&mut encoder, "fw_packets", "Packets per verdict reason and direction.", &self.reasons, reasons, |r| r.packets)?;
        counter_family(&mut encoder, "fw_bytes", "Bytes per verdict reason and direction.", &self.reasons, reasons, |r| r.bytes)?;
        let rules = |r: &RuleCount| {
            [("rule", r.name.clone()), ("direction", r.direction.clone()), ("action", r.action.clone())]
        };
        counter_family(&mut encoder, "fw_rule_packets", "Packets each policy rule decided.", &self.rules, rules, |r| r.packets)?;
        counter_family(&mut encoder, "fw_rule_bytes", "Bytes each policy rule decided.", &self.rules, rules, |r| r.bytes)?;
        counter_family(
            &mut encoder,
            "fw_events",
            "Drop events: emitted to userspace, suppressed by the per-second budget, lost (ring buffer full), undecodable.",
            &self.events,
            |(outcome, _)| [("outcome", outcome.to_string())],
            |(_, n)| *n,
        )?;
        let mut entries =
            encoder.encode_descriptor("fw_map_entries", "Entries in each BPF map (all policy generations).", None, MetricType::Gauge)?;
        for (map, n, _) in &self.maps {
            ConstGauge::new(*n as i64).encode(entries.encode_family(&[("map", *map)])?)?;
        }
        let mut capacity =
            encoder.encode_descriptor("fw_map_capacity", "Maximum entries of each BPF map.", None, MetricType::Gauge)?;
        for (map, _, cap) in &self.maps {
            ConstGauge::new(*cap as i64).encode(capacity.encode_family(&[("map", *map)])?)?;
        }
        counter_family(
            &mut encoder,
            "fw_flows_opened",
            "Flows inserted into each flow table: flows (this host opened them) and flows_in (inbound packets \
             opened them; a flood shows here). An insert into a full table evicts its least recently used entry.",
            &self.flows_opened,
            |(table, _)| [("table", table.to_string())],
            |(_, n)| *n,
        )?;
        ConstCounter::new(self.flows_promoted).encode(encoder.encode_descriptor(
            "fw_flows_promoted",
            "Inbound TCP connections moved from flows_in to flows when their handshake completed.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.flows_demoted).encode(encoder.encode_descriptor(
            "fw_flows_demoted",
            "Inbound TCP connections moved back from flows to flows_in when they closed (FIN or RST).",
            None,
            MetricType::Counter,
        )?)?;
        encoder
            .encode_descriptor("fw_phase", "The policy and phase being enforced.", None, MetricType::Info)?
            .encode_info(&[("policy", self.policy.as_str()), ("phase", self.phase.as_str())])?;
        ConstGauge::new(i64::from(self.generation)).encode(encoder.encode_descriptor(
            "fw_generation",
            "The active policy generation (changes on every switch).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(i64::from(self.interface_up)).encode(encoder.encode_descriptor(
            "fw_interface_up",
            "1 while the enforcer is attached to its interface; 0 while the interface is gone (not enforcing).",
            None,
            MetricType::Gauge,
        )?)?;
        counter_family(
            &mut encoder,
            "fw_policy_reloads",
            "Reloads of the watched policy or env file (fw run --watch): ok (switched) or failed (nothing changed).",
            &[("ok", self.reloads.0), ("failed", self.reloads.1)],
            |(outcome, _)| [("outcome", outcome.to_string())],
            |(_, n)| *n,
        )?;
        Ok(())
    }
}

/// One counter family: a sample per item, labelled by `labels`.
fn counter_family<T, const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    items: &[T],
    labels: impl Fn(&T) -> [(&'static str, String); N],
    value: impl Fn(&T) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for item in items {
        ConstCounter::new(value(item)).encode(family.encode_family(&labels(item))?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_listens_on_loopback_and_other_hosts_are_explicit() {
        assert_eq!(parse_listen("9469"), Ok("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(parse_listen("0.0.0.0:9469"), Ok("0.0.0.0:9469".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:9469"), Ok("[::1]:9469".parse().unwrap()));
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("70000").is_err());
    }

    #[test]
    fn the_exposition_has_help_type_and_labelled_samples() {
        let scrape = Scrape {
            reasons: vec![ReasonCount {
                direction: "egress".into(),
                reason: "drop_default".into(),
                drop: true,
                packets: 7,
                bytes: 700,
            }],
            rules: vec![RuleCount {
                id: 0,
                name: "dns".into(),
                direction: "egress".into(),
                action: "allow".into(),
                packets: 3,
                bytes: 300,
            }],
            events: vec![("emitted", 5), ("suppressed", 2), ("lost", 0), ("undecodable", 0)],
            maps: vec![("flows", 4, 262144), ("flows_in", 9, 65536)],
            flows_opened: vec![("flows", 10), ("flows_in", 5000)],
            flows_promoted: 2,
            flows_demoted: 1,
            policy: "openvidu-ce".into(),
            phase: "runtime".into(),
            generation: 3,
            interface_up: false,
            reloads: (4, 1),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(scrape));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for line in [
            "# TYPE fw_packets counter",
            "fw_packets_total{reason=\"drop_default\",direction=\"egress\"} 7",
            "fw_bytes_total{reason=\"drop_default\",direction=\"egress\"} 700",
            "fw_rule_packets_total{rule=\"dns\",direction=\"egress\",action=\"allow\"} 3",
            "fw_events_total{outcome=\"suppressed\"} 2",
            "fw_map_entries{map=\"flows\"} 4",
            "fw_map_capacity{map=\"flows\"} 262144",
            "fw_map_entries{map=\"flows_in\"} 9",
            "fw_map_capacity{map=\"flows_in\"} 65536",
            "fw_flows_opened_total{table=\"flows_in\"} 5000",
            "fw_flows_promoted_total 2",
            "fw_flows_demoted_total 1",
            "fw_phase_info{policy=\"openvidu-ce\",phase=\"runtime\"} 1",
            "fw_generation 3",
            "fw_interface_up 0",
            "fw_policy_reloads_total{outcome=\"ok\"} 4",
            "fw_policy_reloads_total{outcome=\"failed\"} 1",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
        }
        assert!(out.contains("# HELP fw_events Drop events"), "{out}");
    }
}
