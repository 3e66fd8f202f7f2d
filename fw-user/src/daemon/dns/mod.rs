//! The DNS proxy of `fw run`: how names in policies become addresses the
//! kernel allows, with no first-packet race.
//!
//! In a phase with `dns:`, the cgroup socket hooks send every local DNS
//! query (UDP or TCP, port 53) for resolver `i` of the phase to this proxy
//! on loopback port `base + i`, and refuse DNS to anything else
//! (`fw-ebpf/src/sock.rs`). The proxy forwards the query's bytes to that
//! resolver, parses the answer read-only, writes the addresses answered for
//! a name that a name rule matches into `FW_NAMES4/6` (rule and expiry per
//! address) and only then sends the upstream's bytes, unchanged, to the
//! application: by the time the application can connect, the kernel allows
//! the address. That is Cilium's order (its DNS proxy's `NotifyOnDNSMsg`
//! updates the policy maps before the response is written; releasing
//! answers first caused drops and was reverted, cilium PR #9208).
//!
//! The hold is bounded: the map write is one syscall per address, and the
//! whole exchange by [`UPSTREAM_TIMEOUT`]. A write that fails (a full map)
//! is counted and the answer still released: the connection is then
//! refused, never allowed unseen (fail closed).
//!
//! Memory is bounded by the phase's `dns.max_addresses_per_name` and
//! `dns.max_addresses` ([`ledger`]). The learned maps are pinned and the
//! kernel checks each address's expiry itself, so learned state outlives
//! the daemon: after a restart the new proxy adopts what the maps hold,
//! with the names saved in /run/fw/NAME.names.json (at most
//! [`SWEEP_EVERY`] old), and while no daemon runs nothing new is learned
//! (names fail closed).
//!
//! `fw learn` runs the same proxy in watch mode ([`watch`]): no name rule,
//! nothing written to the learned maps; each answer is reported
//! ([`Answered`]) before it is released, so that connections following it
//! are learned as the name.
//!
//! The daemon's own sockets are not redirected (the hooks compare the
//! process id in `FW_DNS_PROXY`), so its upstream queries reach the
//! resolvers; the TC program lets UDP/TCP 53 to the phase's resolvers out
//! (`pass_resolver`).

pub mod answer;
pub mod ledger;

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::MapData;
use fw_common::{
    maps,
    names::{DnsProxy, Learned, MAX_RESOLVERS4, MAX_RESOLVERS6, NAME_SLOTS},
};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::{
    daemon::events::{Event, SharedLog},
    instance::{self, paths},
    kernel::{
        apply, batch, flows,
        loader::{NameMaps, PolicyMaps},
    },
    policy::{compile::compile_phase, ir::Refusal, names::NameRules},
    source,
};
use ledger::{Caps, Change, Ledger};

/// First loopback port of the proxy (resolver `i` is `base + i`); below
/// the ephemeral range, so no client socket ever has one of these ports.
pub const DEFAULT_PORT: u16 = 15353;
/// Overrides [`DEFAULT_PORT`] (two instances in one network namespace).
pub const PORT_VAR: &str = "FW_DNS_PROXY_PORT";
/// The longest an answer is held: the upstream exchange, then the writes.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How often expired addresses are removed and the names saved.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How long a census of the addresses live connections use is trusted
/// when choosing what to evict (a flood evicts many at once).
const IN_USE_FRESH: Duration = Duration::from_secs(1);

/// Counters of the proxy, for `fw_dns_*` metrics and the log.
#[derive(Debug)]
pub struct Stats {
    pub queries: AtomicU64,
    pub answers: AtomicU64,
    pub refused: AtomicU64,
    pub learned: AtomicU64,
    pub learn_failed: AtomicU64,
    pub upstream_failed: AtomicU64,
    /// Seconds an answer was held after the upstream's reply: parsing it
    /// and writing the learned addresses (the latency fw adds).
    pub hold_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            queries: AtomicU64::new(0),
            answers: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            learned: AtomicU64::new(0),
            learn_failed: AtomicU64::new(0),
            upstream_failed: AtomicU64::new(0),
            // 10 µs .. about 2.6 s.
            hold_seconds: Histogram::new(exponential_buckets(1e-5, 2.0, 18)),
        }
    }
}

/// An answer the proxy released while `fw learn` watches: the question's
/// name (normalized; addresses reached through a CNAME chain count for it),
/// the addresses with their TTL, and when it was released on
/// CLOCK_MONOTONIC_COARSE, the clock of the kernel's event timestamps
/// (`bpf_ktime_get_coarse_ns`), read before the answer goes out: a
/// connection that follows the answer carries a time at least this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered {
    pub name: String,
    pub addrs: Vec<(IpAddr, u32)>,
    pub at_ns: u64,
}

/// Where a watching proxy reports its answers.
pub type AnswerSink = tokio::sync::mpsc::UnboundedSender<Answered>;

/// The proxy of this process, once it listens (for `fw names`, metrics).
static PROXY: OnceLock<Arc<Proxy>> = OnceLock::new();

/// The counters, when this process runs a proxy.
pub fn stats() -> Option<&'static Stats> {
    PROXY.get().map(|p| &p.stats)
}

/// Addresses evicted to stay within the caps (0 without a proxy).
pub fn evicted() -> u64 {
    PROXY.get().map_or(0, |p| lock(&p.ledger).evicted)
}

/// Addresses the proxy keeps now (0 without a proxy).
pub fn learned_now() -> usize {
    PROXY.get().map_or(0, |p| lock(&p.ledger).len())
}

/// One learned address, as `fw names` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NameEntry {
    /// The names it was answered for, the most recent last; empty when it
    /// was learned by an earlier daemon whose names were not saved.
    pub names: Vec<String>,
    pub address: IpAddr,
    /// (rule id, seconds left) of each rule that allows it.
    pub rules: Vec<(u32, u64)>,
}

/// What the proxy keeps, for `fw names` and `fw status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamesReport {
    /// Sorted by name, then address.
    pub entries: Vec<NameEntry>,
    pub max_per_name: usize,
    pub max_total: usize,
    pub evicted: u64,
    pub over_cap: u64,
}

/// Entries of both learned-address maps of `name` (live or not yet swept),
/// and the kernel memory they are charged (`memlock` of each map's fdinfo;
/// the maps are not preallocated, so it follows the entries).
pub fn count_learned(name: &str) -> Result<(u64, u64)> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let (mut count, mut bytes) = (0u64, 0u64);
    for map in [maps::NAMES4, maps::NAMES6] {
        let path = paths::map_pin(name, map);
        let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
        if map == maps::NAMES4 {
            batch::for_each::<[u8; 4], Learned>(&data, |_, _| count += 1)?;
        } else {
            batch::for_each::<[u8; 16], Learned>(&data, |_, _| count += 1)?;
        }
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd())).unwrap_or_default();
        bytes += fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok((count, bytes))
}

/// (rule, seconds left) of the rules that still allow a learned address.
pub fn live_rules(value: &Learned, now: u64) -> Vec<(u32, u64)> {
    (0..NAME_SLOTS)
        .filter(|&i| value.rule[i] != fw_common::names::EMPTY_SLOT && value.expires_ns[i] > now)
        .map(|i| (value.rule[i], (value.expires_ns[i] - now).div_ceil(1_000_000_000)))
        .collect()
}

impl NamesReport {
    /// How many distinct names have addresses.
    pub fn names(&self) -> usize {
        self.entries.iter().flat_map(|e| &e.names).collect::<HashSet<_>>().len()
    }
}

/// The learned addresses, when this process runs a proxy.
pub fn report() -> Option<NamesReport> {
    let proxy = PROXY.get()?;
    let now = monotonic_ns();
    let ledger = lock(&proxy.ledger);
    let mut entries: Vec<NameEntry> = ledger
        .entries()
        .map(|(addr, e)| NameEntry { names: e.names.clone(), address: *addr, rules: live_rules(&e.value, now) })
        .collect();
    entries.sort_by(|a, b| (a.names.last(), a.address).cmp(&(b.names.last(), b.address)));
    let caps = ledger.caps();
    Some(NamesReport {
        entries,
        max_per_name: caps.per_name,
        max_total: caps.total,
        evicted: ledger.evicted,
        over_cap: ledger.over_cap,
    })
}

/// The active phase as the proxy needs it.
#[derive(Clone)]
struct PhaseView {
    generation: u32,
    /// (port offset, address) of each resolver.
    resolvers: Vec<(u16, IpAddr)>,
    /// `None`: the phase has no name rules, or they cannot be read (then
    /// nothing is learned: fail closed).
    rules: Option<NameRules>,
}

struct Proxy {
    name: String,
    policy: Mutex<PolicyMaps>,
    names: Mutex<NameMaps>,
    view: Mutex<Option<PhaseView>>,
    /// What was learned, by name; its lock is taken before `names`.
    ledger: Mutex<Ledger>,
    /// The flow tables (each an IPv4 and an IPv6 map), to tell which
    /// addresses live connections use.
    flows: [[MapData; 2]; 2],
    in_use: Mutex<Option<(Instant, HashSet<IpAddr>)>>,
    /// The ledger changed since the names were last saved.
    unsaved: std::sync::atomic::AtomicBool,
    log: SharedLog,
    stats: Stats,
    /// `fw learn`: answers are reported here and nothing is learned into
    /// the kernel (the learning phase has no name rule to learn for).
    watcher: Option<AnswerSink>,
}

/// Runs the proxy until the daemon exits; errors are logged (without a
/// proxy, DNS from local sockets fails: names fail closed).
pub async fn serve(name: String, log: SharedLog) {
    if let Err(e) = run(&name, log).await {
        say_err!("fw: {name}: DNS proxy: {e:#}");
    }
}

async fn run(name: &str, log: SharedLog) -> Result<()> {
    let proxy = listen(name, log).await?;
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        sweep.tick().await;
        let p = proxy.clone();
        let removed = tokio::task::spawn_blocking(move || p.sweep()).await?;
        if removed > 0 {
            let s = &proxy.stats;
            say!(
                "fw: {name}: DNS: {removed} expired addresses removed; {} queries, {} answers, {} refused, {} addresses learned, {} learn failures, {} upstream failures",
                s.queries.load(Ordering::Relaxed),
                s.answers.load(Ordering::Relaxed),
                s.refused.load(Ordering::Relaxed),
                s.learned.load(Ordering::Relaxed),
                s.learn_failed.load(Ordering::Relaxed),
                s.upstream_failed.load(Ordering::Relaxed),
            );
        }
    }
}

/// The proxy for `fw learn`'s instance `name`: forwards every query of
/// the hooked cgroup to the resolver it was sent to, answers unchanged,
/// and reports each answer to `answers` before releasing it. Returns the
/// addresses it listens on once the hooks send queries to it. Prints
/// nothing (`fw learn` may write its policy to stdout).
pub async fn watch(name: &str, answers: AnswerSink) -> Result<Vec<SocketAddr>> {
    let (_, bound) = start(name, crate::daemon::events::EventLog::shared(), Some(answers)).await?;
    Ok(bound)
}

/// [`start`] for `fw run`, saying where it listens.
async fn listen(name: &str, log: SharedLog) -> Result<Arc<Proxy>> {
    let (proxy, bound) = start(name, log, None).await?;
    let list: Vec<String> = bound.iter().map(ToString::to_string).collect();
    say!("fw: {name}: DNS proxy listening on {}", list.join(" "));
    Ok(proxy)
}

/// Binds the proxy's sockets, serves them, and registers it in
/// `FW_DNS_PROXY` (only then do the hooks send queries to it).
async fn start(name: &str, log: SharedLog, watcher: Option<AnswerSink>) -> Result<(Arc<Proxy>, Vec<SocketAddr>)> {
    let base = match std::env::var(PORT_VAR) {
        Ok(text) => text
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0 && *p < u16::MAX - 8)
            .ok_or_else(|| anyhow!("{PORT_VAR}={text:?}: not a port"))?,
        Err(_) => DEFAULT_PORT,
    };
    let pinned = |map: &str| {
        let path = paths::map_pin(name, map);
        MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
    };
    let proxy = Arc::new(Proxy {
        name: name.to_string(),
        policy: Mutex::new(PolicyMaps::open(name)?),
        names: Mutex::new(NameMaps::open(name)?),
        view: Mutex::new(None),
        ledger: Mutex::new(Ledger::new(Caps { per_name: usize::MAX, total: usize::MAX })),
        flows: [
            [pinned(maps::FLOWS[0])?, pinned(maps::FLOWS[1])?],
            [pinned(maps::FLOWS_IN[0])?, pinned(maps::FLOWS_IN[1])?],
        ],
        in_use: Mutex::new(None),
        unsaved: false.into(),
        log,
        stats: Stats::default(),
        watcher,
    });
    let adopted = if proxy.watcher.is_some() { 0 } else { proxy.adopt() };
    if adopted > 0 {
        say!("fw: {name}: DNS: {adopted} addresses learned before this start stay allowed until their TTL");
    }
    let mut bound = Vec::new();
    for index in 0..(MAX_RESOLVERS4 + MAX_RESOLVERS6) as u16 {
        let ip: IpAddr =
            if (index as usize) < MAX_RESOLVERS4 { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
        let addr = SocketAddr::new(ip, base + index);
        let udp = match UdpSocket::bind(addr).await {
            Ok(s) => s,
            // No IPv6 loopback: IPv6 resolvers cannot be asked.
            Err(e) if ip.is_ipv6() => {
                say_err!("fw: {name}: DNS proxy: not listening on {addr}: {e}");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("binding the DNS proxy to {addr}")),
        };
        let tcp = TcpListener::bind(addr).await.with_context(|| format!("binding the DNS proxy to {addr}/tcp"))?;
        bound.push(addr);
        tokio::spawn(serve_udp(proxy.clone(), Arc::new(udp), index));
        tokio::spawn(serve_tcp(proxy.clone(), tcp, index));
    }
    let _ = PROXY.set(proxy.clone());
    // Only now may the hooks send queries here.
    let registration = DnsProxy { tgid: std::process::id(), port: base, _pad: [0; 2] };
    lock(&proxy.names).proxy.set(0, registration, 0).context("writing FW_DNS_PROXY")?;
    Ok((proxy, bound))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it leaves valid map handles behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve_udp(proxy: Arc<Proxy>, socket: Arc<UdpSocket>, index: u16) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else { continue };
        let query = buf[..len].to_vec();
        let (proxy, socket) = (proxy.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = proxy.handle(index, &query, false).await {
                let _ = socket.send_to(&reply, client).await;
            }
        });
    }
}

async fn serve_tcp(proxy: Arc<Proxy>, listener: TcpListener, index: u16) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            // Messages with a 2-byte length prefix (RFC 1035 4.2.2), one
            // after another on the same connection.
            while let Ok(query) = read_framed(&mut conn).await {
                let Some(reply) = proxy.handle(index, &query, true).await else { break };
                if write_framed(&mut conn, &reply).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn read_framed(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = conn.read_u16().await?;
    let mut message = vec![0u8; len as usize];
    conn.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(conn: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| std::io::Error::other("DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    conn.write_all(&framed).await
}

/// The upstream exchange over UDP: the reply with the query's ID.
async fn forward_udp(upstream: SocketAddr, query: &[u8], id: u16) -> Result<Vec<u8>> {
    let local: SocketAddr =
        if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf).await?;
        if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return Ok(buf[..len].to_vec());
        }
    }
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>> {
    let mut conn = TcpStream::connect(upstream).await?;
    write_framed(&mut conn, query).await?;
    Ok(read_framed(&mut conn).await?)
}

impl Proxy {
    /// One query: `None` when nothing can be answered (the client times
    /// out, as with a lost datagram).
    async fn handle(&self, index: u16, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let view = match self.view() {
            Ok(v) => v,
            Err(e) => {
                say_err!("fw: {}: DNS proxy: reading the active phase: {e:#}", self.name);
                return answer::reply_with_rcode(query, answer::SERVFAIL);
            }
        };
        let Some(&(_, resolver)) = view.resolvers.iter().find(|(i, _)| *i == index) else {
            return answer::reply_with_rcode(query, answer::SERVFAIL);
        };
        let question = answer::question(query);
        let rule_ids = match (&question, &view.rules) {
            (Some(q), Some(rules)) => rules.matching(&q.name),
            _ => Vec::new(),
        };
        if let Some(rules) = view.rules.as_ref().filter(|r| r.only_policy_names && rule_ids.is_empty()) {
            // `queries: policy`: no tunnelling through the allowed resolver.
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            self.report_refusal(resolver, tcp, question.as_ref().map_or("", |q| q.name.as_str()));
            let rcode = match rules.refuse_with {
                Refusal::Refused => answer::REFUSED,
                Refusal::NxDomain => answer::NXDOMAIN,
            };
            return answer::reply_with_rcode(query, rcode);
        }
        let upstream = SocketAddr::new(resolver, fw_common::names::DNS_PORT);
        let id =
            question.as_ref().map_or_else(|| u16::from_be_bytes([query[0], *query.get(1).unwrap_or(&0)]), |q| q.id);
        let exchange = async {
            if tcp {
                forward_tcp(upstream, query).await
            } else {
                forward_udp(upstream, query, id).await
            }
        };
        let reply = match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => reply,
            _ => {
                self.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                return answer::reply_with_rcode(query, answer::SERVFAIL);
            }
        };
        let held = Instant::now();
        if let (Some(q), Some(watcher)) = (&question, &self.watcher) {
            if let Some(addrs) = answer::addresses(&reply, q.id, &q.name).filter(|a| !a.is_empty()) {
                // Read before the answer goes out (see `Answered`).
                let _ = watcher.send(Answered { name: q.name.clone(), addrs, at_ns: monotonic_coarse_ns() });
            }
        }
        if let (Some(q), Some(rules)) = (&question, &view.rules) {
            if !rule_ids.is_empty() {
                if let Some(addrs) = answer::addresses(&reply, q.id, &q.name) {
                    // The hold: the answer goes out only after this returns.
                    self.learn(&q.name, &addrs, &rule_ids, rules.min_ttl);
                }
            }
        }
        self.stats.hold_seconds.observe(held.elapsed().as_secs_f64());
        self.stats.answers.fetch_add(1, Ordering::Relaxed);
        Some(reply)
    }

    /// A drop event for a query `queries: policy` refused: `fw drops`
    /// shows DNS tunnelling attempts with the name asked.
    fn report_refusal(&self, resolver: IpAddr, tcp: bool, name: &str) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let event = Event::dns_refused(log.next_seq(), crate::unix_time().as_secs_f64(), resolver, tcp, name);
        log.push(event);
    }

    /// The active phase: its resolvers from the kernel, its name rules
    /// from the policy the state file names (cached per generation).
    fn view(&self) -> Result<PhaseView> {
        let generation = apply::active_generation(&lock(&self.policy))?;
        if let Some(view) = lock(&self.view).as_ref().filter(|v| v.generation == generation) {
            return Ok(view.clone());
        }
        let resolvers = {
            let maps = lock(&self.policy);
            apply::resolver_addrs(&maps.resolvers.get(&(generation & 1), 0).context("reading FW_RESOLVERS")?)
        };
        let found = if self.watcher.is_some() {
            // Watching (`fw learn`): no name rule, nothing to learn.
            Ok((None, true))
        } else {
            self.name_rules(generation)
        };
        let (rules, settled) = match found {
            Ok(found) => found,
            Err(e) => {
                say_err!("fw: {}: DNS proxy: names are not learned: {e:#}", self.name);
                (None, false)
            }
        };
        let view = PhaseView { generation, resolvers, rules };
        if settled {
            self.follow_phase(view.rules.as_ref());
            *lock(&self.view) = Some(view.clone());
        }
        Ok(view)
    }

    /// A phase (first seen, or switched to): what it no longer allows is
    /// forgotten (behaviour 10) and its caps apply at once.
    fn follow_phase(&self, rules: Option<&NameRules>) {
        let mut ledger = lock(&self.ledger);
        let kept: HashSet<u32> = rules.map(|r| r.rules.iter().map(|(id, _)| *id).collect()).unwrap_or_default();
        let mut changes = ledger.retain_rules(&kept);
        if let Some(r) = rules {
            let caps = Caps { per_name: r.max_per_name as usize, total: r.max_total as usize };
            changes.extend(ledger.set_caps(caps, &mut |a| self.in_use(a)));
        }
        self.apply(&changes);
    }

    /// The name rules of `generation`, read from the policy the state file
    /// says it was compiled from, and used only if that policy still
    /// compiles to the same rules (an edited file could give ids another
    /// meaning). The bool says whether the answer may be cached.
    fn name_rules(&self, generation: u32) -> Result<(Option<NameRules>, bool)> {
        let (_, _, enforced) = instance::view(&self.name)?;
        let Some(enforced) = enforced.filter(|e| e.generation == generation) else {
            // A switch in progress: the state catches up in a moment.
            return Ok((None, false));
        };
        let env = enforced.env_file.as_deref().map(std::path::Path::new);
        let (_, loaded, _) = source::load_policy(&enforced.policy, env)?;
        let compiled = compile_phase(&loaded.policy, &enforced.phase)?;
        if compiled.rules != enforced.rules {
            return Err(anyhow!(
                "{} changed since phase {} was applied: run `fw switch` to apply it",
                enforced.policy,
                enforced.phase
            ));
        }
        Ok((NameRules::of_phase(&loaded.policy, &enforced.phase), true))
    }

    /// Writes `addrs`, answered for `name`, as allowed for `rules` until
    /// their TTL (at least `min_ttl`) runs out, within the phase's caps.
    fn learn(&self, name: &str, addrs: &[(IpAddr, u32)], rules: &[u32], min_ttl: u32) {
        let now = monotonic_ns();
        let answers: Vec<(IpAddr, u64)> =
            addrs.iter().map(|&(addr, ttl)| (addr, now + u64::from(ttl.max(min_ttl)) * 1_000_000_000)).collect();
        let mut ledger = lock(&self.ledger);
        let changes = ledger.learn(name, rules, &answers, now, &mut |a| self.in_use(a));
        self.apply(&changes);
    }

    /// Writes the ledger's changes to the kernel maps.
    fn apply(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.unsaved.store(true, Ordering::Relaxed);
        let mut maps = lock(&self.names);
        for change in changes {
            let (addr, written) = match *change {
                Change::Write(IpAddr::V4(a), value) => (IpAddr::V4(a), maps.names4.insert(a.octets(), value, 0)),
                Change::Write(IpAddr::V6(a), value) => (IpAddr::V6(a), maps.names6.insert(a.octets(), value, 0)),
                Change::Remove(IpAddr::V4(a)) => (IpAddr::V4(a), maps.names4.remove(&a.octets())),
                Change::Remove(IpAddr::V6(a)) => (IpAddr::V6(a), maps.names6.remove(&a.octets())),
            };
            match (change, written) {
                (Change::Write(..), Ok(())) => drop(self.stats.learned.fetch_add(1, Ordering::Relaxed)),
                (Change::Write(..), Err(e)) => {
                    say_err!("fw: {}: DNS proxy: cannot allow {addr}: {e}", self.name);
                    self.stats.learn_failed.fetch_add(1, Ordering::Relaxed);
                }
                // Already gone (the kernel map is the truth).
                (Change::Remove(_), _) => {}
            }
        }
    }

    /// Does a live connection use `addr`? From a census of both flow
    /// tables, taken at most every [`IN_USE_FRESH`]; when the census
    /// fails, every address counts as in use (nothing is evicted).
    fn in_use(&self, addr: IpAddr) -> bool {
        let mut cache = lock(&self.in_use);
        if cache.as_ref().is_none_or(|(at, _)| at.elapsed() >= IN_USE_FRESH) {
            let mut seen = HashSet::new();
            let census = self.flows.iter().try_for_each(|map| {
                flows::for_each(map, |k, _| {
                    seen.insert(if k.family == 6 {
                        IpAddr::V6(Ipv6Addr::from(k.remote_addr))
                    } else {
                        IpAddr::V4(Ipv4Addr::new(
                            k.remote_addr[0],
                            k.remote_addr[1],
                            k.remote_addr[2],
                            k.remote_addr[3],
                        ))
                    });
                })
            });
            match census {
                Ok(()) => *cache = Some((Instant::now(), seen)),
                Err(e) => {
                    say_err!("fw: {}: DNS proxy: reading the flow tables: {e:#}", self.name);
                    return true;
                }
            }
        }
        cache.as_ref().is_some_and(|(_, seen)| seen.contains(&addr))
    }

    /// Removes the addresses whose every rule has expired and saves the
    /// names; returns how many were removed.
    fn sweep(&self) -> usize {
        let changes = lock(&self.ledger).expire(monotonic_ns());
        self.apply(&changes);
        if self.unsaved.swap(false, Ordering::Relaxed) {
            if let Err(e) = self.save() {
                say_err!("fw: {}: DNS proxy: saving the learned names: {e:#}", self.name);
            }
        }
        changes.len()
    }

    /// Takes over what the learned maps hold (an earlier daemon's answers,
    /// still enforced by the kernel until their expiry), with the names
    /// saved for them. Returns how many addresses.
    fn adopt(&self) -> usize {
        let saved: BTreeMap<IpAddr, Vec<String>> = std::fs::read(paths::names_file(&self.name))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let found = lock(&self.names).entries();
        let now = monotonic_ns();
        let mut ledger = lock(&self.ledger);
        let mut count = 0;
        for (addr, value) in found.into_iter().filter(|(_, v)| ledger::live(v, now)) {
            ledger.adopt(addr, value, saved.get(&addr).cloned().unwrap_or_default());
            count += 1;
        }
        count
    }

    /// Saves address -> names (atomically: a crash leaves the old file).
    fn save(&self) -> Result<()> {
        let names: BTreeMap<IpAddr, Vec<String>> =
            lock(&self.ledger).entries().map(|(a, e)| (*a, e.names.clone())).collect();
        let path = paths::names_file(&self.name);
        let staged = path.with_extension("json.tmp");
        std::fs::write(&staged, serde_json::to_vec(&names)?)
            .with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &path)
            .with_context(|| format!("renaming {} to {}", staged.display(), path.display()))?;
        Ok(())
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: what `bpf_ktime_get_coarse_ns`
/// reads (the time of the last tick), so that it orders against the
/// kernel's event timestamps without a tick of slack.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`
/// (the coarse variant lags by at most a tick).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
