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
//! The daemon's own sockets are not redirected (the hooks compare the
//! process id in `FW_DNS_PROXY`), so its upstream queries reach the
//! resolvers; the TC program lets UDP/TCP 53 to the phase's resolvers out
//! (`pass_resolver`).

pub mod answer;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use fw_common::names::{DnsProxy, Learned, EMPTY_SLOT, MAX_RESOLVERS4, MAX_RESOLVERS6, NAME_SLOTS};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
};

use crate::{
    instance,
    kernel::{
        apply,
        loader::{NameMaps, PolicyMaps},
    },
    policy::{compile::compile_phase, names::NameRules},
    source,
};

/// First loopback port of the proxy (resolver `i` is `base + i`); below
/// the ephemeral range, so no client socket ever has one of these ports.
pub const DEFAULT_PORT: u16 = 15353;
/// Overrides [`DEFAULT_PORT`] (two instances in one network namespace).
pub const PORT_VAR: &str = "FW_DNS_PROXY_PORT";
/// The longest an answer is held: the upstream exchange, then the writes.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// How often entries whose every slot expired are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Counters of the proxy (logged; metrics are for later).
#[derive(Default, Debug)]
pub struct Stats {
    pub queries: AtomicU64,
    pub answers: AtomicU64,
    pub refused: AtomicU64,
    pub learned: AtomicU64,
    pub learn_failed: AtomicU64,
    pub upstream_failed: AtomicU64,
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
    stats: Stats,
}

/// Runs the proxy until the daemon exits; errors are logged (without a
/// proxy, DNS from local sockets fails: names fail closed).
pub async fn serve(name: String) {
    if let Err(e) = run(&name).await {
        eprintln!("fw: {name}: DNS proxy: {e:#}");
    }
}

async fn run(name: &str) -> Result<()> {
    let base = match std::env::var(PORT_VAR) {
        Ok(text) => text.trim().parse::<u16>().ok().filter(|p| *p > 0 && *p < u16::MAX - 8).ok_or_else(|| anyhow!("{PORT_VAR}={text:?}: not a port"))?,
        Err(_) => DEFAULT_PORT,
    };
    let proxy = Arc::new(Proxy {
        name: name.to_string(),
        policy: Mutex::new(PolicyMaps::open(name)?),
        names: Mutex::new(NameMaps::open(name)?),
        view: Mutex::new(None),
        stats: Stats::default(),
    });
    let mut bound = Vec::new();
    for index in 0..(MAX_RESOLVERS4 + MAX_RESOLVERS6) as u16 {
        let ip: IpAddr = if (index as usize) < MAX_RESOLVERS4 { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
        let addr = SocketAddr::new(ip, base + index);
        let udp = match UdpSocket::bind(addr).await {
            Ok(s) => s,
            // No IPv6 loopback: IPv6 resolvers cannot be asked.
            Err(e) if ip.is_ipv6() => {
                eprintln!("fw: {name}: DNS proxy: not listening on {addr}: {e}");
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("binding the DNS proxy to {addr}")),
        };
        let tcp = TcpListener::bind(addr).await.with_context(|| format!("binding the DNS proxy to {addr}/tcp"))?;
        bound.push(addr);
        tokio::spawn(serve_udp(proxy.clone(), Arc::new(udp), index));
        tokio::spawn(serve_tcp(proxy.clone(), tcp, index));
    }
    // Only now may the hooks send queries here.
    let registration = DnsProxy { tgid: std::process::id(), port: base, _pad: [0; 2] };
    lock(&proxy.names).proxy.set(0, registration, 0).context("writing FW_DNS_PROXY")?;
    let list: Vec<String> = bound.iter().map(ToString::to_string).collect();
    println!("fw: {name}: DNS proxy listening on {}", list.join(" "));
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        sweep.tick().await;
        let p = proxy.clone();
        let removed = tokio::task::spawn_blocking(move || p.sweep()).await?;
        if removed > 0 {
            let s = &proxy.stats;
            println!(
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
    let local: SocketAddr = if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
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
                eprintln!("fw: {}: DNS proxy: reading the active phase: {e:#}", self.name);
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
        if view.rules.as_ref().is_some_and(|r| r.only_policy_names) && rule_ids.is_empty() {
            // `queries: policy`: no tunnelling through the allowed resolver.
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return answer::reply_with_rcode(query, answer::REFUSED);
        }
        let upstream = SocketAddr::new(resolver, fw_common::names::DNS_PORT);
        let id = question.as_ref().map_or_else(|| u16::from_be_bytes([query[0], *query.get(1).unwrap_or(&0)]), |q| q.id);
        let exchange = async {
            if tcp { forward_tcp(upstream, query).await } else { forward_udp(upstream, query, id).await }
        };
        let reply = match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
            Ok(Ok(reply)) => reply,
            _ => {
                self.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                return answer::reply_with_rcode(query, answer::SERVFAIL);
            }
        };
        if let (Some(q), Some(rules)) = (&question, &view.rules) {
            if !rule_ids.is_empty() {
                if let Some(addrs) = answer::addresses(&reply, q.id, &q.name) {
                    // The hold: the answer goes out only after this returns.
                    self.learn(&addrs, &rule_ids, rules.min_ttl);
                }
            }
        }
        self.stats.answers.fetch_add(1, Ordering::Relaxed);
        Some(reply)
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
        let (rules, settled) = match self.name_rules(generation) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("fw: {}: DNS proxy: names are not learned: {e:#}", self.name);
                (None, false)
            }
        };
        let view = PhaseView { generation, resolvers, rules };
        if settled {
            *lock(&self.view) = Some(view.clone());
        }
        Ok(view)
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
            return Err(anyhow!("{} changed since phase {} was applied: run `fw switch` to apply it", enforced.policy, enforced.phase));
        }
        Ok((NameRules::of_phase(&loaded.policy, &enforced.phase), true))
    }

    /// Writes `addrs` as allowed for `rules` until their TTL (at least
    /// `min_ttl`) runs out.
    fn learn(&self, addrs: &[(IpAddr, u32)], rules: &[u32], min_ttl: u32) {
        let now = monotonic_ns();
        let mut maps = lock(&self.names);
        for &(addr, ttl) in addrs {
            let expires = now + u64::from(ttl.max(min_ttl)) * 1_000_000_000;
            let written = match addr {
                IpAddr::V4(a) => {
                    let key = a.octets();
                    let mut value = maps.names4.get(&key, 0).unwrap_or(Learned::EMPTY);
                    rules.iter().for_each(|&rule| merge(&mut value, rule, expires, now));
                    maps.names4.insert(key, value, 0)
                }
                IpAddr::V6(a) => {
                    let key = a.octets();
                    let mut value = maps.names6.get(&key, 0).unwrap_or(Learned::EMPTY);
                    rules.iter().for_each(|&rule| merge(&mut value, rule, expires, now));
                    maps.names6.insert(key, value, 0)
                }
            };
            match written {
                Ok(()) => self.stats.learned.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("fw: {}: DNS proxy: cannot allow {addr}: {e}", self.name);
                    self.stats.learn_failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }

    /// Removes the entries whose every slot has expired; returns how many.
    fn sweep(&self) -> usize {
        let now = monotonic_ns();
        let dead = |v: &Learned| (0..NAME_SLOTS).all(|i| v.rule[i] == EMPTY_SLOT || v.expires_ns[i] <= now);
        let mut maps = lock(&self.names);
        let doomed4: Vec<[u8; 4]> = maps.names4.iter().filter_map(|e| e.ok()).filter(|(_, v)| dead(v)).map(|(k, _)| k).collect();
        let doomed6: Vec<[u8; 16]> = maps.names6.iter().filter_map(|e| e.ok()).filter(|(_, v)| dead(v)).map(|(k, _)| k).collect();
        let mut removed = 0;
        for key in doomed4 {
            removed += usize::from(maps.names4.remove(&key).is_ok());
        }
        for key in doomed6 {
            removed += usize::from(maps.names6.remove(&key).is_ok());
        }
        removed
    }
}

/// Puts `rule` with `expires` into `value`: its own slot (the later expiry
/// wins), else a free or expired one, else the one that expires first.
pub fn merge(value: &mut Learned, rule: u32, expires: u64, now: u64) {
    if let Some(i) = (0..NAME_SLOTS).find(|&i| value.rule[i] == rule) {
        value.expires_ns[i] = value.expires_ns[i].max(expires);
        return;
    }
    let i = (0..NAME_SLOTS)
        .find(|&i| value.rule[i] == EMPTY_SLOT || value.expires_ns[i] <= now)
        .unwrap_or_else(|| (0..NAME_SLOTS).min_by_key(|&i| value.expires_ns[i]).expect("NAME_SLOTS > 0"));
    value.rule[i] = rule;
    value.expires_ns[i] = expires;
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`
/// (the coarse variant lags by at most a tick).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_one_slot_per_rule_and_replaces_the_first_to_expire() {
        let mut v = Learned::EMPTY;
        merge(&mut v, 7, 100, 0);
        merge(&mut v, 7, 50, 0);
        assert_eq!((v.rule[0], v.expires_ns[0]), (7, 100), "the later expiry wins");
        for (rule, expires) in [(1, 10), (2, 20), (3, 30)] {
            merge(&mut v, rule, expires, 0);
        }
        merge(&mut v, 4, 40, 0);
        assert!(!v.rule.contains(&1) && v.rule.contains(&4), "{v:?}");
        // An expired slot is reused before a live one is evicted.
        merge(&mut v, 5, 60, 25);
        assert!(v.rule.contains(&3) && v.rule.contains(&5) && !v.rule.contains(&2), "{v:?}");
    }
}
