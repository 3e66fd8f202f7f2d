//! `fw run --metrics ADDR:PORT`: the instance's counters for Prometheus, at
//! `/metrics`, read from the pinned maps at scrape time (no copy to go
//! stale, and nothing to update on the packet path): counters are per-CPU
//! arrays the kernel keeps, a handful of reads whatever the traffic.
//!
//! Except the tables' fill, which the kernel does not count (an LRU hash
//! evicts silently, and a flow expires only when a lookup finds it): the
//! daemon counts the entries of every map, and the live flows (idle for
//! less than their timeout under the active phase), every
//! [`CENSUS_INTERVAL`] in the background, with batched lookups, and a
//! scrape reads that census. A scrape's cost does not grow with the flow
//! tables (it used to walk them: 170 ms a scrape with full tables).
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
//! fw_map_entries{map}  fw_map_capacity{map}   (the daemon's census)
//! fw_flows_live{table=flows|flows_in}        (the daemon's census)
//! fw_census_age_seconds
//! fw_flows_opened_total{table=flows|flows_in}
//! fw_flows_promoted_total  fw_flows_demoted_total
//! fw_flows_expired_total  fw_flows_forgotten_total
//! fw_phase_info{policy,phase} 1             fw_generation
//! fw_interface_up   1 while the enforcer is attached to the interface
//! fw_policy_reloads_total{outcome=ok|failed}   `fw run --watch` reloads
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use fw_common::{
    event::event_stats,
    flow::{flow_stats, tcp_closed, TOUCH_INTERVAL_NS},
    maps,
    policy::proto,
    FlowKey, FlowTimeouts, FlowValue,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    daemon::events::SharedLog,
    instance,
    instance::paths,
    kernel::counters::{ReasonCount, RuleCount, Snapshot},
    kernel::loader::{self, CounterMaps, PolicyMaps},
    kernel::{apply, batch},
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
        ENABLED.store(true, Ordering::SeqCst);
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

/// How often the daemon counts the maps' entries and the live flows.
pub const CENSUS_INTERVAL: Duration = Duration::from_secs(5);

/// Set when this process serves metrics: only then does the daemon take
/// the census.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process serves metrics.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::SeqCst)
}

/// The latest census, and when it was taken.
static CENSUS: Mutex<Option<(Instant, Census)>> = Mutex::new(None);

/// What the maps hold, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// (map label, entries, capacity).
    pub maps: Vec<(&'static str, u64, u64)>,
    /// (flow table label, entries idle for less than their timeout).
    pub live_flows: Vec<(&'static str, u64)>,
    /// The generation whose policy tries were counted (they change only
    /// with a switch; counted again then).
    policy_generation: u32,
}

/// Counts instance `name`'s maps for the scrapes to read: the flow and
/// fragment tables every time (batched lookups), the policy tries when
/// the active generation changed.
pub fn refresh_census(name: &str) -> Result<()> {
    let previous = CENSUS.lock().expect("census lock").as_ref().map(|(_, c)| c.clone());
    let census = take_census(name, previous.as_ref())?;
    *CENSUS.lock().expect("census lock") = Some((Instant::now(), census));
    Ok(())
}

fn take_census(name: &str, previous: Option<&Census>) -> Result<Census> {
    let policy_maps = PolicyMaps::open(name)?;
    let generation = apply::active_generation(&policy_maps)?;
    let timeouts = policy_maps.phases.get(&(generation & 1), 0).context("reading FW_PHASES")?.timeouts.or_default();
    let now = coarse_now();
    let mut maps_fill = Vec::new();
    let mut live_flows = Vec::new();
    for (label, names) in [("flows", maps::FLOWS), ("flows_in", maps::FLOWS_IN)] {
        let data = [pinned(name, names[0])?, pinned(name, names[1])?];
        let capacity = u64::from(data[0].info()?.max_entries()) + u64::from(data[1].info()?.max_entries());
        let (entries, live) = count_flows(&data, now, &timeouts)?;
        maps_fill.push((label, entries, capacity));
        live_flows.push((label, live));
    }
    let frags = pinned(name, maps::FRAGS)?;
    let capacity = u64::from(frags.info()?.max_entries());
    let (entries, _) = count_entries::<fw_common::FragKey, fw_common::FragValue>(&frags, |_, _| true)?;
    maps_fill.push(("frags", entries, capacity));
    let tries = match previous {
        Some(p) if p.policy_generation == generation => p
            .maps
            .iter()
            .filter(|(l, _, _)| matches!(*l, "addr4" | "addr6" | "ports" | "ports_hash"))
            .copied()
            .collect(),
        _ => {
            let count = |keys: usize| keys as u64;
            let mut out = Vec::new();
            for (label, map, n) in [
                ("addr4", maps::ADDR4, count(policy_maps.addr4.keys().filter_map(|k| k.ok()).count())),
                ("addr6", maps::ADDR6, count(policy_maps.addr6.keys().filter_map(|k| k.ok()).count())),
                ("ports", maps::PORTS, count(policy_maps.ports.keys().filter_map(|k| k.ok()).count())),
                ("ports_hash", maps::PORTS_HASH, count(policy_maps.ports_hash.keys().filter_map(|k| k.ok()).count())),
            ] {
                out.push((label, n, u64::from(pinned(name, map)?.info()?.max_entries())));
            }
            out
        }
    };
    maps_fill.extend(tries);
    Ok(Census { maps: maps_fill, live_flows, policy_generation: generation })
}

/// How long a flow may stay idle under timeouts `t`, as `fw-ebpf`'s
/// `flow::timeout_ns` (the touch interval included).
fn timeout_of(key: &FlowKey, v: &FlowValue, t: &FlowTimeouts) -> u64 {
    let seconds = match key.proto {
        proto::TCP if tcp_closed(v.flags) => t.tcp_closing,
        proto::TCP => t.tcp_established,
        proto::UDP => t.udp,
        _ => t.other,
    };
    u64::from(seconds) * 1_000_000_000 + TOUCH_INTERVAL_NS
}

/// Whether the kernel would still find this flow alive now (the test of
/// `fw-ebpf`'s `flow::expired`, negated).
fn is_live(now: u64, key: &FlowKey, v: &FlowValue, t: &FlowTimeouts) -> bool {
    let idle = now.wrapping_sub(v.last_seen_ns);
    idle <= u64::from(fw_common::flow::timeouts::MIN) * 1_000_000_000 + TOUCH_INTERVAL_NS
        || idle <= timeout_of(key, v, t)
}

/// (entries, live entries) of a flow table (its IPv4 and IPv6 maps).
fn count_flows(maps: &[MapData; 2], now: u64, timeouts: &FlowTimeouts) -> Result<(u64, u64)> {
    let (mut entries, mut live) = (0, 0);
    crate::kernel::flows::for_each(maps, |k, v| {
        entries += 1;
        live += u64::from(is_live(now, k, v, timeouts));
    })?;
    Ok((entries, live))
}

/// (entries, entries `matches` accepts) of a hash map. `K` and `V` must
/// be the map's key and value types.
fn count_entries<K: aya::Pod, V: aya::Pod>(map: &MapData, matches: impl Fn(&K, &V) -> bool) -> Result<(u64, u64)> {
    let (mut entries, mut matching) = (0u64, 0u64);
    batch::for_each::<K, V>(map, |k, v| {
        entries += 1;
        matching += u64::from(matches(k, v));
    })?;
    Ok((entries, matching))
}

/// CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns`.
fn coarse_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Everything one scrape reports, read from the maps up front so that the
/// encoder cannot fail half-way on a map error.
#[derive(Debug)]
struct Scrape {
    reasons: Vec<ReasonCount>,
    rules: Vec<RuleCount>,
    /// (outcome, count).
    events: Vec<(&'static str, u64)>,
    /// (map, entries, capacity), from the census.
    maps: Vec<(&'static str, u64, u64)>,
    /// (flow table, live entries), from the census.
    live_flows: Vec<(&'static str, u64)>,
    /// Seconds since the census was taken.
    census_age: u64,
    /// Flow entries removed as expired, and as no longer admitted.
    flows_expired: u64,
    flows_forgotten: u64,
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
        let flows_opened =
            vec![("flows", flow_sum(flow_stats::OPENED)?), ("flows_in", flow_sum(flow_stats::OPENED_IN)?)];
        let flows_promoted = flow_sum(flow_stats::PROMOTED)?;
        let flows_demoted = flow_sum(flow_stats::DEMOTED)?;

        let flows_expired = flow_sum(flow_stats::EXPIRED)?;
        let flows_forgotten = flow_sum(flow_stats::FORGOTTEN)?;

        // The tables' fill from the daemon's census (taken now, once, if
        // there is none yet: the first scrape after a start).
        if CENSUS.lock().expect("census lock").is_none() {
            refresh_census(name)?;
        }
        let (taken, census) = CENSUS.lock().expect("census lock").clone().expect("a census");
        Ok(Scrape {
            reasons: snapshot.reasons,
            rules: snapshot.rules,
            events,
            maps: census.maps,
            live_flows: census.live_flows,
            census_age: taken.elapsed().as_secs(),
            flows_expired,
            flows_forgotten,
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
        let reasons = |r: &ReasonCount| [("reason", r.reason.to_string()), ("direction", r.direction.to_string())];
        counter_family(
            &mut encoder,
            "fw_packets",
            "Packets per verdict reason and direction.",
            &self.reasons,
            reasons,
            |r| r.packets,
        )?;
        counter_family(
            &mut encoder,
            "fw_bytes",
            "Bytes per verdict reason and direction.",
            &self.reasons,
            reasons,
            |r| r.bytes,
        )?;
        let rules = |r: &RuleCount| {
            [("rule", r.name.clone()), ("direction", r.direction.to_string()), ("action", r.action.to_string())]
        };
        counter_family(
            &mut encoder,
            "fw_rule_packets",
            "Packets each policy rule decided.",
            &self.rules,
            rules,
            |r| r.packets,
        )?;
        counter_family(&mut encoder, "fw_rule_bytes", "Bytes each policy rule decided.", &self.rules, rules, |r| {
            r.bytes
        })?;
        counter_family(
            &mut encoder,
            "fw_events",
            "Drop events: emitted to userspace, suppressed by the per-second budget, lost (ring buffer full), undecodable.",
            &self.events,
            |(outcome, _)| [("outcome", outcome.to_string())],
            |(_, n)| *n,
        )?;
        let mut entries = encoder.encode_descriptor(
            "fw_map_entries",
            "Entries in each BPF map (all policy generations; flow entries idle past their timeout included, until \
             a lookup or an eviction removes them), counted by the daemon every few seconds.",
            None,
            MetricType::Gauge,
        )?;
        for (map, n, _) in &self.maps {
            ConstGauge::new(*n as i64).encode(entries.encode_family(&[("map", *map)])?)?;
        }
        let mut capacity = encoder.encode_descriptor(
            "fw_map_capacity",
            "Maximum entries of each BPF map.",
            None,
            MetricType::Gauge,
        )?;
        for (map, _, cap) in &self.maps {
            ConstGauge::new(*cap as i64).encode(capacity.encode_family(&[("map", *map)])?)?;
        }
        let mut live = encoder.encode_descriptor(
            "fw_flows_live",
            "Flows idle for less than their timeout under the active phase, per table: what the kernel would still \
             pass as flows. Counted by the daemon every few seconds.",
            None,
            MetricType::Gauge,
        )?;
        for (table, n) in &self.live_flows {
            ConstGauge::new(*n as i64).encode(live.encode_family(&[("table", *table)])?)?;
        }
        ConstGauge::new(self.census_age as i64).encode(encoder.encode_descriptor(
            "fw_census_age_seconds",
            "Seconds since the daemon counted the maps' entries and live flows.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstCounter::new(self.flows_expired).encode(encoder.encode_descriptor(
            "fw_flows_expired",
            "Flow entries removed because a lookup found them idle past their timeout.",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(self.flows_forgotten).encode(encoder.encode_descriptor(
            "fw_flows_forgotten",
            "Flow entries removed because the active policy no longer admits them (after a switch).",
            None,
            MetricType::Counter,
        )?)?;
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
        if let Some(stats) = crate::daemon::dns::stats() {
            encode_dns(&mut encoder, stats)?;
        }
        Ok(())
    }
}

/// `fw_dns_*`: the DNS proxy's counters, when this daemon runs one.
fn encode_dns(encoder: &mut DescriptorEncoder, s: &crate::daemon::dns::Stats) -> Result<(), std::fmt::Error> {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counters: [(&str, &str, u64); 7] = [
        ("fw_dns_queries", "DNS queries the proxy received from local processes.", load(&s.queries)),
        ("fw_dns_answers", "Upstream answers the proxy released to local processes.", load(&s.answers)),
        ("fw_dns_refused", "Queries refused by `queries: policy` (a name no rule mentions).", load(&s.refused)),
        ("fw_dns_learned", "Writes of learned addresses to the kernel (new or refreshed).", load(&s.learned)),
        (
            "fw_dns_learn_failed",
            "Learned addresses the kernel map refused (their connections fail closed).",
            load(&s.learn_failed),
        ),
        (
            "fw_dns_upstream_failed",
            "Queries the upstream resolver did not answer in time (SERVFAIL returned).",
            load(&s.upstream_failed),
        ),
        (
            "fw_dns_evicted",
            "Learned addresses removed to stay within dns.max_addresses(_per_name).",
            crate::daemon::dns::evicted(),
        ),
    ];
    for (name, help, value) in counters {
        ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
    }
    ConstGauge::new(crate::daemon::dns::learned_now() as i64).encode(encoder.encode_descriptor(
        "fw_dns_learned_addresses",
        "Addresses learned from DNS answers that the proxy keeps now.",
        None,
        MetricType::Gauge,
    )?)?;
    s.hold_seconds.encode(encoder.encode_descriptor(
        "fw_dns_hold_seconds",
        "Time an answer was held after the upstream replied (parsing it, writing its addresses): the latency fw adds.",
        None,
        MetricType::Histogram,
    )?)
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
                direction: fw_common::Direction::Egress,
                reason: fw_common::Reason::DropDefault,
                drop: true,
                packets: 7,
                bytes: 700,
                packets_by_slot: [7, 0],
            }],
            rules: vec![RuleCount {
                id: 0,
                name: "dns".into(),
                direction: fw_common::Direction::Egress,
                action: fw_common::Action::Allow,
                packets: 3,
                bytes: 300,
            }],
            events: vec![("emitted", 5), ("suppressed", 2), ("lost", 0), ("undecodable", 0)],
            maps: vec![("flows", 4, 262144), ("flows_in", 9, 65536)],
            live_flows: vec![("flows", 3), ("flows_in", 2)],
            census_age: 4,
            flows_expired: 11,
            flows_forgotten: 1,
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
            "fw_flows_live{table=\"flows\"} 3",
            "fw_flows_live{table=\"flows_in\"} 2",
            "fw_census_age_seconds 4",
            "fw_flows_expired_total 11",
            "fw_flows_forgotten_total 1",
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
