//! Where a policy comes from (the only module besides the kernel's that
//! touches files for the policy core): a file, or one of the policies shipped inside
//! the binary (so `cargo xtask run` on a fresh server needs no file), and the
//! one path from `--policy` to a compiled phase used by every command.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

pub mod file;
pub mod host;
pub mod precompiled;
pub mod resolv_conf;

use crate::{
    instance::records::PolicyCopy,
    policy::compile::{self, tables::CompiledPhase},
    policy::preflight::Sourced,
    policy::{self, lint, LoadedPolicy, Vars, Warning},
};

const OPENVIDU2_CE: &str = include_str!("../../../policies/openvidu2-ce.yaml");
const OPENVIDU2_PRO_MASTER: &str = include_str!("../../../policies/openvidu2-pro-master.yaml");
const OPENVIDU2_MEDIA_NODE: &str = include_str!("../../../policies/openvidu2-media-node.yaml");

/// The shipped policies, by name. The `openvidu-*` names are those of the
/// 2.x policies before OpenVidu 3.x existed, kept as aliases (and as
/// symlinks in policies/) so that running instances, units and scripts
/// that name them keep working.
pub const BUILTIN: &[(&str, &str)] = &[
    ("essentials", include_str!("../../../policies/essentials.yaml")),
    ("openvidu2-ce", OPENVIDU2_CE),
    ("openvidu2-pro-master", OPENVIDU2_PRO_MASTER),
    ("openvidu2-media-node", OPENVIDU2_MEDIA_NODE),
    ("openvidu3-single", include_str!("../../../policies/openvidu3-single.yaml")),
    ("openvidu3-elastic-master", include_str!("../../../policies/openvidu3-elastic-master.yaml")),
    ("openvidu3-media-node", include_str!("../../../policies/openvidu3-media-node.yaml")),
    ("vonage-webrtc-client", include_str!("../../../policies/vonage-webrtc-client.yaml")),
    ("vonage-voice", include_str!("../../../policies/vonage-voice.yaml")),
    ("openvidu-ce", OPENVIDU2_CE),
    ("openvidu-pro-master", OPENVIDU2_PRO_MASTER),
    ("openvidu-media-node", OPENVIDU2_MEDIA_NODE),
];

/// OpenVidu 2.x keeps its configuration here; its variables fill the
/// shipped OpenVidu policies when no `--env-file` is given.
pub const OPENVIDU_ENV: &str = "/opt/openvidu/.env";

/// Where the default env file is looked for, first existing wins: OpenVidu
/// 2.x's `.env`, then 3.x's Single Node `config/openvidu.env`, then 3.x's
/// Elastic/HA `config/cluster/openvidu.env` (OpenVidu/openvidu.io
/// docs/docs/self-hosting/.../install.md, "Configure your application").
pub const DEFAULT_ENV_FILES: &[&str] =
    &[OPENVIDU_ENV, "/opt/openvidu/config/openvidu.env", "/opt/openvidu/config/cluster/openvidu.env"];

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
            let text = file::read_text(&canonical, &label)?;
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
/// else the first of OpenVidu's ([`DEFAULT_ENV_FILES`]) that exists.
pub fn env_file(given: Option<&Path>) -> Option<PathBuf> {
    given
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
        .or_else(|| DEFAULT_ENV_FILES.iter().map(PathBuf::from).find(|p| p.exists()))
}

pub struct LoadedPhase {
    /// Canonical path or `builtin:NAME`.
    pub source: String,
    /// The env file the variables came from.
    pub env_file: Option<PathBuf>,
    /// The policy's `name:`.
    pub policy_name: String,
    pub compiled: CompiledPhase,
    /// What `fw check --phase` reports for this phase: the warnings of
    /// loading the policy, then the lints of the phase. Commands that apply
    /// it print them; [`Warning::is_open_egress`] marks the one that needs
    /// `--force`.
    pub warnings: Vec<Warning>,
    /// The text it was compiled from (kept for the boot record).
    pub copy: PolicyCopy,
    /// The phase's name rules and `dns:` settings (`None`: no `dns:`).
    pub names: Option<crate::policy::names::NameRules>,
    /// What the compile read besides the text of `copy`.
    pub read_besides: ReadBesides,
}

/// What compiling a policy read besides its text and its env file's: the
/// process environment's variables (those the env file does not give),
/// and whether it resolved host names (`to: [host.example.com]`, resolved
/// when compiled). A compile kept for later ([`precompiled`]) is used only
/// where these say the same, and never when it resolved a name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReadBesides {
    pub env: crate::policy::vars::Consulted,
    pub resolved_hosts: bool,
}

/// `--policy` and `--env-file` -> the validated policy, its label and text.
pub fn load_policy(policy_arg: &str, env: Option<&Path>) -> Result<(String, LoadedPolicy, PolicyCopy)> {
    let env = env_file(env);
    let (label, copy) = read_copy(policy_arg, env.as_deref())?;
    let (loaded, _) = parse_copy(&label, env.as_deref(), &copy)?;
    Ok((label, loaded, copy))
}

/// `--policy` and the env file (already chosen by [`env_file`]) -> the
/// policy's label and the text a compile reads: the policy's, and the env
/// file's with the host's answers for what it does not give.
pub fn read_copy(policy_arg: &str, env: Option<&Path>) -> Result<(String, PolicyCopy)> {
    let text = PolicyText::resolve(policy_arg)?;
    let env_text = env.map(|p| file::read_text(p, &p.display().to_string())).transpose()?;
    let env_text = with_host_defaults(env_text, env, host_defaults(env))?;
    Ok((text.label, PolicyCopy { policy_text: text.text, env_text }))
}

/// A variable fw reads from the host when neither the env file nor the
/// environment gives it: its name, and what to read (the value and where
/// it was read).
type HostDefault = (&'static str, Box<dyn FnOnce() -> Option<Sourced<String>>>);

/// The host's own answers for the shipped policies' variables: the time
/// servers of chrony or timesyncd (essentials' `NTP_SERVERS`), and beside
/// an OpenVidu 3.x `openvidu.env`, LiveKit's `webhook.urls` in
/// `livekit.yaml`, `meet.env`'s and `v2compatibility.env`'s webhooks.
fn host_defaults(env: Option<&Path>) -> Vec<HostDefault> {
    let mut defaults: Vec<HostDefault> = vec![(
        "NTP_SERVERS",
        Box::new(|| {
            let found = host::ntp_servers(Path::new("/"));
            let mut servers: Vec<&str> = Vec::new();
            for server in &found {
                if !servers.contains(&server.value.as_str()) {
                    servers.push(&server.value);
                }
            }
            let from = found.first()?.from.clone();
            Some(Sourced { value: servers.join(","), from })
        }),
    )];
    if let Some(dir) = env.and_then(Path::parent).map(Path::to_path_buf) {
        let (d1, d2, d3) = (dir.clone(), dir.clone(), dir);
        defaults.push(("WEBHOOK_URLS", Box::new(move || host::livekit_webhook_urls(&d1))));
        defaults.push((
            "MEET_INITIAL_WEBHOOK_URL",
            Box::new(move || host::env_file_value(&d2, "meet.env", "MEET_INITIAL_WEBHOOK_URL")),
        ));
        defaults.push((
            "V2COMPAT_OPENVIDU_WEBHOOK_ENDPOINT",
            Box::new(move || host::env_file_value(&d3, "v2compatibility.env", "V2COMPAT_OPENVIDU_WEBHOOK_ENDPOINT")),
        ));
    }
    defaults
}

/// `env_text` with each variable of `defaults` that neither the env file
/// nor the environment gives (an empty `KEY=` counts as given: "none") set
/// to what the host says, with a comment naming where it was read. Written
/// into the env text of the policy copy, so that a restart or an adoption
/// compiles what this load saw, whatever the host's files say later.
fn with_host_defaults(
    env_text: Option<String>,
    env: Option<&Path>,
    defaults: Vec<HostDefault>,
) -> Result<Option<String>> {
    let vars = match (&env_text, env) {
        (Some(text), path) => {
            Vars::from_env_text(&path.map_or("env file".to_string(), |p| p.display().to_string()), text)?
        }
        (None, _) => Vars::from_process_env(),
    };
    let mut added = String::new();
    for (name, read) in defaults {
        if vars.defines(name) {
            continue;
        }
        if let Some(found) = read() {
            added.push_str(&format!("# fw: from {} ({name} was not given)\n{name}={}\n", found.from, found.value));
        }
    }
    if added.is_empty() {
        return Ok(env_text);
    }
    let mut text = env_text.unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&added);
    Ok(Some(text))
}

fn parse_copy(label: &str, env: Option<&Path>, copy: &PolicyCopy) -> Result<(LoadedPolicy, ReadBesides)> {
    let vars = match (&copy.env_text, env) {
        (Some(text), Some(path)) => Vars::from_env_text(&path.display().to_string(), text)?,
        (Some(text), None) => Vars::from_env_text("env file", text)?,
        (None, _) => Vars::from_process_env(),
    };
    let resolved = std::rc::Rc::new(std::cell::Cell::new(false));
    let resolve = {
        let resolved = resolved.clone();
        move |host: &str| {
            resolved.set(true);
            policy::system_resolve(host)
        }
    };
    let loaded = policy::parse_str_with_resolver(&copy.policy_text, label, &vars, &resolve)?;
    Ok((loaded, ReadBesides { env: vars.consulted(), resolved_hosts: resolved.get() }))
}

/// `--policy`, `--env-file`, `--phase` -> a compiled, capacity-checked
/// phase and its warnings. Every command that applies a phase (run, switch,
/// learn) comes through here, so they all see what `fw check` shows.
pub fn load_phase(policy_arg: &str, env: Option<&Path>, phase: &str) -> Result<LoadedPhase> {
    let env = env_file(env);
    let (label, copy) = read_copy(policy_arg, env.as_deref())?;
    compile_copy(label, env, copy, phase)
}

/// [`load_phase`], taking the compile from `kept` when it holds one of the
/// same text, env file, process environment and fw binary
/// ([`precompiled`]): what `fw switch` does, in milliseconds where a
/// 100,000-rule policy takes two seconds to parse and compile.
pub fn load_phase_kept(kept: &Path, policy_arg: &str, env: Option<&Path>, phase: &str) -> Result<LoadedPhase> {
    let env = env_file(env);
    let (label, copy) = read_copy(policy_arg, env.as_deref())?;
    match precompiled::lookup(kept, &label, env.as_deref(), copy, phase) {
        Ok(loaded) => Ok(loaded),
        Err(copy) => compile_copy(label, env, copy, phase),
    }
}

fn compile_copy(label: String, env: Option<PathBuf>, copy: PolicyCopy, phase: &str) -> Result<LoadedPhase> {
    let (loaded, read_besides) = parse_copy(&label, env.as_deref(), &copy)?;
    crate::mark("load: policy parsed");
    compile_loaded(label, env, &loaded, copy, read_besides, phase)
}

/// A phase of policy text kept earlier (a boot record's copy, `fw learn`'s
/// own policy); `label` and `env` name where it came from, in messages.
pub fn load_phase_text(label: &str, env: Option<&Path>, copy: PolicyCopy, phase: &str) -> Result<LoadedPhase> {
    compile_copy(label.to_string(), env.map(Path::to_path_buf), copy, phase)
}

fn compile_loaded(
    label: String,
    env_file: Option<PathBuf>,
    loaded: &LoadedPolicy,
    copy: PolicyCopy,
    read_besides: ReadBesides,
    phase: &str,
) -> Result<LoadedPhase> {
    let compiled = compile::compile_phase(&loaded.policy, phase)?;
    compile::check_capacity(&compiled, &compile::Limits::default())?;
    crate::mark("load: phase compiled");
    let mut warnings = loaded.warnings.clone();
    warnings.extend(lint::lint(&loaded.policy, std::slice::from_ref(&compiled), host::ephemeral_range()));
    crate::mark("load: linted");
    let names = crate::policy::names::NameRules::of_phase(&loaded.policy, phase);
    Ok(LoadedPhase {
        source: label,
        env_file,
        policy_name: loaded.policy.name.clone(),
        compiled,
        warnings,
        copy,
        names,
        read_besides,
    })
}

#[cfg(test)]
mod host_default_tests {
    use super::*;

    fn given(value: &'static str) -> HostDefault {
        ("NTP_SERVERS", Box::new(move || Some(Sourced { value: value.into(), from: "/etc/chrony/chrony.conf".into() })))
    }

    #[test]
    fn the_hosts_answer_fills_an_unset_variable_into_the_copy() {
        let text =
            with_host_defaults(Some("DOMAIN_NAME=x".into()), None, vec![given("169.254.169.123")]).unwrap().unwrap();
        assert_eq!(
            text,
            "DOMAIN_NAME=x\n# fw: from /etc/chrony/chrony.conf (NTP_SERVERS was not given)\nNTP_SERVERS=169.254.169.123\n"
        );
        let vars = Vars::from_env_text("env", &text).unwrap();
        assert_eq!(vars.get("NTP_SERVERS").as_deref(), Some("169.254.169.123"));
    }

    #[test]
    fn a_given_variable_even_empty_and_a_host_without_an_answer_change_nothing() {
        for env in ["NTP_SERVERS=10.0.0.1\n", "NTP_SERVERS=\n"] {
            let out = with_host_defaults(Some(env.into()), None, vec![given("169.254.169.123")]).unwrap();
            assert_eq!(out.as_deref(), Some(env));
        }
        let nothing: HostDefault = ("NTP_SERVERS", Box::new(|| None));
        assert_eq!(with_host_defaults(Some("A=1\n".into()), None, vec![nothing]).unwrap().as_deref(), Some("A=1\n"));
    }
}
