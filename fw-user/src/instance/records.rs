//! What an instance keeps on disk besides its pins:
//!
//! * the state file `/run/fw/NAME.json` ([`InstanceState`]): what each
//!   generation enforces (policy, phase, rule names), the switch journal and
//!   the pending rollback. It goes away with the pins on reboot.
//! * the boot record `/var/lib/fw/NAME/`: the last *confirmed* policy and
//!   phase, with copies of the policy and env text it was compiled from, so
//!   that a rebooted host comes back in that phase (not in the install phase
//!   of the unit's env file) even if the files were edited since.
//!
//! Both are written atomically (see [`crate::instance::state::write_atomic`]). Behind
//! a trait so that the crash tests can interrupt every write.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::failpoint;
use crate::{
    instance::paths,
    instance::state::{write_atomic, InstanceState},
};

/// The text a generation was compiled from.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyCopy {
    pub policy_text: String,
    /// The env file's text, when the policy read one.
    pub env_text: Option<String>,
}

/// The last confirmed policy and phase of an instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootRecord {
    pub generation: u32,
    /// Where the policy came from (a path or `builtin:NAME`), for messages.
    pub policy: String,
    pub policy_name: String,
    pub phase: String,
    /// The env file the policy read, for messages.
    pub env_file: Option<String>,
}

pub trait Records {
    fn load_state(&self) -> Result<Option<InstanceState>>;
    fn save_state(&mut self, state: &InstanceState) -> Result<()>;
    /// Keeps the text generation `generation` is compiled from.
    fn save_copy(&mut self, generation: u32, copy: &PolicyCopy) -> Result<()>;
    /// The boot record and the copies of its generation.
    fn load_boot(&self) -> Result<Option<(BootRecord, PolicyCopy)>>;
    /// The generation of the boot record, without reading the copies.
    fn boot_generation(&self) -> Result<Option<u32>>;
    /// Was the text of `generation` kept?
    fn has_copy(&self, generation: u32) -> bool;
    /// Records `generation` (whose copy was saved) as the confirmed one.
    fn save_boot(&mut self, record: &BootRecord) -> Result<()>;
    /// Removes the copies of every generation but `keep`.
    fn keep_copies(&mut self, keep: &[u32]) -> Result<()>;
}

/// The records of instance `name` in the real directories.
pub struct FileRecords {
    name: String,
    boot_dir: PathBuf,
}

impl FileRecords {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), boot_dir: paths::boot_dir(name) }
    }

    fn policy_copy(&self, generation: u32) -> PathBuf {
        self.boot_dir.join(format!("policy-{generation}.yaml"))
    }

    fn env_copy(&self, generation: u32) -> PathBuf {
        self.boot_dir.join(format!("env-{generation}"))
    }

    fn boot_file(&self) -> PathBuf {
        self.boot_dir.join("boot.json")
    }

    /// The text generation `generation` was compiled from, if it was kept
    /// (`fw run --watch` compares the watched files with it).
    pub fn load_copy(&self, generation: u32) -> Result<Option<PolicyCopy>> {
        let read = |p: &Path| fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let policy = self.policy_copy(generation);
        if !policy.exists() {
            return Ok(None);
        }
        let env = self.env_copy(generation);
        Ok(Some(PolicyCopy { policy_text: read(&policy)?, env_text: env.exists().then(|| read(&env)).transpose()? }))
    }

    /// Removes the boot record and the copies (`fw stop --forget`).
    pub fn forget(name: &str) -> Result<()> {
        let dir = paths::boot_dir(name);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", dir.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Records for FileRecords {
    fn load_state(&self) -> Result<Option<InstanceState>> {
        InstanceState::load(&self.name)
    }

    fn save_state(&mut self, state: &InstanceState) -> Result<()> {
        failpoint::step("save state");
        state.save()
    }

    fn save_copy(&mut self, generation: u32, copy: &PolicyCopy) -> Result<()> {
        failpoint::step("save policy copy");
        write_atomic(&self.policy_copy(generation), copy.policy_text.as_bytes())?;
        if let Some(env) = &copy.env_text {
            write_atomic(&self.env_copy(generation), env.as_bytes())?;
        }
        Ok(())
    }

    fn load_boot(&self) -> Result<Option<(BootRecord, PolicyCopy)>> {
        let path = self.boot_file();
        let record: BootRecord = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {} (`fw stop --forget` removes it)", path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let read = |p: &Path| {
            fs::read_to_string(p)
                .with_context(|| format!("reading {} (`fw stop --forget` removes the boot record)", p.display()))
        };
        let env = self.env_copy(record.generation);
        let copy = PolicyCopy {
            policy_text: read(&self.policy_copy(record.generation))?,
            env_text: env.exists().then(|| read(&env)).transpose()?,
        };
        Ok(Some((record, copy)))
    }

    fn boot_generation(&self) -> Result<Option<u32>> {
        #[derive(Deserialize)]
        struct Generation {
            generation: u32,
        }
        let path = self.boot_file();
        match fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice::<Generation>(&bytes).ok().map(|g| g.generation)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn has_copy(&self, generation: u32) -> bool {
        self.policy_copy(generation).exists()
    }

    fn save_boot(&mut self, record: &BootRecord) -> Result<()> {
        failpoint::step("save boot record");
        write_atomic(&self.boot_file(), &serde_json::to_vec_pretty(record)?)
    }

    fn keep_copies(&mut self, keep: &[u32]) -> Result<()> {
        let Ok(dir) = fs::read_dir(&self.boot_dir) else { return Ok(()) };
        for entry in dir.filter_map(|e| e.ok()) {
            let file = entry.file_name();
            let file = file.to_string_lossy();
            let generation = file
                .strip_prefix("policy-")
                .and_then(|f| f.strip_suffix(".yaml"))
                .or_else(|| file.strip_prefix("env-"))
                .and_then(|g| g.parse::<u32>().ok());
            if generation.is_some_and(|g| !keep.contains(&g)) {
                fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(())
    }
}
