//! The only module that writes policy into the kernel maps.
//!
//! A phase is written into the keys of a *new* generation, which no packet
//! matches yet; then [`activate`] publishes it with one 4-byte map write;
//! then the previous generation's keys are deleted. At no moment does a
//! packet see a partly written policy. The order of these steps, and what
//! survives an interruption between any two of them, is `instance::txn`'s.

use anyhow::{Context, Result};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, IterableMap as _, MapData},
    Pod,
};
use std::net::IpAddr;

use fw_common::{
    addr6::NetKey,
    dir4,
    names::{Resolvers, MAX_RESOLVERS4, MAX_RESOLVERS6},
    port_hash::{PortHashKey, PortHashValue},
    AddrKey4, AddrKey6, Config, Counter, Direction, PhaseConfig, PolicyValue, PortKey,
};

use crate::{
    kernel::{
        batch,
        loader::{CounterMaps, PolicyMaps},
    },
    policy::{
        compile::{
            addr6::Table6,
            dir4::{Budget, Table4},
            port_hash::PortHash,
            tables::{AddrEntry4, AddrEntry6, CompiledPhase, PortEntry},
        },
        ir::Resolver,
    },
};

/// Writes every entry of `phase` under `generation` (not yet active);
/// `step` runs before each map write (the failpoints of the crash tests).
/// Returns the number of trie entries written.
///
/// The port trie, the largest (310,000 of 440,000 entries at 100,000
/// rules), and the port hash (269,000) are written on a thread each while
/// this one writes the address maps: other maps, other locks in the
/// kernel. (The port hash after the trie on one thread was the longest of
/// two, finishing about 200 ms after the address maps: `fw-bench control
/// --rules 100000`, write 489-512 ms with two threads, 404-456 ms with
/// three.) All finish before anything else is written.
pub fn write_generation(
    maps: &mut PolicyMaps,
    phase: &CompiledPhase,
    generation: u32,
    step: &(dyn Fn() + Sync),
) -> Result<usize> {
    let ports = maps.ports.map();
    let ports_hash = maps.ports_hash.map();
    let addr6_miss = std::thread::scope(|scope| {
        let port_trie_writer = scope.spawn(|| {
            let step = &mut || step();
            write_trie(ports, &phase.ports, |e| (e.key(generation), e.value), step).context("writing FW_PORTS")
        });
        let port_hash_writer = scope.spawn(|| {
            let step = &mut || step();
            write_port_hash(ports_hash, &phase.ports, generation, step)
        });
        let addresses = (|| {
            let step = &mut || step();
            write_trie(maps.addr4.map(), &phase.addr4, |e| (e.key(generation), e.class), step)
                .context("writing FW_ADDR4")?;
            write_addr4_table(&mut maps.addr4_top, &maps.addr4_mid, &maps.addr4_hosts, &phase.addr4, generation, step)?;
            write_trie(maps.addr6.map(), &phase.addr6, |e| (e.key(generation), e.class), step)
                .context("writing FW_ADDR6")?;
            let hash_from = maps.addr6_hash_from;
            write_addr6_hash(&maps.addr6_nets, &maps.addr6_hosts, hash_from, &phase.addr6, generation, step)
        })();
        crate::mark("write: the address maps");
        let join = |writer: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            writer.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        let port_hash = join(port_hash_writer);
        crate::mark("write: FW_PORTS_HASH");
        let port_trie = join(port_trie_writer);
        crate::mark("write: FW_PORTS");
        port_trie.and(port_hash).and(addresses)
    })?;
    step();
    maps.resolvers
        .set(generation & 1, resolvers_of(phase.dns.as_deref()), 0)
        .context("writing the phase's DNS resolvers to FW_RESOLVERS")?;
    let settings = PhaseConfig {
        egress_default: phase.settings.egress_default as u8,
        inbound_default: phase.settings.inbound_default as u8,
        audit: u8::from(phase.settings.audit),
        reject: u8::from(phase.settings.reject),
        addr6_hash: u8::from(addr6_miss.is_some()),
        _pad: [0; 3],
        addr6_miss: addr6_miss.unwrap_or_default(),
        timeouts: phase.settings.timeouts,
    };
    step();
    maps.phases.set(generation & 1, settings, 0).context("writing the phase settings to FW_PHASES")?;
    Ok(phase.addr4.len() + phase.addr6.len() + phase.ports.len())
}

/// Writes the IPv4 table packets read (`fw_common::dir4`) into the phase
/// slot of `generation`, which no packet reads until it is activated: the
/// slot's chunks (each slot owns half of `FW_ADDR4_MID`), the hosts (keyed
/// by generation, like the tries; half of `FW_ADDR4_HOSTS` per phase), then
/// the two first-level tables.
fn write_addr4_table(
    top: &mut Array<MapData, dir4::Top>,
    mid: &Array<MapData, dir4::Chunk>,
    hosts_map: &HashMap<MapData, AddrKey4, u32>,
    entries: &[AddrEntry4],
    generation: u32,
    step: &mut dyn FnMut(),
) -> Result<()> {
    let per_slot = mid.len() / 2;
    let base = (generation & 1) * per_slot;
    let hosts = hosts_map.map().info().context("reading FW_ADDR4_HOSTS's size")?.max_entries() / 2;
    // What does not fit is left to the trie (`fw_common::dir4::TRIE`).
    let table = Table4::build(entries, base, Budget { chunks: per_slot as usize, hosts: hosts as usize });
    let chunk_ids: Vec<u32> = (base..base + table.chunks.len() as u32).collect();
    batch::update(mid.map(), &chunk_ids, &table.chunks, step).context("writing FW_ADDR4_MID")?;
    let (hosts, entries): (Vec<AddrKey4>, Vec<u32>) =
        table.hosts.iter().map(|&((d, addr), entry)| (AddrKey4::new(generation, d, addr.to_be_bytes()), entry)).unzip();
    batch::update(hosts_map.map(), &hosts, &entries, step).context("writing FW_ADDR4_HOSTS")?;
    for d in Direction::ALL {
        step();
        top.set(dir4::top_index(generation, d as u8), table.top[d as usize].as_ref(), 0)
            .context("writing FW_ADDR4_TOP")?;
    }
    Ok(())
}

/// Writes the IPv6 hash packets read (`fw_common::addr6`) under
/// `generation`, in half of `FW_ADDR6_NETS` and `FW_ADDR6_HOSTS`, when the
/// phase has enough IPv6 entries for it to be faster than the trie and it
/// fits; returns the phase's miss entries then (`None`: the trie alone).
fn write_addr6_hash(
    nets: &HashMap<MapData, NetKey, u32>,
    hosts: &HashMap<MapData, AddrKey6, u32>,
    hash_from: usize,
    entries: &[AddrEntry6],
    generation: u32,
    step: &mut dyn FnMut(),
) -> Result<Option<[u32; 2]>> {
    let room = nets.map().info().context("reading FW_ADDR6_NETS's size")?.max_entries() / 2;
    let Some(table) = Table6::for_phase(entries, hash_from, room as usize) else {
        return Ok(None);
    };
    write_table6(nets.map(), hosts.map(), &table, generation, step)?;
    Ok(Some(table.miss))
}

/// Writes an IPv6 hash's /64s and hosts under `generation` (its miss
/// entries go with the phase settings).
pub fn write_table6(
    nets: &MapData,
    hosts: &MapData,
    table: &Table6,
    generation: u32,
    step: &mut dyn FnMut(),
) -> Result<()> {
    let (keys, values): (Vec<NetKey>, Vec<u32>) =
        table.nets.iter().map(|&((d, net), entry)| (NetKey::new(generation, d, net.to_be_bytes()), entry)).unzip();
    batch::update(nets, &keys, &values, step).context("writing FW_ADDR6_NETS")?;
    let (keys, values): (Vec<AddrKey6>, Vec<u32>) =
        table.hosts.iter().map(|&((d, addr), entry)| (AddrKey6::new(generation, d, addr.to_be_bytes()), entry)).unzip();
    batch::update(hosts, &keys, &values, step).context("writing FW_ADDR6_HOSTS")
}

/// Writes the port hash packets read first (`fw_common::port_hash`) under
/// `generation`, in half of `FW_PORTS_HASH` (a class that does not fit is
/// left to the trie, written before it).
fn write_port_hash(map: &MapData, entries: &[PortEntry], generation: u32, step: &mut dyn FnMut()) -> Result<()> {
    let budget = map.info().context("reading FW_PORTS_HASH's size")?.max_entries() / 2;
    let (keys, values) = PortHash::build(entries, budget as usize).keyed(generation);
    batch::update(map, &keys, &values, step).context("writing FW_PORTS_HASH")
}

/// Writes `entries` into an LPM trie, `entry` giving each one's
/// (prefix length, key) and value.
pub fn write_trie<E, K: Pod, V: Pod>(
    trie: &MapData,
    entries: &[E],
    entry: impl Fn(&E) -> ((u32, K), V),
    step: &mut dyn FnMut(),
) -> Result<()> {
    let (keys, values): (Vec<Key<K>>, Vec<V>) = entries
        .iter()
        .map(|e| {
            let ((bits, key), value) = entry(e);
            (Key::new(bits, key), value)
        })
        .unzip();
    batch::update(trie, &keys, &values, step)
}

/// The kernel's form of a phase's `dns.resolvers` (`system` read now from
/// the host's resolver configuration). Beyond the fixed slots, extra
/// system resolvers are left out (the policy language refuses more
/// explicit ones).
pub fn resolvers_of(dns: Option<&[Resolver]>) -> Resolvers {
    let mut out = Resolvers::default();
    let Some(list) = dns else { return out };
    out.enabled = 1;
    let mut addrs: Vec<IpAddr> = Vec::new();
    for r in list {
        match r {
            Resolver::Addr(a) => addrs.push(*a),
            Resolver::System => addrs.extend(crate::source::resolv_conf::system_resolvers()),
        }
    }
    for addr in addrs {
        match addr {
            IpAddr::V4(a)
                if (out.count4 as usize) < MAX_RESOLVERS4 && !out.v4[..out.count4 as usize].contains(&a.octets()) =>
            {
                out.v4[out.count4 as usize] = a.octets();
                out.count4 += 1;
            }
            IpAddr::V6(a)
                if (out.count6 as usize) < MAX_RESOLVERS6 && !out.v6[..out.count6 as usize].contains(&a.octets()) =>
            {
                out.v6[out.count6 as usize] = a.octets();
                out.count6 += 1;
            }
            _ => {}
        }
    }
    out
}

/// The SHA-256 (hex) of everything [`write_generation`] would put in the
/// kernel for `phase` now: its settings, entries and resolvers (`system`
/// read from the host's resolver configuration as the write reads it).
/// Equal digests, equal generations: a phase written ahead is activated
/// only when its digest is the one the switch would write (the tables
/// streamed into the hash without a buffer; the whole check, this digest
/// included, took 22-38 ms of a 100,000-rule switch, by hand and in the
/// bench's runs).
pub fn written_digest(phase: &CompiledPhase) -> Result<String> {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    let written = (&phase.settings, &phase.addr4, &phase.addr6, &phase.ports);
    bincode::serialize_into(&mut hash, &written).context("hashing the tables")?;
    hash.update(format!("{:?}", resolvers_of(phase.dns.as_deref())).as_bytes());
    Ok(crate::hex(&hash.finalize()))
}

/// The addresses of a phase's resolvers as the kernel holds them, in slot
/// order (IPv4 slots first): the proxy's port offset `i` is resolver `i`.
pub fn resolver_addrs(r: &Resolvers) -> Vec<(u16, IpAddr)> {
    let v4 = r.v4.iter().take(r.count4 as usize).enumerate().map(|(i, a)| (i as u16, IpAddr::from(*a)));
    let v6 =
        r.v6.iter().take(r.count6 as usize).enumerate().map(|(j, a)| ((MAX_RESOLVERS4 + j) as u16, IpAddr::from(*a)));
    v4.chain(v6).collect()
}

/// Makes `generation` the one every packet is judged by.
pub fn activate(maps: &mut PolicyMaps, generation: u32) -> Result<()> {
    maps.config.set(0, Config { generation }, 0).context("writing the active generation to FW_CONFIG")
}

/// The active generation.
pub fn active_generation(maps: &PolicyMaps) -> Result<u32> {
    Ok(maps.config.get(&0, 0).context("reading FW_CONFIG")?.generation)
}

/// Deletes every entry whose generation is `doomed` (never the active
/// one: callers check), in one walk of each trie; `step` runs before each
/// batch of deletions. Returns how many were deleted.
pub fn delete_generations(
    maps: &mut PolicyMaps,
    doomed: &dyn Fn(u32) -> bool,
    step: &mut dyn FnMut(),
) -> Result<usize> {
    let mut removed = 0;
    let of = |g: [u8; 4]| doomed(u32::from_be_bytes(g));
    removed += remove_where::<Key<AddrKey4>, u32>(maps.addr4.map(), |k| of(k.data().generation), step)?;
    removed += remove_where::<Key<AddrKey6>, u32>(maps.addr6.map(), |k| of(k.data().generation), step)?;
    removed += remove_where::<Key<PortKey>, PolicyValue>(maps.ports.map(), |k| of(k.data().generation), step)?;
    // The IPv4 hosts, the IPv6 hash and the port hash are the tries'
    // entries again, in the packets' form: not counted twice. The slot's arrays are overwritten by the next
    // generation written into it.
    remove_where::<AddrKey4, u32>(maps.addr4_hosts.map(), |k| of(k.generation), step)?;
    remove_where::<NetKey, u32>(maps.addr6_nets.map(), |k| of(k.generation), step)?;
    remove_where::<AddrKey6, u32>(maps.addr6_hosts.map(), |k| of(k.generation), step)?;
    remove_where::<PortHashKey, PortHashValue>(maps.ports_hash.map(), |k| of(k.generation), step)?;
    Ok(removed)
}

/// Deletes the keys of `map` that match, in batches; returns how many.
fn remove_where<K: Pod, V: Pod>(map: &MapData, matches: impl Fn(&K) -> bool, step: &mut dyn FnMut()) -> Result<usize> {
    // Collect first: deleting while walking restarts the walk.
    let mut doomed: Vec<K> = batch::keys::<K, V>(map)?;
    doomed.retain(|k| matches(k));
    batch::delete(map, &doomed, step).context("deleting old-generation entries")?;
    Ok(doomed.len())
}

/// Every key of an LPM trie, in a few system calls.
fn trie_keys<K: Pod, V: Pod>(trie: &MapData) -> Result<Vec<Key<K>>> {
    batch::keys::<Key<K>, V>(trie)
}

/// Every entry of an LPM trie.
fn trie_entries<K: Pod, V: Pod>(trie: &MapData) -> Result<Vec<(Key<K>, V)>> {
    let mut entries = Vec::new();
    batch::for_each::<Key<K>, V>(trie, |k, v| entries.push((*k, *v)))?;
    Ok(entries)
}

/// The highest generation a tracked flow (of either table) was admitted or
/// re-checked under.
pub fn highest_flow_generation(maps: &PolicyMaps) -> Result<u32> {
    let mut highest = 0;
    maps.flows.for_each(|_, v| highest = highest.max(v.generation))?;
    maps.flows_in.for_each(|_, v| highest = highest.max(v.generation))?;
    Ok(highest)
}

/// Zeroes the per-rule counters of ids `0..rules`.
pub fn zero_rule_counters(counters: &mut CounterMaps, rules: usize) -> Result<()> {
    // A per-CPU value is one `Counter` (16 bytes: 8-aligned, as the kernel
    // lays them out) per possible CPU.
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    let ids: Vec<u32> = (0..rules as u32).collect();
    let zeros = vec![Counter::default(); rules * cpus];
    batch::update(counters.rule_stats.map(), &ids, &zeros, &mut || {}).context("zeroing rule counters")
}

/// Reads a generation's entries back out of the kernel maps: what
/// `fw explain --name` judges by, so it reports what is enforced. The phase
/// name and rules are not in the kernel: the caller fills them in.
pub fn read_generation(maps: &PolicyMaps, generation: u32) -> Result<CompiledPhase> {
    use crate::policy::compile::tables::{AddrEntry6, PhaseSettings, PortEntry};
    use fw_common::{
        policy::{ADDR_KEY_FIXED_BITS, PORT_KEY_CLASS_BITS, PORT_KEY_PROTO_BITS},
        Action,
    };

    let gen = generation.to_be_bytes();
    let settings = maps.phases.get(&(generation & 1), 0).context("reading FW_PHASES")?;
    let direction = |d: u8| if d == Direction::Inbound as u8 { Direction::Inbound } else { Direction::Egress };
    let mut phase = CompiledPhase {
        phase: String::new(),
        settings: PhaseSettings {
            egress_default: Action::from_u8(settings.egress_default),
            inbound_default: Action::from_u8(settings.inbound_default),
            audit: settings.audit != 0,
            reject: settings.reject != 0,
            timeouts: settings.timeouts.or_default(),
        },
        addr4: Vec::new(),
        addr6: Vec::new(),
        ports: Vec::new(),
        rules: Vec::new(),
        dns: None,
    };
    let resolvers = maps.resolvers.get(&(generation & 1), 0).context("reading FW_RESOLVERS")?;
    if resolvers.enabled != 0 {
        phase.dns = Some(resolver_addrs(&resolvers).into_iter().map(|(_, a)| Resolver::Addr(a)).collect());
    }
    for (key, class) in trie_entries::<AddrKey4, u32>(maps.addr4.map()).context("reading FW_ADDR4")? {
        let data = key.data();
        if data.generation == gen {
            let prefix_len = (key.prefix_len() - ADDR_KEY_FIXED_BITS) as u8;
            phase.addr4.push(AddrEntry4 {
                direction: direction(data.direction),
                addr: data.addr.into(),
                prefix_len,
                class,
            });
        }
    }
    for (key, class) in trie_entries::<AddrKey6, u32>(maps.addr6.map()).context("reading FW_ADDR6")? {
        let data = key.data();
        if data.generation == gen {
            let prefix_len = (key.prefix_len() - ADDR_KEY_FIXED_BITS) as u8;
            phase.addr6.push(AddrEntry6 {
                direction: direction(data.direction),
                addr: data.addr.into(),
                prefix_len,
                class,
            });
        }
    }
    for (key, value) in trie_entries::<PortKey, PolicyValue>(maps.ports.map()).context("reading FW_PORTS")? {
        let data = key.data();
        if data.generation == gen {
            let bits = key.prefix_len();
            let (proto, port, port_prefix_len) = if bits <= PORT_KEY_CLASS_BITS {
                (None, 0, 0)
            } else {
                (Some(data.proto), data.port(), (bits - PORT_KEY_PROTO_BITS) as u8)
            };
            phase.ports.push(PortEntry { class: data.class(), proto, port, port_prefix_len, value });
        }
    }
    phase.addr4.sort();
    phase.addr6.sort();
    phase.ports.sort();
    Ok(phase)
}

/// How full the maps are.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EntryCounts {
    /// Entries of the given generation.
    pub addr4: usize,
    pub addr6: usize,
    pub ports: usize,
    /// Tracked flows (all generations, expired ones not yet evicted
    /// included) in the protected table: flows this host opened and
    /// established inbound TCP connections.
    pub flows: usize,
    /// The same in the probation table: flows inbound packets opened.
    pub flows_in: usize,
    /// Entries (in the three tries) of the generation written ahead of
    /// `fw switch`, when one is.
    pub written_ahead: usize,
    /// Entries of every other generation: the rollback target of a switch
    /// awaiting confirmation, else leftovers the next command collects.
    pub other_generations: usize,
}

/// Counts distinct keys: walking an LPM trie while another process deletes
/// from it (the daemon's repair collecting an interrupted switch) restarts
/// from the first key whenever the walk's current key was deleted (the
/// kernel's `trie_get_next_key` falls back to the leftmost node), so a
/// plain count can see an entry many times (a 1-entry generation counted
/// 570 times under load). The keys' generation says whose they are.
/// `ahead`: the generation written ahead, counted apart.
pub fn count_entries(maps: &PolicyMaps, generation: u32, ahead: Option<u32>) -> Result<EntryCounts> {
    use std::collections::HashSet;
    let gen = generation.to_be_bytes();
    let mut counts = EntryCounts::default();
    let addr4: HashSet<(u32, AddrKey4)> =
        trie_keys::<AddrKey4, u32>(maps.addr4.map())?.iter().map(|k| (k.prefix_len(), k.data())).collect();
    let addr6: HashSet<(u32, AddrKey6)> =
        trie_keys::<AddrKey6, u32>(maps.addr6.map())?.iter().map(|k| (k.prefix_len(), k.data())).collect();
    let ports: HashSet<(u32, PortKey)> =
        trie_keys::<PortKey, PolicyValue>(maps.ports.map())?.iter().map(|k| (k.prefix_len(), k.data())).collect();
    counts.addr4 = addr4.iter().filter(|(_, k)| k.generation == gen).count();
    counts.addr6 = addr6.iter().filter(|(_, k)| k.generation == gen).count();
    counts.ports = ports.iter().filter(|(_, k)| k.generation == gen).count();
    if let Some(ahead) = ahead.filter(|&g| g != generation).map(u32::to_be_bytes) {
        counts.written_ahead = addr4.iter().filter(|(_, k)| k.generation == ahead).count()
            + addr6.iter().filter(|(_, k)| k.generation == ahead).count()
            + ports.iter().filter(|(_, k)| k.generation == ahead).count();
    }
    counts.other_generations =
        addr4.len() + addr6.len() + ports.len() - counts.addr4 - counts.addr6 - counts.ports - counts.written_ahead;
    counts.flows = maps.flows.keys().filter_map(|k| k.ok()).count();
    counts.flows_in = maps.flows_in.keys().filter_map(|k| k.ok()).count();
    Ok(counts)
}
