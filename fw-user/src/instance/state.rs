//! What a running instance enforces, kept next to its pins so that commands
//! run later (`status`, `drops`, `stop`) can name rules and phases.
//!
//! Written atomically (temp file + rename): a reader sees the old or the new
//! state, never half of one.

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
    /// Every rule of the policy, indexed by rule id.
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
}

/// The journal entry of a switch in progress (see `instance::txn`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Switching {
    pub to: Enforced,
    /// The rollback deadline of a `--confirm` switch (unix seconds).
    pub confirm_deadline: Option<u64>,
}

impl InstanceState {
    pub fn load(name: &str) -> Result<Option<InstanceState>> {
        let path = paths::state_file(name);
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = paths::state_file(&self.name);
        write_atomic(&path, &serde_json::to_vec(self)?)
    }

    pub fn remove(name: &str) -> Result<()> {
        let path = paths::state_file(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
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
