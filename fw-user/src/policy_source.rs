//! Where a policy comes from: a file, or one of the policies shipped inside
//! the binary (so `cargo xtask run` on a fresh server needs no file), and the
//! one path from `--policy` to a compiled phase used by every command.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use crate::{
    compile::{self, tables::CompiledPhase},
    policy::{self, lint, LoadedPolicy, Vars, Warning},
};

/// The shipped policies, by name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("openvidu-ce", include_str!("../../policies/openvidu-ce.yaml")),
    ("openvidu-pro-master", include_str!("../../policies/openvidu-pro-master.yaml")),
    ("openvidu-media-node", include_str!("../../policies/openvidu-media-node.yaml")),
    ("vonage-webrtc-client", include_str!("../../policies/vonage-webrtc-client.yaml")),
];

/// OpenVidu keeps its configuration here; its variables fill the shipped
/// OpenVidu policies when no `--env-file` is given.
pub const OPENVIDU_ENV: &str = "/opt/openvidu/.env";

/// A policy's text and the label its errors are reported under.
pub struct PolicyText {
    /// The file's canonical path (absolute, no symlinks, no `..`), or
    /// `builtin:NAME`. Instances record it, so a later `fw switch` run from
    /// another directory reads the same file.
    pub label: String,
    pub text: String,
}

impl PolicyText {
    /// `arg` is a path to a file, or a shipped policy's name (bare or as
    /// `builtin:NAME`, the label a running instance records). A file must be
    /// a regular file of at most 64 MiB ([`policy::file`]).
    pub fn resolve(arg: &str) -> Result<PolicyText> {
        let arg = arg.strip_prefix("builtin:").unwrap_or(arg);
        let path = Path::new(arg);
        if path.exists() || arg.contains('/') || arg.ends_with(".yaml") || arg.ends_with(".yml") {
            let canonical = std::fs::canonicalize(path).with_context(|| format!("reading policy file {arg}"))?;
            let label = canonical.display().to_string();
            let text = policy::file::read_text(&canonical, &label)?;
            return Ok(PolicyText { label, text });
        }
        let (name, text) = BUILTIN.iter().find(|(name, _)| *name == arg).ok_or_else(|| {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            anyhow!("no policy file {arg}, and it is not a shipped policy ({})", names.join(", "))
        })?;
        Ok(PolicyText { label: format!("builtin:{name}"), text: text.to_string() })
    }
}

/// The env file to read: the one given (canonical when it exists, so that
/// the path an instance records means the same file from any directory),
/// else OpenVidu's when it exists.
pub fn env_file(given: Option<&Path>) -> Option<PathBuf> {
    given.map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())).or_else(|| {
        let default = PathBuf::from(OPENVIDU_ENV);
        default.exists().then_some(default)
    })
}

pub struct LoadedPhase {
    /// Canonical path or `builtin:NAME`.
    pub source: String,
    /// The policy's `name:`.
    pub policy_name: String,
    pub compiled: CompiledPhase,
    /// What `fw check --phase` reports for this phase: the warnings of
    /// loading the policy, then the lints of the phase. Commands that apply
    /// it print them; [`Warning::is_open_egress`] marks the one that should
    /// need `--force`.
    pub warnings: Vec<Warning>,
}

/// `--policy` and `--env-file` -> the validated policy, and its label.
pub fn load_policy(policy_arg: &str, env: Option<&Path>) -> Result<(String, LoadedPolicy)> {
    let text = PolicyText::resolve(policy_arg)?;
    let vars = Vars::from_env_file(env_file(env).as_deref())?;
    let loaded = policy::parse_str(&text.text, &text.label, &vars)?;
    Ok((text.label, loaded))
}

/// `--policy`, `--env-file`, `--phase` -> a compiled, capacity-checked
/// phase and its warnings. Every command that applies a phase (run, switch,
/// learn) comes through here, so they all see what `fw check` shows.
pub fn load_phase(policy_arg: &str, env: Option<&Path>, phase: &str) -> Result<LoadedPhase> {
    let (label, loaded) = load_policy(policy_arg, env)?;
    let compiled = compile::compile_phase(&loaded.policy, phase)?;
    compile::check_capacity(&compiled, &compile::Limits::default())?;
    let mut warnings = loaded.warnings;
    warnings.extend(lint::lint(&loaded.policy, std::slice::from_ref(&compiled)));
    Ok(LoadedPhase { source: label, policy_name: loaded.policy.name.clone(), compiled, warnings })
}
