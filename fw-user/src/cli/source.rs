//! Which policy phase a command looks at: a policy file (or shipped policy)
//! and one of its phases, or a running instance. Shared by `explain` and
//! `export`, which accept the same choice.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use super::target::resolve_name;

#[derive(Args, Debug)]
pub struct PhaseSource {
    /// Policy file, or the name of a shipped policy (with --phase), instead
    /// of a running instance.
    #[arg(long, requires = "phase", conflicts_with = "name")]
    pub policy: Option<String>,
    /// Phase of --policy.
    #[arg(long)]
    pub phase: Option<String>,
    /// Running instance (default: the only one, when no --policy).
    #[arg(long)]
    pub name: Option<String>,
    /// KEY=VALUE file for ${VARS} in --policy.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
}

pub enum Source {
    File { policy: String, phase: String, env_file: Option<PathBuf> },
    /// The instance's name.
    Instance(String),
}

impl PhaseSource {
    pub fn resolve(&self) -> Result<Source> {
        if let Some(policy) = &self.policy {
            let phase = self.phase.clone().ok_or_else(|| anyhow!("--policy needs --phase"))?;
            return Ok(Source::File { policy: policy.clone(), phase, env_file: self.env_file.clone() });
        }
        if self.phase.is_some() {
            bail!("--phase goes with --policy; a running instance has its own active phase");
        }
        Ok(Source::Instance(resolve_name(self.name.clone())?))
    }
}
