//! Phases compiled ahead of `fw switch`. Parsing and compiling a
//! 100,000-rule policy takes about two seconds, most of a switch; the
//! `fw run` daemon compiles every phase of the enforced policy once, in
//! the background, and keeps each in a file of `/run/fw/NAME.kept/`.
//! `fw switch` takes a phase from there only when everything the compile
//! read is the same now:
//!
//! * the same fw binary (device, inode, size and modification time of
//!   `/proc/self/exe`: an upgrade, or a rebuild, compiles afresh);
//! * the same policy label, env-file path, policy text and env text (the
//!   env text with the host's answers in it, as a compile reads it), and
//!   the same ephemeral port range (the lint reads it): hashed with
//!   SHA-256 into the name of the file, and stored in it to be compared;
//! * the same value of every process-environment variable the compile
//!   read (the file records them; the daemon's environment and the
//!   shell's differ, and a variable they give differently means a miss).
//!
//! A policy that resolves host names when compiled is not kept: its
//! addresses are to be resolved when it is applied. A file that does not
//! read back (truncated, another format) is a miss too: the switch then
//! compiles, as it always did. Nothing here can change what a switch
//! enforces, only how fast it gets it.

use std::{
    fs,
    os::unix::{ffi::OsStringExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{compile_loaded, env_file, host, parse_copy, read_copy, LoadedPhase, ReadBesides};
use crate::{
    instance::{records::PolicyCopy, state::write_atomic},
    policy::{compile::tables::CompiledPhase, names::NameRules, Warning},
};

/// Bumped whenever [`Kept`] or [`Inputs`] change shape.
const FORMAT: u32 = 1;

/// Everything a compile reads but the process environment, hashed.
#[derive(Serialize)]
struct Inputs<'a> {
    format: u32,
    binary: (u64, u64, u64, i64, i64),
    label: &'a str,
    env_file: Option<&'a Path>,
    copy: &'a PolicyCopy,
    ephemeral_range: String,
}

/// One kept phase, as stored.
#[derive(Serialize, Deserialize)]
struct Kept {
    inputs: [u8; 32],
    phase: String,
    policy_name: String,
    compiled: CompiledPhase,
    warnings: Vec<Warning>,
    names: Option<NameRules>,
    read_besides: ReadBesides,
}

/// The SHA-256 of the inputs of a compile of `copy`.
fn digest(label: &str, env: Option<&Path>, copy: &PolicyCopy) -> Result<[u8; 32]> {
    let exe = fs::metadata("/proc/self/exe").context("the fw binary")?;
    let inputs = Inputs {
        format: FORMAT,
        binary: (exe.dev(), exe.ino(), exe.size(), exe.mtime(), exe.mtime_nsec()),
        label,
        env_file: env,
        copy,
        ephemeral_range: format!("{:?}", host::ephemeral_range()),
    };
    Ok(Sha256::digest(bincode::serialize(&inputs)?).into())
}

/// The file of `phase` of the compile whose inputs hash to `inputs`.
fn file(kept: &Path, inputs: &[u8; 32], phase: &str) -> PathBuf {
    kept.join(format!("{}.phase", crate::sha256_hex(&[inputs, phase.as_bytes()])))
}

fn read(path: &Path) -> Option<Kept> {
    bincode::deserialize(&fs::read(path).ok()?).ok()
}

/// Whether the process environment still says what the compile read.
fn same_environment(read_besides: &ReadBesides) -> bool {
    read_besides.env.iter().all(|(name, value)| std::env::var_os(name).map(OsStringExt::into_vec) == *value)
}

/// The kept compile of `phase` of `copy`, or `copy` back when there is
/// none that reads the same inputs.
pub fn lookup(
    kept: &Path,
    label: &str,
    env: Option<&Path>,
    copy: PolicyCopy,
    phase: &str,
) -> Result<LoadedPhase, PolicyCopy> {
    let Ok(inputs) = digest(label, env, &copy) else { return Err(copy) };
    let path = file(kept, &inputs, phase);
    let hit = read(&path).filter(|k| {
        k.inputs == inputs && k.phase == phase && !k.read_besides.resolved_hosts && same_environment(&k.read_besides)
    });
    let Some(k) = hit else {
        log::debug!("phase {phase} of {label}: not compiled ahead for what it reads now: compiling it");
        return Err(copy);
    };
    log::debug!("phase {phase} of {label}: compiled ahead, read from {}", path.display());
    Ok(LoadedPhase {
        source: label.to_string(),
        env_file: env.map(Path::to_path_buf),
        policy_name: k.policy_name,
        compiled: k.compiled,
        warnings: k.warnings,
        copy,
        names: k.names,
        read_besides: k.read_besides,
    })
}

/// What [`keep_all`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// The hash of the inputs, for [`keep_all`]'s `unless_kept`.
    pub inputs: [u8; 32],
    /// Phases compiled and kept now.
    pub compiled: Vec<String>,
    /// Phases that did not compile (a switch to one says why).
    pub failed: Vec<String>,
    /// Why nothing is kept, when nothing is.
    pub not_kept: Option<String>,
}

/// Compiles every phase of the policy `policy_arg` (with `env`) into
/// `kept`, and removes what `kept` held for any other text. Does nothing
/// when the inputs hash to `unless_kept` (kept by the call before) and its
/// files are all there.
pub fn keep_all(kept: &Path, policy_arg: &str, env: Option<&Path>, unless_kept: Option<[u8; 32]>) -> Result<Report> {
    let env = env_file(env);
    let (label, copy) = read_copy(policy_arg, env.as_deref())?;
    let inputs = digest(&label, env.as_deref(), &copy)?;
    let mut report = Report { inputs, ..Report::default() };
    let present = |phases: Vec<String>| phases.iter().all(|p| file(kept, &inputs, p).exists());
    if unless_kept == Some(inputs) && listed(kept).is_some_and(present) {
        return Ok(report);
    }
    fs::create_dir_all(kept).with_context(|| format!("creating {}", kept.display()))?;
    let (loaded, read_besides) = parse_copy(&label, env.as_deref(), &copy)?;
    let mut keep = Vec::new();
    let mut kept_phases = Vec::new();
    if read_besides.resolved_hosts {
        report.not_kept = Some("it resolves host names when compiled, which a switch does again".into());
    } else {
        for phase in loaded.policy.phases.iter().map(|p| p.name.clone()) {
            let path = file(kept, &inputs, &phase);
            if read(&path).is_some_and(|k| k.inputs == inputs && k.phase == phase) {
                keep.push(path);
                kept_phases.push(phase);
                continue;
            }
            let Ok(one) =
                compile_loaded(label.clone(), env.clone(), &loaded, copy.clone(), read_besides.clone(), &phase)
            else {
                report.failed.push(phase);
                continue;
            };
            let stored = Kept {
                inputs,
                phase: phase.clone(),
                policy_name: one.policy_name,
                compiled: one.compiled,
                warnings: one.warnings,
                names: one.names,
                read_besides: read_besides.clone(),
            };
            write_atomic(&path, &bincode::serialize(&stored)?)?;
            keep.push(path);
            kept_phases.push(phase.clone());
            report.compiled.push(phase);
        }
    }
    for entry in fs::read_dir(kept).with_context(|| format!("reading {}", kept.display()))?.flatten() {
        if !keep.contains(&entry.path()) {
            let _ = fs::remove_file(entry.path());
        }
    }
    write_atomic(&kept.join(LIST), &serde_json::to_vec(&kept_phases)?)?;
    Ok(report)
}

/// The phases the last [`keep_all`] kept (a file beside them).
const LIST: &str = "phases.json";

/// The phases the last [`keep_all`] into `kept` kept, in the policy's order.
pub fn kept_phases(kept: &Path) -> Option<Vec<String>> {
    listed(kept)
}

fn listed(kept: &Path) -> Option<Vec<String>> {
    fs::read(kept.join(LIST)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_phase;

    /// Two phases; `${VAR}` (no env file) is read from the process
    /// environment, under a name no other test uses.
    fn policy(port: u16, var: &str) -> String {
        format!(
            "name: kept\nphases:\n  install:\n    egress:\n      - {{ name: web, to: [198.18.0.0/15], proto: tcp, ports: [{port}] }}\n  \
             runtime:\n    egress:\n      - {{ name: hook, to: ['${{{var}}}'], proto: tcp, ports: [443] }}\n"
        )
    }

    struct Setup {
        dir: tempfile::TempDir,
        file: PathBuf,
        kept: PathBuf,
    }

    fn setup(text: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        fs::write(&file, text).unwrap();
        let kept = dir.path().join("kept");
        Setup { file: fs::canonicalize(&file).unwrap(), kept, dir }
    }

    fn lookup_of(s: &Setup, phase: &str) -> Option<LoadedPhase> {
        let (label, copy) = read_copy(s.file.to_str().unwrap(), None).unwrap();
        lookup(&s.kept, &label, None, copy, phase).ok()
    }

    #[test]
    fn a_kept_phase_is_what_compiling_it_gives_and_any_changed_input_misses() {
        let var = "FW_PRECOMPILED_TEST_HOOK";
        std::env::set_var(var, "198.18.5.5");
        let s = setup(&policy(8080, var));
        let arg = s.file.to_str().unwrap();
        let report = keep_all(&s.kept, arg, None, None).unwrap();
        assert_eq!(report.compiled, ["install", "runtime"]);
        for phase in ["install", "runtime"] {
            let kept = lookup_of(&s, phase).expect("kept");
            let fresh = load_phase(arg, None, phase).unwrap();
            assert_eq!(kept.compiled, fresh.compiled, "{phase}");
            assert_eq!(kept.warnings, fresh.warnings, "{phase}");
            assert_eq!(kept.names, fresh.names, "{phase}");
            assert_eq!((kept.source, kept.policy_name, kept.copy), (fresh.source, fresh.policy_name, fresh.copy));
        }
        // The environment variable the runtime phase read says otherwise.
        std::env::set_var(var, "198.18.6.6");
        assert!(lookup_of(&s, "runtime").is_none(), "a changed variable must miss");
        std::env::set_var(var, "198.18.5.5");
        assert!(lookup_of(&s, "runtime").is_some());
        // Nothing changed: the next call compiles nothing.
        let again = keep_all(&s.kept, arg, None, Some(report.inputs)).unwrap();
        assert!(again.compiled.is_empty(), "{again:?}");
        // The text changed: a miss, then kept anew, the old files gone.
        fs::write(&s.file, policy(8081, var)).unwrap();
        assert!(lookup_of(&s, "install").is_none(), "a changed policy must miss");
        let changed = keep_all(&s.kept, arg, None, Some(report.inputs)).unwrap();
        assert_eq!(changed.compiled, ["install", "runtime"]);
        assert_eq!(fs::read_dir(&s.kept).unwrap().count(), 3, "two phases and the list");
        let kept = lookup_of(&s, "install").expect("kept anew");
        assert_eq!(kept.compiled, load_phase(arg, None, "install").unwrap().compiled);
        // A file that does not read back is a miss, not an error.
        let (label, copy) = read_copy(arg, None).unwrap();
        let path = file(&s.kept, &digest(&label, None, &copy).unwrap(), "install");
        fs::write(&path, &fs::read(&path).unwrap()[..100]).unwrap();
        assert!(lookup_of(&s, "install").is_none(), "a truncated file must miss");
        drop(s.dir);
    }

    #[test]
    fn a_policy_that_resolves_host_names_is_not_kept() {
        let s = setup(
            "name: hosts\nphases:\n  runtime:\n    egress:\n      - { name: here, to: [localhost], proto: tcp, ports: [443] }\n",
        );
        let report = keep_all(&s.kept, s.file.to_str().unwrap(), None, None).unwrap();
        assert!(report.compiled.is_empty() && report.not_kept.is_some(), "{report:?}");
        assert!(lookup_of(&s, "runtime").is_none());
    }
}
