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
        links::{FdLink, Link, PinnedLink},
        tc::{self, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType},
        LinkOrder,
    },
    Ebpf, EbpfLoader,
};
use fw_common::{maps, AddrKey4, AddrKey6, Config, Counter, FlowKey, FlowValue, PhaseConfig, PolicyValue, PortKey};

use crate::paths;

/// The kernel object built by build.rs (empty when built with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fw-ebpf"));

/// Map capacities chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub addr_entries: u32,
    pub port_entries: u32,
    pub flow_entries: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            addr_entries: maps::DEFAULT_ADDR_ENTRIES,
            port_entries: maps::DEFAULT_PORT_ENTRIES,
            flow_entries: maps::DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// The policy maps of an instance (fresh or reopened from pins).
pub struct PolicyMaps {
    pub config: Array<MapData, Config>,
    pub phases: Array<MapData, PhaseConfig>,
    pub addr4: LpmTrie<MapData, AddrKey4, u32>,
    pub addr6: LpmTrie<MapData, AddrKey6, u32>,
    pub ports: LpmTrie<MapData, PortKey, PolicyValue>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
}

/// The counter maps of an instance.
pub struct CounterMaps {
    pub stats: PerCpuArray<MapData, Counter>,
    pub rule_stats: PerCpuArray<MapData, Counter>,
}

/// Loads the object with the given capacities. Nothing is attached yet.
pub fn load(capacity: Capacity) -> Result<Ebpf> {
    if EBPF_OBJECT.is_empty() {
        bail!("this fw binary was built without its kernel object (AYA_BUILD_SKIP): rebuild with `cargo xtask build`");
    }
    EbpfLoader::new()
        .map_max_entries(maps::ADDR4, capacity.addr_entries)
        .map_max_entries(maps::ADDR6, capacity.addr_entries)
        .map_max_entries(maps::PORTS, capacity.port_entries)
        .map_max_entries(maps::FLOWS, capacity.flow_entries)
        .load(EBPF_OBJECT)
        .context("loading the fw kernel object (is bpffs mounted and are you root?)")
}

fn take(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| anyhow!("the kernel object has no map {name}"))
}

fn open_pinned(instance: &str, name: &str) -> Result<MapData> {
    let path = paths::map_pin(instance, name);
    MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))
}

impl PolicyMaps {
    /// Takes the policy maps out of a freshly loaded object.
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: take(ebpf, maps::CONFIG)?.try_into()?,
            phases: take(ebpf, maps::PHASES)?.try_into()?,
            addr4: take(ebpf, maps::ADDR4)?.try_into()?,
            addr6: take(ebpf, maps::ADDR6)?.try_into()?,
            ports: take(ebpf, maps::PORTS)?.try_into()?,
            flows: take(ebpf, maps::FLOWS)?.try_into()?,
        })
    }

    /// Reopens the policy maps of a running instance from their pins.
    pub fn open(instance: &str) -> Result<Self> {
        Ok(Self {
            config: Array::try_from(Map::Array(open_pinned(instance, maps::CONFIG)?))?,
            phases: Array::try_from(Map::Array(open_pinned(instance, maps::PHASES)?))?,
            addr4: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::ADDR4)?))?,
            addr6: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::ADDR6)?))?,
            ports: LpmTrie::try_from(Map::LpmTrie(open_pinned(instance, maps::PORTS)?))?,
            flows: HashMap::try_from(Map::LruHashMap(open_pinned(instance, maps::FLOWS)?))?,
        })
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

/// Loads both programs into the kernel and attaches them to `iface`,
/// pinning the links so that enforcement survives this process. Ingress is
/// attached first: by the time egress enforces, inbound flows are tracked.
pub fn attach(ebpf: &mut Ebpf, instance: &str, iface: &str) -> Result<AttachMode> {
    let mut clsact = Vec::new();
    for hook in [Hook::Ingress, Hook::Egress] {
        let program: &mut SchedClassifier = ebpf
            .program_mut(hook.program())
            .ok_or_else(|| anyhow!("the kernel object has no program {}", hook.program()))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("the kernel verifier rejected {}", hook.program()))?;
        let tcx = program.attach_with_options(
            iface,
            hook.attach_type(),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        );
        match tcx {
            Ok(link_id) => {
                let link: FdLink = program.take_link(link_id)?.try_into()?;
                let path = hook.link_pin(instance);
                link.pin(&path).with_context(|| format!("pinning the link at {}", path.display()))?;
            }
            Err(tcx_err) => {
                // Kernels before 6.6 have no TCX: a clsact filter persists
                // on its own after we exit (also fail closed).
                let _ = tc::qdisc_add_clsact(iface);
                let link_id = program.attach(iface, hook.attach_type()).map_err(|e| {
                    anyhow!("attaching {} to {iface}: TCX failed ({tcx_err}), clsact failed ({e})", hook.program())
                })?;
                let link = program.take_link(link_id)?;
                clsact.push((link.priority()?, u32::from(link.handle()?)));
                // Keep the filter attached when the link handle is dropped.
                std::mem::forget(link);
            }
        }
    }
    Ok(match clsact.as_slice() {
        [] => AttachMode::Tcx,
        [ingress, egress] => AttachMode::Clsact { egress: *egress, ingress: *ingress },
        _ => bail!("{iface}: one hook attached with TCX and the other with clsact; run `fw stop` and retry"),
    })
}

/// Detaches the instance (unpinning a link releases it) and removes its
/// pins. Safe to call on a half-created instance.
pub fn detach(instance: &str, iface: Option<&str>, mode: Option<AttachMode>) -> Result<()> {
    for hook in Hook::ALL {
        let link_path = hook.link_pin(instance);
        match PinnedLink::from_pin(&link_path) {
            // Unpinning drops the last reference once the fd closes: the
            // kernel detaches the program from the interface.
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

fn remove_pin_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                fs::remove_file(entry.path())
                    .with_context(|| format!("removing pin {}", entry.path().display()))?;
            }
            fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Loads both programs (without attaching them) and returns the number of
/// instructions each has after verification.
pub fn verified_instruction_counts() -> Result<Vec<(&'static str, u32)>> {
    let mut ebpf = load(Capacity::default())?;
    let mut counts = Vec::new();
    for hook in Hook::ALL {
        let program: &mut SchedClassifier = ebpf
            .program_mut(hook.program())
            .ok_or_else(|| anyhow!("the kernel object has no program {}", hook.program()))?
            .try_into()?;
        program.load().with_context(|| format!("the kernel verifier rejected {}", hook.program()))?;
        let bytes = program.info()?.size_translated().unwrap_or(0);
        counts.push((hook.program(), bytes / 8));
    }
    Ok(counts)
}
