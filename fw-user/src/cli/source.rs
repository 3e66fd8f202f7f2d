//! Which policy a command loads ([`PolicyFile`]: run, switch, explain,
//! export), and which phase it looks at ([`PhaseSource`]: a policy file and
//! one of its phases, or a running instance; explain and export).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use clap::Args;

use super::target::resolve_name;

/// The policy a command loads: `--policy` and `--env-file`, the same for
/// `run`, `switch`, `preflight`, `explain` and `export`.
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyFile {
    /// Policy file, or the name of a policy shipped inside fw
    /// (openvidu3-single, openvidu3-elastic-master, openvidu3-media-node,
    /// openvidu2-ce, openvidu2-pro-master, openvidu2-media-node,
    /// vonage-webrtc-client, vonage-voice, essentials; the 2.x policies'
    /// old names openvidu-ce, openvidu-pro-master, openvidu-media-node
    /// still work). Default for `fw run`: openvidu-ce; for a running
    /// instance: the policy it enforces.
    #[arg(long)]
    pub policy: Option<String>,
    /// KEY=VALUE file for ${VARS} in the policy. Default for a running
    /// instance: the one it uses; otherwise /opt/openvidu/.env when it
    /// exists.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PhaseSource {
    /// A policy file (or shipped policy) with --phase, instead of a
    /// running instance.
    #[command(flatten)]
    pub file: PolicyFile,
    /// Phase of --policy.
    #[arg(long)]
    pub phase: Option<String>,
    /// Running instance (default: the only one, when no --policy).
    #[arg(long)]
    pub name: Option<String>,
}

pub enum Source {
    File {
        policy: String,
        phase: String,
        env_file: Option<PathBuf>,
    },
    /// The instance's name.
    Instance(String),
}

impl PhaseSource {
    pub fn resolve(&self) -> Result<Source> {
        if let Some(policy) = &self.file.policy {
            if self.name.is_some() {
                bail!("--policy and --name exclude each other: a policy file, or a running instance");
            }
            let phase = self.phase.clone().ok_or_else(|| anyhow!("--policy needs --phase"))?;
            return Ok(Source::File { policy: policy.clone(), phase, env_file: self.file.env_file.clone() });
        }
        if self.phase.is_some() {
            bail!("--phase goes with --policy; a running instance has its own active phase");
        }
        if self.file.env_file.is_some() {
            bail!("--env-file goes with --policy; a running instance has its own");
        }
        Ok(Source::Instance(resolve_name(self.name.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, Command};

    use super::PolicyFile;

    #[test]
    fn the_policy_help_names_every_shipped_policy() {
        let command = PolicyFile::augment_args(Command::new("fw"));
        let help = command.get_arguments().find(|a| a.get_id() == "policy").and_then(|a| a.get_help()).unwrap();
        for (name, _) in crate::source::BUILTIN {
            assert!(help.to_string().contains(name), "--policy's help does not name {name}: {help}");
        }
    }
}
