//! What a running instance enforces, kept next to its pins so that commands
//! run later (`status`, `drops`, `stop`) can name rules and phases.
//!
//! Written atomically (temp file + rename): a reader sees the old or the new
//! state, never half of one.

use std::{fs, io, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{compile::tables::RuleInfo, loader::AttachMode, paths};

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
    /// The highest generation ever written: new ones are always higher.
    #[serde(default)]
    pub highest_generation: u32,
    pub pending: Option<PendingConfirm>,
}

impl InstanceState {
    pub fn load(name: &str) -> Result<Option<InstanceState>> {
        let path = paths::state_file(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        let path = paths::state_file(&self.name);
        write_atomic(&path, &serde_json::to_vec_pretty(self)?)
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

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("state files live in a directory");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
