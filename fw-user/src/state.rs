//! What a running instance enforces, kept next to its pins so that commands
//! run later (`status`, `drops`, `stop`) can name rules and phases.
//!
//! Written atomically (temp file + rename): a reader sees the old or the new
//! state, never half of one.

use std::{fs, io, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{compile::tables::RuleInfo, loader::AttachMode, paths};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceState {
    pub name: String,
    pub iface: String,
    pub ifindex: u32,
    /// Path of the policy file, or `builtin:NAME` for an embedded one.
    pub policy: String,
    /// The `name:` of the policy.
    pub policy_name: String,
    pub phase: String,
    pub generation: u32,
    pub attach_mode: AttachMode,
    pub audit: bool,
    /// Unix seconds when enforcement started.
    pub started_at: u64,
    /// Every rule of the policy, indexed by rule id.
    pub rules: Vec<RuleInfo>,
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
