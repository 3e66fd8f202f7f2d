use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::Ordering,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use super::{duration, target::require_root};
use crate::{
    daemon::dns,
    daemon::events::{
        reader::{EventReader, Sink},
        DecodeError, Event,
    },
    daemon::learn::{self, Tally},
    instance::paths,
    instance::{self, records::PolicyCopy, StartRequest},
    kernel::{
        cgroup,
        loader::{CounterMaps, LoadOptions, Preloading},
    },
    source,
};

/// The learning instance's policy: one phase, audit mode, no egress rule,
/// so every new outbound flow is a would-drop event (and passes). Inbound
/// stays `allow`, which serves: what a peer opens is a flow, and the
/// replies to it are not events.
const LEARNING_POLICY: &str = "name: learning\nphases:\n  learning:\n    mode: audit\n";
/// The same with socket hooks: DNS to the system resolvers goes through
/// this process's proxy, which forwards it unchanged and reports each
/// answer, so connections that follow an answer are learned by name. DNS
/// to other servers passes as a would-drop (audit mode), as does DNS to
/// the resolvers before the proxy listens.
const LEARNING_POLICY_DNS: &str =
    "name: learning\nphases:\n  learning:\n    mode: audit\n    dns: { resolvers: [system] }\n";
const LEARNING_PHASE: &str = "learning";
/// Would-drop events per second per destination (address, port, protocol)
/// and CPU while learning. Audit mode tracks flows, so an event is a new
/// flow, not a packet: a download is one event, and a destination that
/// opens more than this many flows a second was learned by its first.
const LEARN_EVENT_BUDGET: u32 = 100;
/// How often the flow tables are sampled for what this host serves.
const SERVED_SAMPLE: Duration = Duration::from_secs(2);

/// Watch what this host connects to and write it as a policy: starts a
/// temporary instance on IFACE in audit mode with no egress rule (nothing is
/// blocked), records every new outbound flow with the process, container
/// and destination behind it, then writes a phase that allows exactly
/// those flows (one rule per program, container and destination, ports
/// folded into ranges, a comment on who used each and how often). With
/// socket hooks (--cgroup), DNS goes through a proxy that forwards it
/// unchanged and notes the answers: a destination reached after an answer
/// is written as the name, with `dns: { resolvers: [system] }`. Runs for
/// --duration or until Ctrl-C; the temporary instance is removed either way.
#[derive(Args, Debug)]
pub struct LearnArgs {
    /// Interface to watch.
    #[arg(long)]
    pub iface: String,
    /// Name of the phase to write.
    #[arg(long, default_value = "learned")]
    pub phase: String,
    /// A policy file to add the learned phase to (its `phases:` must be its
    /// last top-level key). Default: write a policy of its own.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// How long to watch (30s, 10m, 2h...; at most 365d). Default: until Ctrl-C.
    #[arg(long, value_parser = duration::parse)]
    pub duration: Option<Duration>,
    /// cgroup v2 directory whose processes are named in the learned rules
    /// (connect()/sendmsg() hooks), or `none`: same default as `fw run`.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Where to write the policy (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Name of the temporary instance (default: learn-IFACE).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn learn(args: LearnArgs) -> Result<ExitCode> {
    require_root("fw learn")?;
    let name = args.name.clone().unwrap_or_else(|| format!("learn-{}", args.iface));
    paths::validate_name(&name).map_err(anyhow::Error::msg).context("--name")?;
    if paths::pin_dir(&name).exists() {
        bail!("an instance named {name} exists: pick another --name, or `fw stop --name {name}`");
    }
    let base = args.policy.as_deref().map(read_base).transpose()?;
    if let Some((path, _)) = &base {
        check_phase_is_new(path, &args.phase)?;
    }
    instance::ifindex(&args.iface)?;
    let cgroup = cgroup::resolve(args.cgroup.as_deref())?;
    let options = LoadOptions { event_budget: LEARN_EVENT_BUDGET, ..LoadOptions::here()? };
    let kernel = Preloading::start(options);
    let policy_text = if cgroup.is_some() { LEARNING_POLICY_DNS } else { LEARNING_POLICY };
    let copy = PolicyCopy { policy_text: policy_text.to_string(), env_text: None };
    let loaded = source::load_phase_text("builtin:learning", None, copy, LEARNING_PHASE)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _guard = runtime.enter();
    // Taken over before the instance exists: a Ctrl-C from here on stops
    // learning and removes the instance instead of killing the process.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;

    let mut temporary = Temporary { name: name.clone(), started: false };
    let state = instance::start(StartRequest {
        name: name.clone(),
        iface: args.iface.clone(),
        loaded,
        phase: LEARNING_PHASE.to_string(),
        audit: true,
        cgroup,
        kernel,
        ephemeral: true,
    })?;
    temporary.started = true;
    let (answers_tx, answers) = tokio::sync::mpsc::unbounded_channel();
    let watching = match &state.cgroup {
        None => {
            eprintln!(
                "fw: no socket hooks (--cgroup none): DNS answers cannot be seen, so destinations are learned as \
                 addresses, not names"
            );
            false
        }
        Some(_) => match runtime.block_on(dns::watch(&name, answers_tx)) {
            Ok(_) => true,
            Err(e) => {
                eprintln!(
                    "fw: warning: DNS answers cannot be seen ({e:#}; another proxy on this port? set {}): \
                     destinations are learned as addresses, not names",
                    dns::PORT_VAR
                );
                false
            }
        },
    };
    let hooks = state
        .cgroup
        .as_deref()
        .map_or("no socket hooks: processes are not named".into(), |c| format!("processes in cgroup {c}"));
    eprintln!(
        "fw: learning what {} connects to ({hooks}), {}; nothing is blocked",
        args.iface,
        args.duration.map_or("until Ctrl-C".into(), |d| format!("for {}s or until Ctrl-C", d.as_secs()))
    );

    let mut learner = AnswersFirst { tally: Tally::default(), answers };
    let before = event_counts(&name)?;
    runtime.block_on(async {
        let mut reader = EventReader::open(&name)?;
        let deadline = async {
            match args.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut sample = tokio::time::interval(SERVED_SAMPLE);
        loop {
            tokio::select! {
                batch = reader.next_batch(&mut learner) => batch?,
                _ = sample.tick() => {
                    learner.take_answers();
                    sample_served(&name, &mut learner.tally).await
                }
                _ = &mut deadline => break,
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
            }
        }
        // What the kernel submitted up to now, still unread, and what the
        // tables hold now.
        reader.drain(&mut learner);
        learner.take_answers();
        sample_served(&name, &mut learner.tally).await;
        anyhow::Ok(())
    })?;
    let after = event_counts(&name)?;
    // The learning phase has `dns:` whenever hooks are attached, proxy or
    // not: DNS to the system resolvers passes as such on the wire.
    let resolver_packets = if state.cgroup.is_some() { resolver_packets(&name)? } else { 0 };
    temporary.stop()?;

    let tally = learner.tally;
    let rules = tally.rules();
    let served = tally.served();
    let queries = if watching { dns::stats().map_or(0, |s| s.queries.load(Ordering::Relaxed)) } else { 0 };
    // DNS to the system resolvers produced no event, whether it went
    // through the proxy (the hooked cgroup's) or only by the wire (other
    // processes, containers): the learned phase allows it with `dns:`,
    // which name rules need anyway.
    let (resolvers, left_out) = learn::learned_resolvers(&tally.dns_servers());
    let resolvers = (queries > 0 || resolver_packets > 0).then_some(resolvers);
    let named = rules.iter().filter(|r| matches!(r.to, learn::To::Name(_))).count();
    let unseen = Unseen { suppressed: after.0 - before.0, lost: after.1 - before.1, undecodable: tally.undecodable };
    let header = format!(
        "# Learned by `fw learn --iface {}`: {} destinations in {} rules ({} by DNS name); {} served protocols.\n\
         # DNS: {} queries through fw's proxy, {} answers seen, {} packets to the system resolvers.\n\
         # Events: {} read, {} over the per-destination budget, {} lost (ring buffer full).\n\
         # Each rule allows exactly what was seen; review before enforcing.\n",
        args.iface,
        tally.destinations(),
        rules.len(),
        named,
        served.len(),
        queries,
        tally.answers_seen,
        resolver_packets,
        after.2 - before.2,
        unseen.suppressed,
        unseen.lost,
    );
    let text = match &base {
        None => learn::policy_yaml(&header, &args.phase, &rules, &served, resolvers.as_deref()),
        Some((path, base)) => learn::append_phase(base, &header, &args.phase, &rules, &served, resolvers.as_deref())
            .map_err(|e| anyhow::anyhow!("cannot add the learned phase to {}: {e}", path.display()))?,
    };
    write_checked(&text, &args.phase, args.output.as_deref(), &name)?;
    for warning in unseen.warnings() {
        eprintln!("fw: warning: {warning}");
    }
    if resolvers.is_some() && !left_out.is_empty() {
        let list: Vec<String> = left_out.iter().map(ToString::to_string).collect();
        eprintln!(
            "fw: warning: DNS servers asked directly and left out of `dns.resolvers` (at most 4 IPv4 and 2 IPv6): {}; \
             DNS to them will be refused",
            list.join(", ")
        );
    }
    if tally.unusable_names > 0 {
        eprintln!(
            "fw: {} answers were for names a rule cannot name exactly (a `*` label, a character the policy language \
             refuses): what followed them is learned as addresses",
            tally.unusable_names
        );
    }
    if tally.answers_overflow > 0 {
        eprintln!(
            "fw: warning: {} answered addresses were not remembered (too many): connections to them are learned as \
             addresses",
            tally.answers_overflow
        );
    }
    if tally.inbound_overflow > 0 {
        eprintln!(
            "fw: warning: {} flows peers opened were not remembered (the first {} were): replies to them may be learned as egress",
            tally.inbound_overflow,
            500_000
        );
    }
    eprintln!(
        "fw: learned {} rules{}",
        rules.len(),
        args.output.as_ref().map(|p| format!(", written to {}", p.display())).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// The tally, fed the proxy's answers before each event (and on each
/// sample tick, which bounds the queue). An answer is queued before it is
/// released to the application, so by the time the event of a connection
/// that followed it is read, the answer is here.
struct AnswersFirst {
    tally: Tally,
    answers: tokio::sync::mpsc::UnboundedReceiver<dns::Answered>,
}

impl AnswersFirst {
    fn take_answers(&mut self) {
        while let Ok(answered) = self.answers.try_recv() {
            self.tally.record_answer(&answered);
        }
    }
}

impl Sink for AnswersFirst {
    fn next_seq(&mut self) -> u64 {
        self.tally.next_seq()
    }

    fn push(&mut self, event: Event) {
        self.take_answers();
        self.tally.push(event);
    }

    fn push_at(&mut self, event: Event, time_ns: u64) {
        self.take_answers();
        self.tally.push_at(event, time_ns);
    }

    fn undecodable(&mut self, error: DecodeError) {
        self.tally.undecodable(error);
    }
}

/// The policy to add the learned phase to: a regular file under the size
/// limit, like every policy (a FIFO or /dev/zero must not hang or fill
/// memory).
fn read_base(path: &Path) -> Result<(PathBuf, String)> {
    let text = crate::source::file::read_text(path, &path.display().to_string())?;
    Ok((path.to_path_buf(), text))
}

/// Fails before learning, not after, when the phase to write exists.
fn check_phase_is_new(path: &Path, phase: &str) -> Result<()> {
    let (_, loaded, _) = source::load_policy(&path.display().to_string(), None)?;
    if loaded.policy.phase(phase).is_some() {
        bail!("{} already has a phase {phase}: pick another --phase", path.display());
    }
    Ok(())
}

/// Checks `text` the way `fw check` does (parse, compile the phase, fit
/// the maps), then writes it to `output` or prints it.
fn write_checked(text: &str, phase: &str, output: Option<&Path>, name: &str) -> Result<()> {
    let draft = match output {
        Some(path) => path.with_extension(format!("tmp.{}", std::process::id())),
        None => PathBuf::from(paths::RUN_DIR).join(format!("{name}.learned.yaml")),
    };
    std::fs::write(&draft, text).with_context(|| format!("writing {}", draft.display()))?;
    let checked = source::load_phase(&draft.display().to_string(), None, phase);
    let result = match (checked, output) {
        (Err(e), _) => Err(e.context("the learned policy does not pass `fw check` (a bug in fw learn)")),
        (Ok(_), Some(path)) => std::fs::rename(&draft, path).with_context(|| format!("writing {}", path.display())),
        (Ok(_), None) => {
            print!("{text}");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&draft);
    result
}

/// The learning instance: stopped and removed when learning ends, fails or
/// is interrupted.
struct Temporary {
    name: String,
    started: bool,
}

impl Temporary {
    fn stop(&mut self) -> Result<()> {
        if std::mem::take(&mut self.started) {
            instance::stop(&self.name, true)?;
        }
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "fw: removing the learning instance {}: {e:#} (`fw stop --name {}` retries)",
                self.name, self.name
            );
        }
    }
}

/// Events the learning did not read.
#[derive(Debug, Default, PartialEq, Eq)]
struct Unseen {
    /// Over a destination's budget: that destination sent at least its
    /// first event in the same second, so it is learned; its count of uses
    /// is low.
    suppressed: u64,
    /// The ring buffer was full: these may be destinations never seen.
    lost: u64,
    undecodable: u64,
}

impl Unseen {
    /// What the operator must know about what learning could not see.
    fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(format!(
                "{} events were lost (the ring buffer was full): destinations seen only in them are missing from the \
                 learned policy; learn again at a quieter time, or for longer",
                self.lost
            ));
        }
        if self.suppressed > 0 {
            out.push(format!(
                "{} events were over a destination's budget ({LEARN_EVENT_BUDGET} a second per CPU): every destination \
                 was learned, the counts of uses in the comments are low",
                self.suppressed
            ));
        }
        if self.undecodable > 0 {
            out.push(format!(
                "{} events could not be decoded (is this fw older than its kernel object?)",
                self.undecodable
            ));
        }
        out
    }
}

/// Packets to the phase's resolvers the TC program passed as such
/// (`pass_resolver`: DNS to the system resolvers while watching, the
/// proxy's and other processes'), which are no events.
fn resolver_packets(name: &str) -> Result<u64> {
    use fw_common::{stats::stats_index, Direction, Reason};
    let maps = CounterMaps::open(name)?;
    let mut packets = 0;
    for slot in [0, 1] {
        let index = stats_index(slot, Direction::Egress, Reason::PassResolver);
        packets += CounterMaps::sum(&maps.stats, index)?.packets;
    }
    Ok(packets)
}

/// (suppressed, lost, emitted) events of instance `name` so far.
fn event_counts(name: &str) -> Result<(u64, u64, u64)> {
    use aya::maps::{Map, MapData, PerCpuArray};
    use fw_common::event::event_stats;
    let path = paths::map_pin(name, fw_common::maps::EVENT_STATS);
    let map = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let stats = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(map))?;
    let sum = |i: u32| -> Result<u64> { Ok(stats.get(&i, 0)?.iter().sum()) };
    Ok((sum(event_stats::SUPPRESSED)?, sum(event_stats::LOST)?, sum(event_stats::EMITTED)?))
}

/// The flows peers opened (the inbound entries of both flow tables) and
/// the TCP ports this host listens on, into `tally`. Read on the blocking
/// pool: a full table takes a while, and events must keep being read.
async fn sample_served(name: &str, tally: &mut Tally) {
    let name = name.to_string();
    let read = tokio::task::spawn_blocking(move || -> Result<(Vec<InboundFlow>, Vec<u16>)> {
        Ok((inbound_flows(&name)?, listening_tcp_ports()))
    })
    .await;
    match read {
        Ok(Ok((flows, listening))) => {
            for f in flows {
                tally.observe_inbound(&f.proto, f.local_port, f.peer, f.peer_port);
            }
            for port in listening {
                tally.observe_listening(port);
            }
        }
        Ok(Err(e)) => eprintln!("fw: reading the flow tables: {e:#}"),
        Err(e) => eprintln!("fw: reading the flow tables: {e}"),
    }
}

struct InboundFlow {
    proto: String,
    local_port: u16,
    peer: std::net::IpAddr,
    peer_port: u16,
}

fn inbound_flows(name: &str) -> Result<Vec<InboundFlow>> {
    use aya::maps::{Map, MapData};
    use fw_common::flow::FLOW_INBOUND;
    let mut out = Vec::new();
    for table in [fw_common::maps::FLOWS, fw_common::maps::FLOWS_IN] {
        let flows = crate::kernel::flows::FlowTable::new(table, |n| {
            let path = paths::map_pin(name, n);
            Ok(Map::LruHashMap(
                MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?,
            ))
        })?;
        for (key, value) in flows.iter().filter_map(|e| e.ok()) {
            if value.flags & FLOW_INBOUND == 0 {
                continue;
            }
            let peer = if key.family == 4 {
                let a = key.remote_addr;
                std::net::IpAddr::from([a[0], a[1], a[2], a[3]])
            } else {
                std::net::IpAddr::from(key.remote_addr)
            };
            out.push(InboundFlow {
                proto: crate::policy::protocols::protocol_name(key.proto),
                // ICMP echo: the port the policy matched (type 8 / 128).
                local_port: if matches!(key.proto, 1 | 58) {
                    value.policy_port
                } else {
                    u16::from_be_bytes(key.local_port)
                },
                peer,
                peer_port: u16::from_be_bytes(key.remote_port),
            });
        }
    }
    Ok(out)
}

/// TCP ports in LISTEN state in this network namespace (/proc/net/tcp,
/// tcp6: `local_address` is `HEXADDR:HEXPORT`, state 0A is LISTEN).
fn listening_tcp_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) != Some(&"0A") {
                continue;
            }
            if let Some(port) =
                fields.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding5_learning_says_what_it_could_not_see() {
        assert!(Unseen::default().warnings().is_empty());
        let w = Unseen { suppressed: 7, lost: 3, undecodable: 0 }.warnings();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("3 events were lost (the ring buffer was full)"), "{w:?}");
        assert!(w[1].starts_with("7 events were over a destination's budget"), "{w:?}");
    }
}
