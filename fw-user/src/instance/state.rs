//! What a running instance enforces, kept next to its pins so that commands
//! run later (`status`, `drops`, `stop`) can name rules and phases.
//!
//! Written atomically (temp file + rename): a reader sees the old or the new
//! state, never half of one.
//!
//! The rules of each generation it names (100,000 of them for a merged
//! allowlist: 8 MB of JSON, read and written several times per switch)
//! live beside it in `/run/fw/NAME.rules/`, one file per rule list, named
//! by the SHA-256 of its content and written once: the state file holds
//! the name. A state file of an older fw, with the rules inline, still
//! reads.

use std::{fs, io, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{instance::paths, kernel::loader::AttachMode, policy::compile::tables::RuleInfo};

/// What one generation of the maps enforces.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Enforced {
    /// Path of the policy file, or `builtin:NAME` for an embedded one.
    pub policy: String,
    /// The `name:` of the policy.
    pub policy_name: String,
    /// The env file its variables came from, if any.
    pub env_file: Option<String>,
    pub phase: String,
    pub generation: u32,
    pub audit: bool,
    /// Every rule of the policy, indexed by rule id (kept in a file of
    /// their own, see the module's doc). Written as `[]`: an older fw that
    /// reads the file (the host's `fw status` beside a newer image's
    /// daemon) then names no rules instead of refusing the file.
    #[serde(default, serialize_with = "as_empty_list")]
    pub rules: Vec<RuleInfo>,
}

/// A switch made with `--confirm SECS` that `fw confirm` has not confirmed:
/// the previous generation's entries are kept so that the rollback is one
/// map write. Kept in the state file, so a restarted daemon still rolls back.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingConfirm {
    /// Unix seconds after which the daemon rolls back.
    pub deadline: u64,
    pub previous: Enforced,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceState {
    pub name: String,
    pub iface: String,
    pub ifindex: u32,
    pub attach_mode: AttachMode,
    /// cgroup v2 directory the socket hooks are attached to, if any.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// `fw run --audit`: every phase runs in audit mode.
    pub audit_override: bool,
    /// Unix seconds when enforcement started.
    pub started_at: u64,
    #[serde(flatten)]
    pub enforced: Enforced,
    /// A temporary instance (`fw learn`): no boot record.
    #[serde(default)]
    pub ephemeral: bool,
    /// The highest generation ever reserved: saved before a switch writes
    /// any entry, so a new one is always higher.
    #[serde(default)]
    pub highest_generation: u32,
    pub pending: Option<PendingConfirm>,
    /// A switch between writing its generation and recording the outcome:
    /// saved before the activation, so that whoever finds the kernel on
    /// `to.generation` knows what it enforces (and finishes the switch),
    /// and whoever finds it on the old one knows to discard `to`.
    #[serde(default)]
    pub switching: Option<Switching>,
    /// Known: the maps hold no entries but the enforced generation's and
    /// the pending rollback target's. Cleared in the same save that makes
    /// another generation garbage or reserves one to write, set once they
    /// are deleted; while false, the next [`crate::instance::txn::reconcile`]
    /// walks the maps and deletes the rest. A switch returns before the old
    /// generation is deleted when the daemon will do it (the walk and the
    /// delete took 1.1 s of a 100,000-rule switch), and a reconcile on a
    /// collected instance skips the walk. A state file without it (older
    /// fw) reads as not collected.
    #[serde(default)]
    pub collected: bool,
    /// A generation the daemon wrote ahead of `fw switch` (see
    /// [`Prepared`]): kept by every collection, activated by the switch
    /// that asks for exactly its tables, discarded by any other.
    #[serde(default)]
    pub prepared: Option<Prepared>,
}

/// A phase written ahead, under a generation no packet is judged by, into
/// the `FW_PHASES` slot the next switch would write: the `fw run` daemon
/// writes the phase an operator most likely switches to next once it is
/// compiled ahead, so that the switch is the journal and one map write.
/// Recorded only once every entry is in the kernel (an interrupted write
/// leaves garbage, never a `prepared`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prepared {
    pub to: Enforced,
    /// The SHA-256 of the tables written ([`crate::policy::compile::tables::CompiledPhase::digest`]):
    /// a switch uses this generation only when the tables it would write
    /// are these, byte for byte.
    pub tables: String,
    /// The SHA-256 of the policy and env texts saved as its copy (the boot
    /// record compiles the copy): a switch must ask for the same texts.
    pub copy: String,
    /// Entries written (for `fw status` and the switch's report).
    pub entries: usize,
}

/// The journal entry of a switch in progress (see `instance::txn`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Switching {
    pub to: Enforced,
    /// The rollback deadline of a `--confirm` switch (unix seconds).
    pub confirm_deadline: Option<u64>,
}

/// Where each [`Enforced`] of a state sits in its JSON: the enforced one
/// (flattened), the switch in progress, the pending rollback target, the
/// generation written ahead.
const ENFORCED_AT: [&str; 4] = ["", "/switching/to", "/pending/previous", "/prepared/to"];

/// The key that names an [`Enforced`]'s rule file.
const RULES_FILE: &str = "rules_file";

impl InstanceState {
    pub fn load(name: &str) -> Result<Option<InstanceState>> {
        Self::load_from(&paths::state_file(name), &paths::rules_dir(name), true)
    }

    /// [`InstanceState::load`] without the rule lists (every `rules` is
    /// empty): for a look at what is enforced and how, 30-45 ms sooner at
    /// 100,000 rules. Never to be saved.
    pub fn load_without_rules(name: &str) -> Result<Option<InstanceState>> {
        Self::load_from(&paths::state_file(name), &paths::rules_dir(name), false)
    }

    pub fn save(&self) -> Result<()> {
        self.save_to(&paths::state_file(&self.name), &paths::rules_dir(&self.name))
    }

    fn load_from(path: &Path, dir: &Path, with_rules: bool) -> Result<Option<InstanceState>> {
        // A rule file missing means a save replaced the state (and removed
        // the files only the old one named) between reading it and its
        // rules: read it again, once.
        for attempt in 0..2 {
            let bytes = match fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let json: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
            let files: Vec<Option<String>> = ENFORCED_AT
                .iter()
                .map(|at| json.pointer(at).and_then(|e| e.get(RULES_FILE)).and_then(|f| f.as_str()).map(String::from))
                .collect();
            let mut state: InstanceState =
                serde_json::from_value(json).with_context(|| format!("reading {}", path.display()))?;
            if !with_rules {
                return Ok(Some(state));
            }
            let mut missing = false;
            for (at, file) in ENFORCED_AT.iter().zip(files) {
                let (Some(enforced), Some(file)) = (state.enforced_at_mut(at), file) else { continue };
                match read_rules(dir, &file) {
                    Ok(rules) => enforced.rules = rules,
                    Err(e) if attempt == 1 => {
                        log::warn!("the rule names of generation {} are lost: {e:#}", enforced.generation);
                    }
                    Err(_) => missing = true,
                }
            }
            if !missing {
                return Ok(Some(state));
            }
        }
        unreachable!("the second attempt returns")
    }

    fn save_to(&self, path: &Path, dir: &Path) -> Result<()> {
        let mut json = serde_json::to_value(self)?;
        let mut named = Vec::new();
        for at in ENFORCED_AT {
            let Some(enforced) = self.enforced_at(at) else { continue };
            let file = write_rules(dir, &enforced.rules)?;
            if let Some(object) = json.pointer_mut(at).and_then(|e| e.as_object_mut()) {
                object.insert(RULES_FILE.into(), file.clone().into());
            }
            named.push(file);
        }
        write_atomic(path, &serde_json::to_vec(&json)?)?;
        // The files no state names any more (a reader of the state just
        // replaced reads the new one: see `load`).
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if !named.iter().any(|f| *f == entry.file_name().to_string_lossy()) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// An instance on `veth0` that just started enforcing `enforced`
    /// (the tests' starting point).
    #[cfg(test)]
    pub(crate) fn fresh(name: &str, enforced: Enforced) -> InstanceState {
        InstanceState {
            name: name.into(),
            iface: "veth0".into(),
            ifindex: 2,
            attach_mode: AttachMode::Tcx,
            cgroup: None,
            audit_override: false,
            started_at: 0,
            highest_generation: enforced.generation,
            enforced,
            ephemeral: false,
            pending: None,
            switching: None,
            collected: true,
            prepared: None,
        }
    }

    fn enforced_at(&self, at: &str) -> Option<&Enforced> {
        match at {
            "" => Some(&self.enforced),
            "/switching/to" => self.switching.as_ref().map(|s| &s.to),
            "/prepared/to" => self.prepared.as_ref().map(|p| &p.to),
            _ => self.pending.as_ref().map(|p| &p.previous),
        }
    }

    fn enforced_at_mut(&mut self, at: &str) -> Option<&mut Enforced> {
        match at {
            "" => Some(&mut self.enforced),
            "/switching/to" => self.switching.as_mut().map(|s| &mut s.to),
            "/prepared/to" => self.prepared.as_mut().map(|p| &mut p.to),
            _ => self.pending.as_mut().map(|p| &mut p.previous),
        }
    }

    pub fn remove(name: &str) -> Result<()> {
        let _ = fs::remove_dir_all(paths::rules_dir(name));
        let path = paths::state_file(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

fn as_empty_list<S: serde::Serializer>(_: &[RuleInfo], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(std::iter::empty::<()>())
}

/// Writes `rules` into `dir` unless a file of the same content is there;
/// returns the file's name (the SHA-256 of the content).
fn write_rules(dir: &Path, rules: &[RuleInfo]) -> Result<String> {
    let bytes = bincode::serialize(rules)?;
    let name = format!("{}.rules", crate::sha256_hex(&[&bytes]));
    let path = dir.join(&name);
    if !path.exists() {
        write_atomic(&path, &bytes)?;
    }
    Ok(name)
}

fn read_rules(dir: &Path, file: &str) -> Result<Vec<RuleInfo>> {
    let path = dir.join(file);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    bincode::deserialize(&bytes).with_context(|| format!("reading {}", path.display()))
}

/// Temp file, fsync, rename, fsync of the directory: after a crash or a
/// power cut the file holds the old bytes or the new ones, never a mix or
/// nothing (the boot record under /var/lib must survive both).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("state files live in a directory");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use fw_common::{Action, Direction};

    use super::*;

    fn enforced(generation: u32, rules: usize) -> Enforced {
        Enforced {
            policy: "/etc/fw/p.yaml".into(),
            policy_name: "p".into(),
            env_file: None,
            phase: format!("phase{generation}"),
            generation,
            audit: false,
            rules: (0..rules)
                .map(|id| RuleInfo {
                    id: id as u32,
                    name: format!("g{generation}-r{id}"),
                    direction: Direction::Egress,
                    action: Action::Allow,
                    phase: "p".into(),
                })
                .collect(),
        }
    }

    fn state() -> InstanceState {
        InstanceState {
            highest_generation: 3,
            pending: Some(PendingConfirm { deadline: 100, previous: enforced(1, 2) }),
            switching: Some(Switching { to: enforced(3, 4), confirm_deadline: None }),
            collected: false,
            prepared: Some(Prepared { to: enforced(4, 5), tables: "t".into(), copy: "c".into(), entries: 9 }),
            ..InstanceState::fresh("t", enforced(2, 3))
        }
    }

    #[test]
    fn the_rules_live_beside_the_state_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, rules) = (dir.path().join("t.json"), dir.path().join("t.rules"));
        let mut s = state();
        s.save_to(&path, &rules).unwrap();
        let json = fs::read_to_string(&path).unwrap();
        assert!(!json.contains("g2-r0"), "rule names in the state file: {json}");
        // What an older fw needs to read the file at all.
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["rules"], serde_json::json!([]), "{json}");
        assert_eq!(fs::read_dir(&rules).unwrap().count(), 4, "one file per rule list");
        assert_eq!(InstanceState::load_from(&path, &rules, true).unwrap(), Some(s.clone()));
        // The switch is recorded: the files only the old state named go.
        s.pending = None;
        s.enforced = s.switching.take().unwrap().to;
        s.prepared = None;
        s.save_to(&path, &rules).unwrap();
        assert_eq!(fs::read_dir(&rules).unwrap().count(), 1);
        assert_eq!(InstanceState::load_from(&path, &rules, true).unwrap(), Some(s.clone()));
        // A state file of an older fw holds its rules inline.
        let mut old = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().insert("rules".into(), serde_json::to_value(&s.enforced.rules).unwrap());
        fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(InstanceState::load_from(&path, &rules, true).unwrap(), Some(s.clone()));
        // Rule files lost: the state still reads, without rule names.
        s.save_to(&path, &rules).unwrap();
        fs::remove_dir_all(&rules).unwrap();
        let read = InstanceState::load_from(&path, &rules, true).unwrap().unwrap();
        assert_eq!((read.enforced.generation, read.enforced.rules.len()), (3, 0));
        // Without the rules on purpose: the rest reads the same.
        s.save_to(&path, &rules).unwrap();
        let bare = InstanceState::load_from(&path, &rules, false).unwrap().unwrap();
        assert!(bare.enforced.rules.is_empty());
        assert_eq!(bare.enforced.generation, s.enforced.generation);
    }
}
