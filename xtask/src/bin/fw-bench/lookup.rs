//! Part 1b: the policy's first lookup two ways (issue 16, item 2). A new
//! flow's cost at 100,000 rules is mostly its two LPM lookups; this weighs
//! the IPv4 address trie `fw_egress` uses against an O(1) DIR-16-8-8 table
//! (`fw_common::dir4`) and a hybrid of its first two levels with a hash of
//! the longer prefixes' addresses, all built from the same compiled
//! entries, and times the port trie that follows, in one run, through the
//! lookup benchmark object (fw-ebpf's `fw-lookup-bench`, loaded here only).
//!
//! Per size: the generated policy's phase `a` compiled as `fw run` does;
//! the trie holds every IPv4 address entry (both directions, as in
//! `FW_ADDR4`), the arrays the egress ones. Before timing, the three
//! programs judge every entry's first and last address, the address after
//! its last and `probes` random ones, and must agree (and agree with the
//! builders' own lookups). Then each program runs over `sample` covered addresses
//! (`repeat` runs each, the kernel's mean), reported as the median and the
//! 90th percentile, minus the floor (the same frame read, no lookup).

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, ensure, Context as _, Result};
use aya::{
    maps::{Array, IterableMap as _, LpmTrie, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
    Ebpf, EbpfLoader,
};
use fw_common::{
    addr6::NetKey,
    dir4::{self, bench},
    port_hash::{PortHashKey, PortHashValue},
    AddrKey4, AddrKey6, Direction, FlowKey, FlowKey4, FlowValue, PolicyValue, PortKey,
};
use fw_user::{
    kernel::{apply, batch, loader},
    policy::compile::{
        addr6::Table6,
        compile_phase,
        dir4::{Budget, Table4},
        port_hash::PortHash,
        tables::AddrEntry4,
    },
    policy::{parse_str_with_resolver, Vars},
};
use serde_json::{json, Value};

use crate::{
    control::{memlock, settled_slab_bytes},
    frames::{frame, ECHO_REPLY, TCP, UDP},
    gen::{self, Rng},
    stats::median,
};

pub struct Options {
    pub sizes: Vec<usize>,
    pub repeat: u32,
    pub sample: usize,
    pub probes: usize,
}

/// A DIR-16-8-8 table: the first level and the chunks, laid out as the
/// kernel reads them (`fw_common::dir4`).
#[derive(Debug, PartialEq)]
pub struct Dir4 {
    pub top: Vec<u32>,
    pub chunks: Vec<u32>,
}

impl Dir4 {
    /// The table of `(network, prefix length, class)`: prefixes are painted
    /// shortest first, so a longer one overwrites what it nests in, and a
    /// chunk starts as a copy of the entry it replaces. Distinct prefixes of
    /// one length never overlap, so painting never meets a chunk pointer.
    pub fn build(prefixes: impl IntoIterator<Item = (Ipv4Addr, u8, u32)>) -> Dir4 {
        let mut table = Dir4::empty();
        for (a, len, class) in shortest_first(prefixes) {
            table.paint(a, len, dir4::found(class));
        }
        table
    }

    fn empty() -> Dir4 {
        Dir4 { top: vec![dir4::MISS; dir4::TOP_ENTRIES as usize], chunks: Vec::new() }
    }

    /// `value` for every address of `a/len`, over what shorter prefixes
    /// painted there.
    fn paint(&mut self, a: u32, len: u8, value: u32) {
        let span = |bits: u8| 1usize << (bits - len.min(bits));
        if len <= 16 {
            let first = (a >> 16) as usize;
            self.top[first..first + span(16)].fill(value);
            return;
        }
        let second = self.chunk_of_top((a >> 16) as usize) * dir4::CHUNK_ENTRIES as usize;
        if len <= 24 {
            let first = second + (a >> 8 & 0xff) as usize;
            self.chunks[first..first + span(24)].fill(value);
            return;
        }
        let leaf = self.chunk_of_chunk(second + (a >> 8 & 0xff) as usize);
        let first = leaf * dir4::CHUNK_ENTRIES as usize + (a & 0xff) as usize;
        self.chunks[first..first + span(32)].fill(value);
    }

    /// The chunk under `top[i]`, made from its value if it has none.
    fn chunk_of_top(&mut self, i: usize) -> usize {
        let (entry, index) = self.chunk_under(self.top[i]);
        self.top[i] = entry;
        index
    }

    /// The chunk under `chunks[i]`, likewise.
    fn chunk_of_chunk(&mut self, i: usize) -> usize {
        let (entry, index) = self.chunk_under(self.chunks[i]);
        self.chunks[i] = entry;
        index
    }

    /// For an entry: the entry pointing to its chunk, and the chunk's index
    /// (a new chunk filled with the entry's value if it pointed to none).
    fn chunk_under(&mut self, entry: u32) -> (u32, usize) {
        if entry & dir4::CHUNK != 0 {
            return (entry, (entry & dir4::INDEX) as usize);
        }
        let index = self.new_chunk(entry);
        (dir4::CHUNK | index as u32, index)
    }

    fn new_chunk(&mut self, fill: u32) -> usize {
        let index = self.chunks.len() / dir4::CHUNK_ENTRIES as usize;
        self.chunks.extend(std::iter::repeat_n(fill, dir4::CHUNK_ENTRIES as usize));
        index
    }

    /// What the kernel program returns for `addr` (the same three reads).
    pub fn lookup(&self, addr: Ipv4Addr) -> u32 {
        let [a0, a1, a2, a3] = addr.octets();
        let mut entry = self.top[usize::from(a0) << 8 | usize::from(a1)];
        for byte in [a2, a3] {
            if entry & dir4::CHUNK == 0 {
                return entry;
            }
            entry = self.chunks[(entry & dir4::INDEX) as usize * dir4::CHUNK_ENTRIES as usize + usize::from(byte)];
        }
        entry
    }

    pub fn bytes(&self) -> usize {
        (self.top.len() + self.chunks.len()) * 4
    }
}

fn mask6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// Networks masked to their length, shortest first.
fn shortest_first(prefixes: impl IntoIterator<Item = (Ipv4Addr, u8, u32)>) -> Vec<(u32, u8, u32)> {
    let mut sorted: Vec<_> =
        prefixes.into_iter().map(|(n, len, class)| (u32::from(n) & mask(len), len, class)).collect();
    sorted.sort_by_key(|&(_, len, _)| len);
    sorted
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn egress_prefixes(entries: &[AddrEntry4]) -> impl Iterator<Item = (Ipv4Addr, u8, u32)> + '_ {
    entries.iter().filter(|e| e.direction == Direction::Egress).map(|e| (e.addr, e.prefix_len, e.class))
}

fn program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    Ok(ebpf.program(name).with_context(|| format!("no program {name}"))?.try_into()?)
}

/// One run of `prog` on a frame to `dst`: its return value.
fn judge(prog: &SchedClassifier, dst: Ipv4Addr) -> Result<u32> {
    judge_to(prog, dst, UDP, gen::UDP_PORT)
}

/// [`judge`] of a frame of `kind` (`frames`) to port `dport`.
fn judge_to(prog: &SchedClassifier, dst: Ipv4Addr, kind: u8, dport: u16) -> Result<u32> {
    let data = frame(SRC.into(), dst.into(), kind, SPORT, dport);
    Ok(prog.test_run(TestRunOptions { data_in: Some(&data), repeat: 1, ..Default::default() })?.return_value)
}

/// The source of every frame.
const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
/// The source port of the frames timed; [`MISS_SPORT`] in a flow's frame
/// makes it a flow the table does not hold.
const SPORT: u16 = 40_000;
const MISS_SPORT: u16 = 40_001;

/// The kernel's mean ns per run of `repeat` runs on a frame to `dst`.
fn time(prog: &SchedClassifier, dst: Ipv4Addr, repeat: u32) -> Result<f64> {
    time_from(prog, SPORT, dst, repeat)
}

/// [`time`] of a UDP frame from source port `sport`.
fn time_from(prog: &SchedClassifier, sport: u16, dst: Ipv4Addr, repeat: u32) -> Result<f64> {
    let data = frame(SRC.into(), dst.into(), UDP, sport, gen::UDP_PORT);
    let r = prog.test_run(TestRunOptions { data_in: Some(&data), repeat, ..Default::default() })?;
    Ok(r.duration.as_nanos() as f64)
}

/// The source of every IPv6 frame.
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc8, 0, 0, 0, 0, 1);

/// [`judge`] of a UDP frame to an IPv6 `dst`.
fn judge6(prog: &SchedClassifier, dst: Ipv6Addr) -> Result<u32> {
    let data = frame(SRC6.into(), dst.into(), UDP, SPORT, gen::UDP_PORT);
    Ok(prog.test_run(TestRunOptions { data_in: Some(&data), repeat: 1, ..Default::default() })?.return_value)
}

/// [`time`] of a UDP frame to an IPv6 `dst`.
fn time6(prog: &SchedClassifier, dst: Ipv6Addr, repeat: u32) -> Result<f64> {
    time6_from(prog, SPORT, dst, repeat)
}

/// [`time6`] of a frame from source port `sport`.
fn time6_from(prog: &SchedClassifier, sport: u16, dst: Ipv6Addr, repeat: u32) -> Result<f64> {
    let data = frame(SRC6.into(), dst.into(), UDP, sport, gen::UDP_PORT);
    let r = prog.test_run(TestRunOptions { data_in: Some(&data), repeat, ..Default::default() })?;
    Ok(r.duration.as_nanos() as f64)
}

/// The flow table's key of the UDP frame [`time6_from`] sends to `dst`.
fn flow_key6(sport: u16, dst: Ipv6Addr) -> FlowKey {
    FlowKey {
        family: 6,
        proto: UDP,
        local_port: sport.to_be_bytes(),
        remote_port: gen::UDP_PORT.to_be_bytes(),
        local_addr: SRC6.octets(),
        remote_addr: dst.octets(),
        ..FlowKey::default()
    }
}

/// The flow table's key of the UDP frame [`time_from`] sends to `dst`.
fn flow_key(sport: u16, dst: Ipv4Addr) -> FlowKey4 {
    FlowKey4 {
        proto: UDP,
        local_port: sport.to_be_bytes(),
        remote_port: gen::UDP_PORT.to_be_bytes(),
        local_addr: SRC.octets(),
        remote_addr: dst.octets(),
        ..FlowKey4::default()
    }
}

fn write_array(map: &MapData, values: &[u32]) -> Result<()> {
    let keys: Vec<u32> = (0..values.len() as u32).collect();
    batch::update(map, &keys, values, &mut || {})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn run(opts: &Options) -> Result<Value> {
    let mut rows = Vec::new();
    let object = loader::lookup_bench_object();
    ensure!(!object.is_empty(), "fw-bench was built without the lookup object (AYA_BUILD_SKIP)");
    for &rules in &opts.sizes {
        let yaml = gen::policy(rules);
        let loaded = parse_str_with_resolver(&yaml, "bench.yaml", &Vars::from_pairs::<&str, &str>([]), &|h| {
            Err(format!("no DNS ({h})"))
        })?;
        let compiled = compile_phase(&loaded.policy, "a")?;
        let table = Dir4::build(egress_prefixes(&compiled.addr4));
        // The hybrid as `fw_egress` has it (both directions, generation 1).
        let hybrid = Table4::build(&compiled.addr4, 0, Budget::UNLIMITED);
        let chunk_entries = table.chunks.len().max(1) as u32;
        let port_hash = PortHash::build(&compiled.ports, usize::MAX);
        let egress6: Vec<(u128, u8, u32)> = compiled
            .addr6
            .iter()
            .filter(|e| e.direction == Direction::Egress)
            .map(|e| (u128::from(e.addr) & mask6(e.prefix_len), e.prefix_len, e.class))
            .collect();
        // The IPv6 hash as `fw_egress` has it in a phase with many IPv6
        // entries (both directions, generation 1).
        let hash6 = Table6::build(&compiled.addr6);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(bench::MAP_TRIE4, compiled.addr4.len().max(1) as u32)
            .map_max_entries(bench::MAP_PORTS, compiled.ports.len().max(1) as u32)
            .map_max_entries(bench::MAP_CHUNKS, chunk_entries)
            .map_max_entries(bench::MAP_HYB_CHUNKS, hybrid.chunks.len().max(1) as u32)
            .map_max_entries(bench::MAP_HOSTS, hybrid.hosts.len().max(1) as u32)
            .map_max_entries(bench::MAP_PORTS_HASH, port_hash.entries.len().max(1) as u32)
            .map_max_entries(bench::MAP_FLOWS4, opts.sample.max(1) as u32 * 2)
            .map_max_entries(bench::MAP_FLOWS6, opts.sample.max(1) as u32 * 2)
            .map_max_entries(bench::MAP_TRIE6, compiled.addr6.len().max(1) as u32)
            .map_max_entries(bench::MAP_NET64, hash6.nets.len().max(1) as u32)
            .map_max_entries(bench::MAP_HOSTS6, hash6.hosts.len().max(1) as u32)
            .load(object)
            .context("loading the lookup benchmark object")?;
        let (trie_slab, trie_memlock) = {
            let trie: LpmTrie<_, AddrKey4, u32> = LpmTrie::try_from(ebpf.map(bench::MAP_TRIE4).context("trie")?)?;
            let before = settled_slab_bytes()?;
            apply::write_trie(trie.map(), &compiled.addr4, |e| (e.key(1), e.class), &mut || {})?;
            use std::os::fd::AsFd as _;
            (settled_slab_bytes()?.saturating_sub(before), memlock(trie.map().fd().as_fd()))
        };
        {
            let ports: LpmTrie<_, PortKey, PolicyValue> =
                LpmTrie::try_from(ebpf.map(bench::MAP_PORTS).context("ports")?)?;
            apply::write_trie(ports.map(), &compiled.ports, |e| (e.key(1), e.value), &mut || {})?;
        }
        let (memlock_trie6, memlock_hash6) = {
            use std::os::fd::AsFd as _;
            let trie: LpmTrie<_, AddrKey6, u32> = LpmTrie::try_from(ebpf.map(bench::MAP_TRIE6).context("trie6")?)?;
            apply::write_trie(trie.map(), &compiled.addr6, |e| (e.key(1), e.class), &mut || {})?;
            let nets: aya::maps::HashMap<_, NetKey, u32> =
                aya::maps::HashMap::try_from(ebpf.map(bench::MAP_NET64).context("net64")?)?;
            let hosts: aya::maps::HashMap<_, AddrKey6, u32> =
                aya::maps::HashMap::try_from(ebpf.map(bench::MAP_HOSTS6).context("hosts6")?)?;
            apply::write_table6(nets.map(), hosts.map(), &hash6, 1, &mut || {})?;
            (memlock(trie.map().fd().as_fd()), memlock(nets.map().fd().as_fd()) + memlock(hosts.map().fd().as_fd()))
        };
        {
            let mut miss: Array<_, u32> = Array::try_from(ebpf.map_mut(bench::MAP_MISS6).context("miss6")?)?;
            miss.set(0, hash6.miss[Direction::Egress as usize], 0)?;
        }
        let memlock_port_hash = {
            use std::os::fd::AsFd as _;
            let hash: aya::maps::HashMap<_, PortHashKey, PortHashValue> =
                aya::maps::HashMap::try_from(ebpf.map(bench::MAP_PORTS_HASH).context("port hash")?)?;
            let (keys, values) = port_hash.keyed(1);
            batch::update(hash.map(), &keys, &values, &mut || {})?;
            memlock(hash.map().fd().as_fd())
        };
        let memlock_dir = {
            use std::os::fd::AsFd as _;
            let top: Array<_, u32> = Array::try_from(ebpf.map(bench::MAP_TOP).context("top")?)?;
            let chunks: Array<_, u32> = Array::try_from(ebpf.map(bench::MAP_CHUNKS).context("chunks")?)?;
            write_array(top.map(), &table.top)?;
            if !table.chunks.is_empty() {
                write_array(chunks.map(), &table.chunks)?;
            }
            memlock(top.map().fd().as_fd()) + memlock(chunks.map().fd().as_fd())
        };
        let memlock_hybrid = {
            use std::os::fd::AsFd as _;
            let mut top: Array<_, dir4::Top> = Array::try_from(ebpf.map_mut(bench::MAP_HYB_TOP).context("top")?)?;
            for d in Direction::ALL {
                top.set(dir4::top_index(1, d as u8), hybrid.top[d as usize].as_ref(), 0)?;
            }
            let top = memlock(top.map().fd().as_fd());
            let chunks: Array<_, dir4::Chunk> = Array::try_from(ebpf.map(bench::MAP_HYB_CHUNKS).context("chunks")?)?;
            let ids: Vec<u32> = (0..hybrid.chunks.len() as u32).collect();
            batch::update(chunks.map(), &ids, &hybrid.chunks, &mut || {})?;
            let hosts: aya::maps::HashMap<_, AddrKey4, u32> =
                aya::maps::HashMap::try_from(ebpf.map(bench::MAP_HOSTS).context("hosts")?)?;
            let (keys, values): (Vec<AddrKey4>, Vec<u32>) =
                hybrid.hosts.iter().map(|&((d, a), v)| (AddrKey4::new(1, d, a.to_be_bytes()), v)).unzip();
            batch::update(hosts.map(), &keys, &values, &mut || {})?;
            top + memlock(chunks.map().fd().as_fd()) + memlock(hosts.map().fd().as_fd())
        };
        let names = [
            bench::PROG_FLOOR,
            bench::PROG_TRIE4,
            bench::PROG_DIR4,
            bench::PROG_HYBRID4,
            bench::PROG_TRIE4_PORTS,
            bench::PROG_DIR4_PORTS,
            bench::PROG_HYBRID4_PORTS,
            bench::PROG_HYBRID4_PORT_HASH,
            bench::PROG_FLOW4,
            bench::PROG_FLOW4_FLOOR,
            bench::PROG_PARSE,
            bench::PROG_NOOP,
            bench::PROG_COUNT,
            bench::PROG_FLOW6,
            bench::PROG_FLOW6_FLOOR,
            bench::PROG_FLOOR6,
            bench::PROG_TRIE6,
            bench::PROG_HASH6,
        ];
        for name in names {
            let p: &mut SchedClassifier = ebpf.program_mut(name).context(name)?.try_into()?;
            p.load().with_context(|| format!("the verifier rejected {name}"))?;
        }
        let [floor, trie, dir, hyb, trie_ports, dir_ports, hyb_ports, hyb_hash, flow, flow_floor, parse, noop, count, flow6, flow6_floor, floor6, trie6, hash6p] =
            names.map(|n| program(&ebpf, n));
        let (floor6, trie6, hash6p, flow6, flow6_floor) = (floor6?, trie6?, hash6p?, flow6?, flow6_floor?);
        let (floor, trie, dir, hyb, trie_ports, dir_ports, hyb_ports, hyb_hash) =
            (floor?, trie?, dir?, hyb?, trie_ports?, dir_ports?, hyb_ports?, hyb_hash?);
        let (flow, flow_floor, parse, noop, count) = (flow?, flow_floor?, parse?, noop?, count?);

        // Agreement: the edges of every egress prefix, and random addresses.
        let mut rng = Rng::new(0x6469_7234 ^ rules as u64);
        let mut covered: Vec<Ipv4Addr> = Vec::new();
        let mut probes: Vec<Ipv4Addr> = Vec::new();
        for (network, len, _) in egress_prefixes(&compiled.addr4) {
            let first = u32::from(network) & mask(len);
            let last = first | !mask(len);
            covered.extend([first, last].map(Ipv4Addr::from));
            probes.push(Ipv4Addr::from(last.wrapping_add(1)));
        }
        probes.extend(&covered);
        for _ in 0..opts.probes {
            probes.push(Ipv4Addr::from(match rng.below(3) {
                0 => 0xc612_0000 | (rng.u32() & 0x1_ffff),  // 198.18.0.0/15
                1 => 0x0a00_0000 | (rng.u32() & 0xff_ffff), // 10.0.0.0/8
                _ => rng.u32(),
            }));
        }
        for &addr in &probes {
            let (t, d, h) = (judge(trie, addr)?, judge(dir, addr)?, judge(hyb, addr)?);
            let h_built = hybrid.lookup(Direction::Egress, addr, 0, || unreachable!("an unlimited table"));
            if t != d || t != h || d != table.lookup(addr) || h != h_built {
                bail!(
                    "{rules} rules, {addr}: trie {t}, arrays {d} (builder {}), hybrid {h} (builder {h_built})",
                    table.lookup(addr)
                );
            }
            // The port hash answers as the trie: the timed UDP port, the
            // bench's denied and TCP ports, an echo reply, a random port.
            let random = 1 + rng.below(65_535) as u16;
            for (kind, port) in
                [(UDP, gen::UDP_PORT), (TCP, gen::DENIED_PORT), (TCP, gen::TCP_PORT), (ECHO_REPLY, 0), (UDP, random)]
            {
                let (t, h) = (judge_to(hyb_ports, addr, kind, port)?, judge_to(hyb_hash, addr, kind, port)?);
                ensure!(t == h, "{rules} rules, {addr}, kind {kind} port {port}: port trie {t}, port hash {h}");
            }
        }

        // Timing: `sample` covered addresses (each in some prefix), the
        // same ones for every program, interleaved address by address.
        let mut samples: [Vec<f64>; 7] = Default::default();
        for _ in 0..opts.sample {
            let addr = covered[rng.below(covered.len() as u64) as usize];
            let base = time(floor, addr, opts.repeat)?;
            for (i, prog) in [trie, dir, hyb, trie_ports, dir_ports, hyb_ports, hyb_hash].into_iter().enumerate() {
                samples[i].push(time(prog, addr, opts.repeat)? - base);
            }
        }
        // The flow table: the frames' flows to `sample` addresses in it,
        // each timed found and, from another source port, not found.
        let mut flow_hit = Vec::new();
        let mut flow_miss = Vec::new();
        {
            let flows = ebpf.map(bench::MAP_FLOWS4).context("flows")?;
            let flows: aya::maps::HashMap<_, FlowKey4, FlowValue> = aya::maps::HashMap::try_from(flows)?;
            let addrs: Vec<Ipv4Addr> =
                (0..opts.sample).map(|_| covered[rng.below(covered.len() as u64) as usize]).collect();
            let keys: Vec<FlowKey4> = addrs.iter().map(|&a| flow_key(SPORT, a)).collect();
            batch::update(flows.map(), &keys, &vec![FlowValue::default(); keys.len()], &mut || {})?;
            for &addr in &addrs {
                ensure!(judge(flow, addr)? == 1, "{rules} rules, {addr}: the flow inserted is not found");
                let base = time(flow_floor, addr, opts.repeat)?;
                flow_hit.push(time(flow, addr, opts.repeat)? - base);
                flow_miss.push(time_from(flow, MISS_SPORT, addr, opts.repeat)? - base);
            }
        }
        // The parser alone, above the do-nothing program: the same UDP
        // frames, which it must read as what they are.
        let mut parsed = Vec::new();
        for _ in 0..opts.sample {
            let addr = covered[rng.below(covered.len() as u64) as usize];
            ensure!(
                judge(parse, addr)? == u32::from(addr.octets()[3]),
                "{rules} rules, {addr}: the parser did not read the frame's destination"
            );
            let base = time(noop, addr, opts.repeat)?;
            parsed.push(time(parse, addr, opts.repeat)? - base);
        }
        // A packet's two counters alone, above the same do-nothing program.
        let mut counted = Vec::new();
        for _ in 0..opts.sample {
            let addr = covered[rng.below(covered.len() as u64) as usize];
            let base = time(noop, addr, opts.repeat)?;
            counted.push(time(count, addr, opts.repeat)? - base);
        }
        // IPv6: the trie against the /64 hash, agreeing first on the edges
        // of every egress prefix, the address after each, and random ones
        // in the policy's two /20s and /32s; then timed on `sample` edges
        // of hosts and of networks apart (a host's /64 is in the hash; a
        // network's edge mostly is not, and pays a miss before the trie
        // unless the phase has no prefix shorter than /64), and on the
        // random ones (mostly in no /64 of the hash).
        let v6 = |a: u128| Ipv6Addr::from(a);
        let mut probes6: Vec<u128> = Vec::new();
        let (mut host_edges, mut net_edges) = (Vec::new(), Vec::new());
        for &(a, len, _) in &egress6 {
            let last = a | !mask6(len);
            probes6.extend([a, last, last.wrapping_add(1)]);
            if len == 128 {
                host_edges.push(a)
            } else {
                net_edges.extend([a, last])
            }
        }
        let mut elsewhere = Vec::new();
        for _ in 0..opts.probes {
            let r = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
            let a = if rng.below(2) == 0 { 0x2001_0db8u128 << 96 | r >> 32 } else { 0x3fffu128 << 112 | r >> 20 };
            probes6.push(a);
            elsewhere.push(a);
        }
        for &a in &probes6 {
            let (t, h) = (judge6(trie6, v6(a))?, judge6(hash6p, v6(a))?);
            ensure!(t == h, "{rules} rules, {}: IPv6 trie {t}, /64 hash {h}", v6(a));
        }
        let mut timed6: [Vec<f64>; 6] = Default::default();
        for (i, edges) in [&host_edges, &net_edges, &elsewhere].into_iter().enumerate() {
            for _ in 0..if edges.is_empty() { 0 } else { opts.sample } {
                let a = v6(edges[rng.below(edges.len() as u64) as usize]);
                let base = time6(floor6, a, opts.repeat)?;
                timed6[2 * i].push(time6(trie6, a, opts.repeat)? - base);
                timed6[2 * i + 1].push(time6(hash6p, a, opts.repeat)? - base);
            }
        }
        // IPv6 frames through the parser, and their flows in a table keyed
        // as `FW_FLOWS6` (40 bytes against IPv4's 16): found and not found,
        // as for IPv4 above, to `sample` of the policy's IPv6 addresses.
        let mut parsed6 = Vec::new();
        let mut flow6_hit = Vec::new();
        let mut flow6_miss = Vec::new();
        let policy6: Vec<u128> = host_edges.iter().chain(&net_edges).copied().collect();
        if !policy6.is_empty() {
            let flows = ebpf.map(bench::MAP_FLOWS6).context("flows6")?;
            let flows: aya::maps::HashMap<_, FlowKey, FlowValue> = aya::maps::HashMap::try_from(flows)?;
            let addrs: Vec<Ipv6Addr> =
                (0..opts.sample).map(|_| v6(policy6[rng.below(policy6.len() as u64) as usize])).collect();
            let keys: Vec<FlowKey> = addrs.iter().map(|&a| flow_key6(SPORT, a)).collect();
            batch::update(flows.map(), &keys, &vec![FlowValue::default(); keys.len()], &mut || {})?;
            for &a in &addrs {
                ensure!(judge6(flow6, a)? == 1, "{rules} rules, {a}: the IPv6 flow inserted is not found");
                ensure!(
                    judge6(parse, a)? == u32::from(a.octets()[3]),
                    "{rules} rules, {a}: the parser did not read the IPv6 frame's destination"
                );
                let base = time6(flow6_floor, a, opts.repeat)?;
                flow6_hit.push(time6(flow6, a, opts.repeat)? - base);
                flow6_miss.push(time6_from(flow6, MISS_SPORT, a, opts.repeat)? - base);
                let none = time6(noop, a, opts.repeat)?;
                parsed6.push(time6(parse, a, opts.repeat)? - none);
            }
        }
        let floor_ns = time(floor, gen::RECEIVER4, opts.repeat)?;
        let stat = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            json!({ "median": median(&mut v.clone()), "p90": percentile(v, 0.9) })
        };
        let mut row = json!({
            "rules": rules,
            "addr4_entries": compiled.addr4.len(),
            "addr4_egress": egress_prefixes(&compiled.addr4).count(),
            "port_entries": compiled.ports.len(),
            "probes": probes.len(),
            "sampled": samples[0].len(),
            "floor_ns": floor_ns,
            "trie": stat(&mut samples[0]),
            "dir": stat(&mut samples[1]),
            "hybrid": stat(&mut samples[2]),
            "trie_ports": stat(&mut samples[3]),
            "dir_ports": stat(&mut samples[4]),
            "hybrid_ports": stat(&mut samples[5]),
            "hybrid_port_hash": stat(&mut samples[6]),
            "port_hash_entries": port_hash.entries.len(),
            "addr6_egress": egress6.len(),
            "probes6": probes6.len(),
            "trie6_hosts": if timed6[0].is_empty() { Value::Null } else { stat(&mut timed6[0]) },
            "hash6_hosts": if timed6[1].is_empty() { Value::Null } else { stat(&mut timed6[1]) },
            "trie6_nets": if timed6[2].is_empty() { Value::Null } else { stat(&mut timed6[2]) },
            "hash6_nets": if timed6[3].is_empty() { Value::Null } else { stat(&mut timed6[3]) },
            "trie6_elsewhere": if timed6[4].is_empty() { Value::Null } else { stat(&mut timed6[4]) },
            "hash6_elsewhere": if timed6[5].is_empty() { Value::Null } else { stat(&mut timed6[5]) },
            "net64_entries": hash6.nets.len(),
            "hosts6_entries": hash6.hosts.len(),
            "trie6_memlock_bytes": memlock_trie6,
            "hash6_memlock_bytes": memlock_hash6,
            "flow_hit": stat(&mut flow_hit),
            "flow_miss": stat(&mut flow_miss),
            "parse": stat(&mut parsed),
            "count": stat(&mut counted),
            "port_hash_memlock_bytes": memlock_port_hash,
            "trie_slab_bytes": trie_slab,
            "trie_memlock_bytes": trie_memlock,
            "dir_bytes": table.bytes(),
            "dir_chunks": table.chunks.len() / dir4::CHUNK_ENTRIES as usize,
            "dir_memlock_bytes": memlock_dir,
            "hybrid_chunks": hybrid.chunks.len(),
            "hybrid_hosts": hybrid.hosts.len(),
            "hybrid_memlock_bytes": memlock_hybrid,
        });
        // Beside the rest (one `json!` that large passes the macro's
        // recursion limit).
        let or_null = |v: &mut Vec<f64>| if v.is_empty() { Value::Null } else { stat(v) };
        row["parse6"] = or_null(&mut parsed6);
        row["flow6_hit"] = or_null(&mut flow6_hit);
        row["flow6_miss"] = or_null(&mut flow6_miss);
        eprintln!("lookup: {row}");
        rows.push(row);
    }
    Ok(json!({ "repeat": opts.repeat, "rows": rows }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest of `prefixes` containing `addr`: what an LPM trie answers.
    fn longest_match(prefixes: &[(Ipv4Addr, u8, u32)], addr: Ipv4Addr) -> u32 {
        prefixes
            .iter()
            .filter(|&&(n, len, _)| u32::from(addr) & mask(len) == u32::from(n) & mask(len))
            .max_by_key(|&&(_, len, _)| len)
            .map_or(dir4::MISS, |&(_, _, class)| dir4::found(class))
    }

    /// Random nested prefix sets (one class per distinct prefix, as the
    /// compiler emits them), probed at every prefix's edges and at random.
    #[test]
    fn the_arrays_answer_the_longest_prefix_match() {
        let mut rng = Rng::new(7);
        for round in 0..200 {
            let mut prefixes: Vec<(Ipv4Addr, u8, u32)> = Vec::new();
            let base = 0xc612_0000u32;
            for class in 0..rng.usize(1, 40) as u32 {
                let len = [0, 8, 12, 15, 16, 17, 20, 23, 24, 25, 28, 31, 32][rng.usize(0, 12)];
                let addr = (base | (rng.u32() & 0x1_ffff)) & mask(len);
                if !prefixes.iter().any(|&(n, l, _)| l == len && u32::from(n) == addr) {
                    prefixes.push((addr.into(), len, class));
                }
            }
            let table = Dir4::build(prefixes.iter().copied());
            let mut probes: Vec<u32> = (0..200).map(|_| base | (rng.u32() & 0x1_ffff)).collect();
            for &(n, len, _) in &prefixes {
                let first = u32::from(n);
                probes.extend([first, first | !mask(len), (first | !mask(len)).wrapping_add(1), first.wrapping_sub(1)]);
            }
            for p in probes {
                let addr = Ipv4Addr::from(p);
                let want = longest_match(&prefixes, addr);
                assert_eq!(table.lookup(addr), want, "DIR-16-8-8, round {round}, {addr}, {prefixes:?}");
            }
        }
    }

    #[test]
    fn a_chunk_is_made_only_under_a_longer_prefix() {
        let table = Dir4::build([(Ipv4Addr::new(10, 0, 0, 0), 8, 1), (Ipv4Addr::new(10, 1, 0, 0), 16, 2)]);
        assert!(table.chunks.is_empty());
        let table = Dir4::build([(Ipv4Addr::new(10, 0, 0, 0), 8, 1), (Ipv4Addr::new(10, 1, 2, 3), 32, 2)]);
        assert_eq!(table.chunks.len(), 2 * dir4::CHUNK_ENTRIES as usize);
        assert_eq!(table.lookup(Ipv4Addr::new(10, 1, 2, 3)), dir4::found(2));
        assert_eq!(table.lookup(Ipv4Addr::new(10, 1, 2, 4)), dir4::found(1));
        assert_eq!(table.lookup(Ipv4Addr::new(11, 1, 2, 3)), dir4::MISS);
    }
}
