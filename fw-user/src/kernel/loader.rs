//! The kernel object: loading it, attaching it to an interface, pinning the
//! link and maps, and reopening an instance from its pins.
//!
//! Fail closed: the TCX link is pinned, so enforcement outlives the `fw`
//! process (a crash or a `kill -9` leaves the interface filtered); only
//! [`detach`] removes it. A failed start removes everything it created, so a
//! broken start never leaves half an instance behind.

use std::{fs, io, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{
        links::{CgroupAttachMode, FdLink, Link, PinnedLink},
        tc::{self, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType},
        CgroupSockAddr, LinkOrder,
    },
    Ebpf, EbpfLoader,
};
use fw_common::{
    addr6::{NetKey, HASH_FROM_ENTRIES},
    dir4, maps,
    names::{DnsProxy, Learned, Resolvers},
    port_hash::{PortHashKey, PortHashValue},
    AddrKey4, AddrKey6, Config, Counter, PhaseConfig, PolicyValue, PortKey,
};

use crate::{
    instance::paths,
    kernel::{flows::FlowTable, linkinfo},
};

/// The kernel object built by build.rs (empty when built with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fw-ebpf"));

/// The embedded kernel object (ELF), for tools that inspect it.
pub fn object() -> &'static [u8] {
    EBPF_OBJECT
}

/// The lookup benchmark's kernel object (fw-ebpf's `fw-lookup-bench`:
/// the address trie against `fw_common::dir4`), for `fw-bench` only.
#[cfg(feature = "bench")]
pub fn lookup_bench_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fw-lookup-bench"))
}

/// Map capacities chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Each address trie, and the IPv4 hosts.
    pub addr_entries: u32,
    /// Second-level chunks of the IPv4 table per phase slot.
    pub mid_chunks: u32,
    pub port_entries: u32,
    /// `FW_PORTS_HASH`, half per phase slot.
    pub port_hash_entries: u32,
    /// The protected flow table (flows this host opened, established
    /// inbound TCP); the probation table gets a share of it.
    pub flow_entries: u32,
}

impl Capacity {
    /// Entries of the probation table, for flows inbound packets open.
    pub fn inbound_flow_entries(&self) -> u32 {
        (self.flow_entries / maps::INBOUND_FLOW_SHARE).max(1)
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            addr_entries: maps::DEFAULT_ADDR_ENTRIES,
            mid_chunks: maps::DEFAULT_MID_CHUNKS,
            port_entries: maps::DEFAULT_PORT_ENTRIES,
            port_hash_entries: maps::DEFAULT_PORT_HASH_ENTRIES,
            flow_entries: maps::DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// The policy maps of an instance (fresh or reopened from pins).
pub struct PolicyMaps {
    pub config: Array<MapData, Config>,
    pub phases: Array<MapData, PhaseConfig>,
    pub addr4: LpmTrie<MapData, AddrKey4, u32>,
    /// What packets look IPv4 addresses up in (`fw_common::dir4`).
    pub addr4_top: Array<MapData, dir4::Top>,
    pub addr4_mid: Array<MapData, dir4::Chunk>,
    pub addr4_hosts: HashMap<MapData, AddrKey4, u32>,
    pub addr6: LpmTrie<MapData, AddrKey6, u32>,
    /// What packets look IPv6 addresses up in, in a phase with many
    /// (`fw_common::addr6`).
    pub addr6_nets: HashMap<MapData, NetKey, u32>,
    pub addr6_hosts: HashMap<MapData, AddrKey6, u32>,
    /// The IPv6 entries from which a phase written through these maps gets
    /// the hash ([`HASH_FROM_ENTRIES`]; tests lower it to send small
    /// policies through the hash).
    pub addr6_hash_from: usize,
    pub ports: LpmTrie<MapData, PortKey, PolicyValue>,
    /// What packets look ports up in first (`fw_common::port_hash`).
    pub ports_hash: HashMap<MapData, PortHashKey, PortHashValue>,
    /// The protected flow table, `FW_FLOWS4` and `FW_FLOWS6`.
    pub flows: FlowTable,
    /// The probation flow table, `FW_FLOWS4_IN` and `FW_FLOWS6_IN`.
    pub flows_in: FlowTable,
    /// `dns.resolvers` per `FW_PHASES` slot.
    pub resolvers: Array<MapData, Resolvers>,
}

/// The counter maps of an instance.
pub struct CounterMaps {
    pub stats: PerCpuArray<MapData, Counter>,
    pub rule_stats: PerCpuArray<MapData, Counter>,
}

/// Settings fixed at load time.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub capacity: Capacity,
    /// Drop events per second per rule (or reason) and CPU; would-drops of
    /// audit mode per destination.
    pub event_budget: u32,
    /// The network namespace whose sockets the cgroup hooks judge.
    pub netns_cookie: u64,
}

impl LoadOptions {
    /// Defaults, for the namespace this process runs in (the flow table's
    /// size from [`FLOW_ENTRIES_VAR`] when it is set).
    pub fn here() -> Result<Self> {
        let mut capacity = Capacity::default();
        if let Some(text) = std::env::var_os(FLOW_ENTRIES_VAR) {
            capacity.flow_entries = parse_flow_entries(&text.to_string_lossy())?;
        }
        Ok(Self { capacity, event_budget: maps::DEFAULT_EVENT_BUDGET, netns_cookie: netns_cookie()? })
    }
}

/// Environment variable that sizes the flow tables at load time (the
/// protected one; the probation table gets a quarter): a host with more
/// concurrent connections than the default, or a test that must fill the
/// tables quickly. Read only when an instance is loaded, not when one is
/// adopted (the pinned maps keep their size).
pub const FLOW_ENTRIES_VAR: &str = "FW_FLOW_ENTRIES";
const FLOW_ENTRIES_RANGE: std::ops::RangeInclusive<u32> = 64..=1 << 24;

fn parse_flow_entries(text: &str) -> Result<u32> {
    text.trim().parse::<u32>().ok().filter(|n| FLOW_ENTRIES_RANGE.contains(n)).ok_or_else(|| {
        anyhow!(
            "{FLOW_ENTRIES_VAR}={text:?}: expected a number of flows from {} to {}",
            FLOW_ENTRIES_RANGE.start(),
            FLOW_ENTRIES_RANGE.end()
        )
    })
}

/// Loads the object. Nothing is attached yet.
pub fn load(options: &LoadOptions) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!("this fw binary was built without its kernel object (AYA_BUILD_SKIP): rebuild with `cargo xtask build`");
    }
    let capacity = options.capacity;
    // Where autobound sockets get their ports: the socket hooks judge a UDP
    // send from one, and defer a send from any other port to TC under an
    // allowing inbound default (it may answer a flow the default served).
    let ephemeral =
        crate::source::host::ephemeral_range().unwrap_or(crate::policy::ir::PortRange { first: 32768, last: 60999 });
    EbpfLoader::new()
        .map_max_entries(maps::ADDR4, capacity.addr_entries)
        .map_max_entries(maps::ADDR4_HOSTS, capacity.addr_entries)
        .map_max_entries(maps::ADDR4_MID, 2 * capacity.mid_chunks)
        .map_max_entries(maps::ADDR6, capacity.addr_entries)
        .map_max_entries(maps::ADDR6_NETS, capacity.addr_entries)
        .map_max_entries(maps::ADDR6_HOSTS, capacity.addr_entries)
        .map_max_entries(maps::PORTS, capacity.port_entries)
        .map_max_entries(maps::PORTS_HASH, capacity.port_hash_entries)
        .map_max_entries(maps::FLOWS4, capacity.flow_entries)
        .map_max_entries(maps::FLOWS6, capacity.flow_entries)
        .map_max_entries(maps::FLOWS4_IN, capacity.inbound_flow_entries())
        .map_max_entries(maps::FLOWS6_IN, capacity.inbound_flow_entries())
        .override_global("EVENT_BUDGET", &options.event_budget, true)
        .override_global("NETNS_COOKIE", &options.netns_cookie, true)
        .override_global("EPHEMERAL_FIRST", &ephemeral.first, true)
        .override_global("EPHEMERAL_LAST", &ephemeral.last, true)
        .load(EBPF_OBJECT)
        .context("loading the fw kernel object (is bpffs mounted and are you root?)")
}

/// The cookie of the network namespace this process runs in
/// (`SO_NETNS_COOKIE`, Linux 5.14+), as `bpf_get_netns_cookie` sees it.
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // An unbound socket: it needs no address, not even a loopback that is up.
    // SAFETY: plain socket(2); the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a socket to read the network namespace cookie");
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("reading SO_NETNS_COOKIE");
    }
    Ok(cookie)
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the kernel object has no map {name}"))
}

fn open_pinned(instance: &str, name: &str) -> Result<MapData> {
    let path = paths::map_pin(instance, name);
    if !path.exists() && paths::pin_dir(instance).is_dir() {
        // Pins of another version of fw, whose maps are laid out otherwise
        // (the flow tables were split per family): never adopted, the
        // running instance keeps enforcing until it is stopped.
        bail!(
            "instance {instance} was started by another version of fw: it has no map {name} (stop it with `fw stop \
             {instance}` and start it again with this one)"
        );
    }
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl PolicyMaps {
    /// Takes the policy maps out of a freshly loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: take(ebpf, maps::CONFIG)?.try_into()?,
            phases: take(ebpf, maps::PHASES)?.try_into()?,
            addr4: take(ebpf, maps::ADDR4)?.try_into()?,
            addr4_top: take(ebpf, maps::ADDR4_TOP)?.try_into()?,
            addr4_mid: take(ebpf, maps::ADDR4_MID)?.try_into()?,
            addr4_hosts: take(ebpf, maps::ADDR4_HOSTS)?.try_into()?,
            addr6: take(ebpf, maps::ADDR6)?.try_into()?,
            addr6_nets: take(ebpf, maps::ADDR6_NETS)?.try_into()?,
            addr6_hosts: take(ebpf, maps::ADDR6_HOSTS)?.try_into()?,
            addr6_hash_from: HASH_FROM_ENTRIES,
            ports: take(ebpf, maps::PORTS)?.try_into()?,
            ports_hash: take(ebpf, maps::PORTS_HASH)?.try_into()?,
            flows: FlowTable::new(maps::FLOWS, |n| take(ebpf, n))?,
            flows_in: FlowTable::new(maps::FLOWS_IN, |n| take(ebpf, n))?,
            resolvers: take(ebpf, maps::RESOLVERS)?.try_into()?,
        })
    }

    /// Reopens the policy maps of a running instance from their pins.
    pub fn open(instance: &str) -> Result<Self> {
        Ok(Self {
            config: Array::try_from(Map::Array(open_pinned(instance, maps::CONFIG)?))?,
            phases: Array::try_from(Map::Array(open_pinned(instance, maps::PHASES)?))?,
            addr4: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::ADDR4)?))?,
            addr4_top: Array::try_from(Map::Array(open_pinned(instance, maps::ADDR4_TOP)?))?,
            addr4_mid: Array::try_from(Map::Array(open_pinned(instance, maps::ADDR4_MID)?))?,
            addr4_hosts: HashMap::try_from(Map::HashMap(open_pinned(instance, maps::ADDR4_HOSTS)?))?,
            addr6: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::ADDR6)?))?,
            addr6_nets: HashMap::try_from(Map::HashMap(open_pinned(instance, maps::ADDR6_NETS)?))?,
            addr6_hosts: HashMap::try_from(Map::HashMap(open_pinned(instance, maps::ADDR6_HOSTS)?))?,
            addr6_hash_from: HASH_FROM_ENTRIES,
            ports: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::PORTS)?))?,
            ports_hash: HashMap::try_from(Map::HashMap(open_pinned(instance, maps::PORTS_HASH)?))?,
            flows: FlowTable::new(maps::FLOWS, |n| Ok(Map::LruHashMap(open_pinned(instance, n)?)))?,
            flows_in: FlowTable::new(maps::FLOWS_IN, |n| Ok(Map::LruHashMap(open_pinned(instance, n)?)))?,
            resolvers: Array::try_from(Map::Array(open_pinned(instance, maps::RESOLVERS)?))?,
        })
    }
}

/// What the DNS proxy writes: learned addresses and where it listens.
pub struct NameMaps {
    pub names4: HashMap<MapData, [u8; 4], Learned>,
    pub names6: HashMap<MapData, [u8; 16], Learned>,
    pub proxy: Array<MapData, DnsProxy>,
}

impl NameMaps {
    pub fn open(instance: &str) -> Result<Self> {
        Ok(Self {
            names4: HashMap::try_from(Map::HashMap(open_pinned(instance, maps::NAMES4)?))?,
            names6: HashMap::try_from(Map::HashMap(open_pinned(instance, maps::NAMES6)?))?,
            proxy: Array::try_from(Map::Array(open_pinned(instance, maps::DNS_PROXY)?))?,
        })
    }

    /// Every learned address of both maps with what the kernel holds for
    /// it (live or expired but not yet swept); entries that cannot be read
    /// (removed while iterating) are skipped.
    pub fn entries(&self) -> Vec<(std::net::IpAddr, Learned)> {
        use std::net::IpAddr;
        let v4 = self.names4.iter().filter_map(|e| e.ok()).map(|(k, v)| (IpAddr::V4(k.into()), v));
        let v6 = self.names6.iter().filter_map(|e| e.ok()).map(|(k, v)| (IpAddr::V6(k.into()), v));
        v4.chain(v6).collect()
    }
}

impl CounterMaps {
    pub fn open(instance: &str) -> Result<Self> {
        Ok(Self {
            stats: PerCpuArray::try_from(Map::PerCpuArray(open_pinned(instance, maps::STATS)?))?,
            rule_stats: PerCpuArray::try_from(Map::PerCpuArray(open_pinned(instance, maps::RULE_STATS)?))?,
        })
    }

    /// Sum over CPUs of counter `index` of `map`.
    pub fn sum(map: &PerCpuArray<MapData, Counter>, index: u32) -> Result<Counter> {
        let per_cpu = map.get(&index, 0).with_context(|| format!("reading counter {index}"))?;
        Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
    }
}

/// Pins every map of a freshly loaded object under the instance directory.
pub fn pin_maps(ebpf: &Ebpf, instance: &str) -> Result<()> {
    for name in maps::ALL {
        let map = ebpf.map(name).ok_or_else(|| anyhow!("the kernel object has no map {name}"))?;
        let path = paths::map_pin(instance, name);
        map.pin(&path).with_context(|| format!("pinning map {name} at {}", path.display()))?;
    }
    Ok(())
}

/// The two hooks fw attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Egress,
    Ingress,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Egress, Hook::Ingress];

    fn program(self) -> &'static str {
        match self {
            Hook::Egress => maps::PROG_EGRESS,
            Hook::Ingress => maps::PROG_INGRESS,
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Egress => TcAttachType::Egress,
            Hook::Ingress => TcAttachType::Ingress,
        }
    }

    pub fn link_pin(self, instance: &str) -> std::path::PathBuf {
        match self {
            Hook::Egress => paths::egress_link(instance),
            Hook::Ingress => paths::ingress_link(instance),
        }
    }

    pub fn program_pin(self, instance: &str) -> std::path::PathBuf {
        match self {
            Hook::Egress => paths::egress_program(instance),
            Hook::Ingress => paths::ingress_program(instance),
        }
    }
}

/// How the programs were attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX links (kernel >= 6.6), pinned.
    Tcx,
    /// clsact filters via netlink (older kernels); they stay until removed,
    /// and (priority, handle) is how `fw stop` finds exactly ours again.
    Clsact { egress: (u16, u32), ingress: (u16, u32) },
}

/// The kernel object being loaded, and both classifiers verified, on
/// threads of their own: the verifier's second does not depend on the
/// policy, so `fw run` starts it before it parses and compiles the policy
/// (seconds for a 100,000-rule allowlist) instead of after. Nothing is
/// pinned or attached: dropped unused, it leaves nothing in the kernel.
pub struct Preloading(std::thread::JoinHandle<Result<Ebpf>>);

impl Preloading {
    pub fn start(options: LoadOptions) -> Self {
        Self(std::thread::spawn(move || {
            let mut ebpf = load(&options)?;
            load_classifiers(&mut ebpf)?;
            Ok(ebpf)
        }))
    }

    /// The loaded object, its classifiers verified.
    pub fn wait(self) -> Result<Ebpf> {
        self.0.join().map_err(|_| anyhow!("loading the kernel object panicked"))?
    }
}

/// Loads the two classifiers into the kernel, each on its own thread: the
/// verifier walks about 450,000 instructions of each (a second apiece on
/// the machines of BENCHMARKS.md, whatever the policy), and two walks on
/// two cores take the time of one. [`attach`] then finds them loaded.
pub fn load_classifiers(ebpf: &mut Ebpf) -> Result<()> {
    let mut classifiers = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        if Hook::ALL.iter().any(|h| h.program() == name) {
            let program: &mut SchedClassifier = program.try_into()?;
            classifiers.push((name, program));
        }
    }
    std::thread::scope(|scope| {
        let loads: Vec<_> = classifiers
            .into_iter()
            .map(|(name, program)| {
                scope.spawn(move || program.load().with_context(|| format!("the kernel verifier rejected {name}")))
            })
            .collect();
        loads.into_iter().try_for_each(|load| load.join().map_err(|_| anyhow!("a program load panicked"))?)
    })
}

/// Loads both programs into the kernel (unless [`load_classifiers`] did) and attaches them to `iface`,
/// pinning the links so that enforcement survives this process, and the
/// programs so that [`reattach`] can attach them to the interface again if
/// it is deleted and created anew. Ingress is attached first: by the time
/// egress enforces, inbound flows are tracked.
pub fn attach(ebpf: &mut Ebpf, instance: &str, iface: &str) -> Result<AttachMode> {
    let mut clsact = Vec::new();
    for hook in [Hook::Ingress, Hook::Egress] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(hook.program())
            .ok_or_else(|| anyhow!("the kernel object has no program {}", hook.program()))?
            .try_into()?;
        if program.fd().is_err() {
            program.load().with_context(|| format!("the kernel verifier rejected {}", hook.program()))?;
        }
        let pin = hook.program_pin(instance);
        program.pin(&pin).with_context(|| format!("pinning {} at {}", hook.program(), pin.display()))?;
        clsact.extend(attach_hook(program, hook, instance, iface)?);
    }
    attach_mode(iface, &clsact)
}

/// Attaches the pinned programs of `instance` to `iface` again. When an
/// interface is deleted the kernel detaches its TCX links (their pins stay,
/// defunct) and removes its clsact filters; when one with the same name is
/// created, this attaches the same programs to it, with the same pinned
/// maps: the policy, its generation and the tracked flows carry over, and
/// nothing is loaded or verified again. A hook whose TCX link is live on
/// `iface` already is left as it is, so this is safe to call when in doubt.
pub fn reattach(instance: &str, iface: &str) -> Result<AttachMode> {
    let ifindex =
        linkinfo::ifindex_of(iface).ok_or_else(|| anyhow!("no interface named {iface} in this network namespace"))?;
    let mut clsact = Vec::new();
    for hook in [Hook::Ingress, Hook::Egress] {
        let live = linkinfo::tcx_link_info(&hook.link_pin(instance))?;
        if live.is_some_and(|link| link.ifindex == ifindex) {
            continue;
        }
        let pin = hook.program_pin(instance);
        let mut program =
            SchedClassifier::from_pin(&pin).with_context(|| format!("opening the pinned program {}", pin.display()))?;
        clsact.extend(attach_hook(&mut program, hook, instance, iface)?);
    }
    attach_mode(iface, &clsact)
}

/// Whether the TC programs of `instance`, attached with `mode` to the
/// interface that had index `recorded_ifindex`, are attached to the
/// interface called `iface` in this namespace right now. TCX: both pinned
/// links are live and on `iface`'s index. clsact filters cannot be read back
/// that way, but they die with their interface: for them, `iface` still has
/// the recorded index.
pub fn attached_to(instance: &str, mode: AttachMode, recorded_ifindex: u32, iface: &str) -> Result<bool> {
    let Some(current) = linkinfo::ifindex_of(iface) else {
        return Ok(false);
    };
    if mode != AttachMode::Tcx {
        return Ok(current == recorded_ifindex);
    }
    for hook in Hook::ALL {
        match linkinfo::tcx_link_info(&hook.link_pin(instance))? {
            Some(link) if link.ifindex == current => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Pins the programs of an instance started by an fw that did not pin them,
/// taking them from its TCX links (a defunct link still holds its program),
/// so that [`reattach`] works for it too. Nothing to do when they are pinned.
pub fn ensure_program_pins(instance: &str) -> Result<()> {
    for hook in Hook::ALL {
        let pin = hook.program_pin(instance);
        if pin.exists() {
            continue;
        }
        let link = linkinfo::tcx_link_info(&hook.link_pin(instance))?
            .ok_or_else(|| anyhow!("{} is not pinned and there is no TCX link to take it from", pin.display()))?;
        linkinfo::pin_program(link.program_id, &pin)?;
    }
    Ok(())
}

/// Attaches one loaded program to `iface` with a TCX link (pinned), or a
/// clsact filter on kernels without TCX; returns the filter's (priority,
/// handle) in the latter case.
fn attach_hook(program: &mut SchedClassifier, hook: Hook, instance: &str, iface: &str) -> Result<Option<(u16, u32)>> {
    let tcx = program.attach_with_options(iface, hook.attach_type(), TcAttachOptions::TcxOrder(LinkOrder::default()));
    match tcx {
        Ok(link_id) => {
            let link: FdLink = program.take_link(link_id)?.try_into()?;
            pin_link(link, &hook.link_pin(instance))?;
            Ok(None)
        }
        Err(tcx_err) => {
            // Kernels before 6.6 have no TCX: a clsact filter persists
            // on its own after we exit (also fail closed).
            let _ = tc::qdisc_add_clsact(iface);
            let link_id = program.attach(iface, hook.attach_type()).map_err(|e| {
                anyhow!("attaching {} to {iface}: TCX failed ({tcx_err}), clsact failed ({e})", hook.program())
            })?;
            let link = program.take_link(link_id)?;
            let filter = (link.priority()?, u32::from(link.handle()?));
            // Keep the filter attached when the link handle is dropped.
            std::mem::forget(link);
            Ok(Some(filter))
        }
    }
}

/// Pins `link` at `path`, replacing whatever is pinned there in one rename:
/// a defunct link's pin is never missing before the new one is in place.
fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    // bpffs refuses names with a dot.
    let mut staged = path.as_os_str().to_owned();
    staged.push("_new");
    let staged = std::path::PathBuf::from(staged);
    // A leftover of an attempt that died between pin and rename.
    let _ = fs::remove_file(&staged);
    link.pin(&staged).with_context(|| format!("pinning the link at {}", staged.display()))?;
    fs::rename(&staged, path).with_context(|| format!("moving the link pin {} to {}", staged.display(), path.display()))
}

fn attach_mode(iface: &str, clsact: &[(u16, u32)]) -> Result<AttachMode> {
    Ok(match clsact {
        [] => AttachMode::Tcx,
        [ingress, egress] => AttachMode::Clsact { egress: *egress, ingress: *ingress },
        _ => bail!("{iface}: one hook attached with TCX and the other with clsact; run `fw stop` and retry"),
    })
}

/// Detaches the instance (unpinning a link releases it) and removes its
/// pins. Safe to call on a half-created instance.
pub fn detach(instance: &str, iface: Option<&str>, mode: Option<AttachMode>) -> Result<()> {
    for link_path in paths::link_pins(instance)? {
        crate::instance::failpoint::step("unpin link");
        match PinnedLink::from_pin(&link_path) {
            // Unpinning drops the last reference once the fd closes: the
            // kernel detaches the program.
            Ok(pinned) => drop(pinned.unpin().with_context(|| format!("unpinning {}", link_path.display()))?),
            Err(_) if !link_path.exists() => {}
            Err(e) => return Err(e).with_context(|| format!("opening {}", link_path.display())),
        }
    }
    if let (Some(iface), Some(AttachMode::Clsact { egress, ingress })) = (iface, mode) {
        for (hook, (priority, handle)) in [(Hook::Egress, egress), (Hook::Ingress, ingress)] {
            SchedClassifierLink::attached(iface, hook.attach_type(), priority, handle.into(), None)
                .with_context(|| format!("finding the clsact filter on {iface}"))?
                .detach()
                .with_context(|| format!("removing the clsact filter from {iface}"))?;
        }
    }
    remove_pin_dir(&paths::pin_dir(instance))
}

/// The cgroup socket hooks and the pin of each one's link.
const SOCKET_HOOKS: [&str; 8] = [
    maps::PROG_CONNECT4,
    maps::PROG_CONNECT6,
    maps::PROG_SENDMSG4,
    maps::PROG_SENDMSG6,
    maps::PROG_RECVMSG4,
    maps::PROG_RECVMSG6,
    maps::PROG_GETPEERNAME4,
    maps::PROG_GETPEERNAME6,
];

/// Attaches the cgroup socket hooks to the cgroup v2 directory `cgroup`
/// (they apply to its whole subtree), pinning their links.
pub fn attach_cgroup(ebpf: &mut Ebpf, instance: &str, cgroup: &Path) -> Result<()> {
    let dir = fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    for name in SOCKET_HOOKS {
        let program: &mut CgroupSockAddr =
            ebpf.program_mut(name).ok_or_else(|| anyhow!("the kernel object has no program {name}"))?.try_into()?;
        program.load().with_context(|| format!("the kernel verifier rejected {name}"))?;
        // A BPF link never displaces other programs (systemd's, another fw
        // instance's): links always stack, and link_create takes no
        // attach flags, which is what `Single` passes.
        let link_id = program
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {}", cgroup.display()))?;
        let link: FdLink = program.take_link(link_id)?.try_into()?;
        let path = paths::link_pin(instance, name);
        link.pin(&path).with_context(|| format!("pinning the link at {}", path.display()))?;
    }
    Ok(())
}

/// The maps filled from the routing table (see `routes`).
pub struct RouteMaps {
    pub bypass4: LpmTrie<MapData, [u8; 4], u8>,
    pub bypass6: LpmTrie<MapData, [u8; 16], u8>,
    pub onlink6: LpmTrie<MapData, [u8; 16], u8>,
}

impl RouteMaps {
    pub fn open(instance: &str) -> Result<Self> {
        Ok(Self {
            bypass4: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::BYPASS4)?))?,
            bypass6: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::BYPASS6)?))?,
            onlink6: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::ONLINK6)?))?,
        })
    }

    /// Rewrites all three from the routing tables of `iface`'s namespace.
    pub fn refresh(&mut self, iface: &str) -> Result<()> {
        let table = crate::kernel::routes::Table::read()?;
        // A missing interface (0) is enforced nowhere: every route with an
        // output interface leaves through another one.
        let ifindex = crate::kernel::linkinfo::ifindex_of(iface).unwrap_or(0);
        let bypass = table.bypass_prefixes(ifindex);
        replace_prefixes(&mut self.bypass4, bypass.iter().filter_map(v4_key))?;
        replace_prefixes(&mut self.bypass6, bypass.iter().filter_map(v6_key))?;
        replace_prefixes(&mut self.onlink6, table.onlink6_prefixes(ifindex).iter().filter_map(v6_key))?;
        Ok(())
    }
}

fn v4_key(net: &ipnet::IpNet) -> Option<([u8; 4], u8)> {
    match net {
        ipnet::IpNet::V4(n) => Some((n.network().octets(), n.prefix_len())),
        ipnet::IpNet::V6(_) => None,
    }
}

fn v6_key(net: &ipnet::IpNet) -> Option<([u8; 16], u8)> {
    match net {
        ipnet::IpNet::V6(n) => Some((n.network().octets(), n.prefix_len())),
        ipnet::IpNet::V4(_) => None,
    }
}

/// Makes `trie` hold exactly `prefixes`: new ones inserted first, then the
/// stale ones removed, so a prefix that stays is never missing.
fn replace_prefixes<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u8>,
    prefixes: impl Iterator<Item = ([u8; N], u8)>,
) -> Result<()> {
    use aya::maps::lpm_trie::Key;
    let wanted: std::collections::BTreeSet<([u8; N], u8)> = prefixes.collect();
    let present: Vec<Key<[u8; N]>> = trie.keys().filter_map(|k| k.ok()).collect();
    for (addr, len) in &wanted {
        trie.insert(&Key::new(u32::from(*len), *addr), 1, 0)?;
    }
    for key in present {
        if !wanted.contains(&(key.data(), key.prefix_len() as u8)) {
            trie.remove(&key)?;
        }
    }
    Ok(())
}

fn remove_pin_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                fs::remove_file(entry.path()).with_context(|| format!("removing pin {}", entry.path().display()))?;
            }
            fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// What the verifier made of one program.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VerifiedProgram {
    pub name: String,
    /// Instructions after the verifier's rewrites.
    pub instructions: u32,
    /// Instructions the verifier walked (the kernel's complexity bound is
    /// 1,000,000): what its time is proportional to.
    pub processed: u32,
    /// Wall time of the load, verification included.
    pub load_time: std::time::Duration,
}

/// Loads every program (without attaching it) and says what the verifier
/// made of each.
pub fn verified_programs() -> Result<Vec<VerifiedProgram>> {
    let mut ebpf = load(&LoadOptions::here()?)?;
    let mut verified = Vec::new();
    for (name, program) in ebpf.programs_mut() {
        let started = std::time::Instant::now();
        let info = match program {
            aya::programs::Program::SchedClassifier(p) => {
                p.load().with_context(|| format!("the kernel verifier rejected {name}"))?;
                p.info()?
            }
            aya::programs::Program::CgroupSockAddr(p) => {
                p.load().with_context(|| format!("the kernel verifier rejected {name}"))?;
                p.info()?
            }
            _ => continue,
        };
        verified.push(VerifiedProgram {
            name: name.to_string(),
            instructions: info.size_translated().unwrap_or(0) / 8,
            processed: info.verified_instruction_count().unwrap_or(0),
            load_time: started.elapsed(),
        });
    }
    verified.sort();
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_table_size_is_a_bounded_number() {
        assert_eq!(parse_flow_entries("4096").unwrap(), 4096);
        assert_eq!(parse_flow_entries(" 65536\n").unwrap(), 65536);
        for bad in ["", "abc", "-1", "63", "16777217", "1e6"] {
            let err = parse_flow_entries(bad).unwrap_err().to_string();
            assert!(err.starts_with("FW_FLOW_ENTRIES="), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
