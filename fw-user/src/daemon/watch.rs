//! `fw run --watch`: an edit of the policy file or of the env file switches
//! the instance to it, the way `fw switch` does (same compile, same checks,
//! same atomic transaction through [`instance::switch`]), in the phase the
//! instance enforces at that moment. A policy that does not compile, or that
//! `fw switch` would refuse, changes nothing: one line on stderr and
//! `fw_policy_reloads_total{outcome="failed"}` goes up.
//!
//! What is watched: the *directories* of both files, through inotify, both
//! as given and after symlinks are resolved. Editors replace a file by
//! renaming a new one over it (the file's own inode, and a watch on it,
//! goes away), and Kubernetes updates a mounted ConfigMap by swapping the
//! `..data` symlink of its directory: neither is seen by a watch on the
//! file. Any event in those directories arms a 500 ms debounce (an editor's
//! save is several events; a ConfigMap update too), after which the files
//! are read and compared with what the enforced generation was compiled
//! from (its copy under /var/lib/fw, the policy's path and the env file's):
//! only a real difference switches. So a swap file, a `touch`, or the same
//! broken text seen twice does nothing, and the daemon's first look, right
//! after it started or adopted the instance, reloads files edited while no
//! daemon ran.
//!
//! Never behind the operator's back: only the phase being enforced is
//! reloaded, never another; while a switch awaits `fw confirm` nothing is
//! reloaded (one line says so), and the edit is applied once the switch is
//! confirmed or rolled back. With `--watch` the watched files are the
//! truth: a `fw switch --policy OTHER` is replaced by the watched policy at
//! its next edit.
//!
//! The reading and switching run on the blocking pool (the daemon loop
//! spawns [`Reloader::check`]); only inotify's events are read on the
//! runtime thread.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use futures::StreamExt as _;
use inotify::{EventStream, Inotify, WatchMask, Watches};

use crate::{
    instance::{self, records::FileRecords},
    source::{self, PolicyText},
};

/// Quiet time after the last event before the files are read.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Reloads applied since this process started (`fw_policy_reloads_total`).
static RELOADS_OK: AtomicU64 = AtomicU64::new(0);
/// Reloads refused or failed: nothing changed.
static RELOADS_FAILED: AtomicU64 = AtomicU64::new(0);

/// (applied, failed) reloads of this process, for the metrics.
pub fn reload_counts() -> (u64, u64) {
    (RELOADS_OK.load(Ordering::Relaxed), RELOADS_FAILED.load(Ordering::Relaxed))
}

/// The files `--watch` follows, as the operator named them (not resolved:
/// a ConfigMap's file resolves into a directory that the next update
/// deletes, so each reload resolves the name again).
#[derive(Clone, Debug)]
pub struct Watched {
    /// `--policy` as given (a path made absolute), or a shipped policy's name.
    pub policy: String,
    /// `--env-file` as given (absolute), if any.
    pub env_file: Option<PathBuf>,
}

impl Watched {
    /// From `fw run`'s arguments. Relative paths are taken from the current
    /// directory now: the daemon may change directory, the names must not.
    pub fn new(policy: &str, env_file: Option<&Path>) -> Result<Watched> {
        let policy =
            if is_file_arg(policy) { absolute(Path::new(policy))?.display().to_string() } else { policy.to_string() };
        let env_file = env_file.map(absolute).transpose()?;
        let watched = Watched { policy, env_file };
        if watched.dirs().is_empty() {
            bail!(
                "--watch: the policy {} is built into fw and no env file is used: nothing to watch \
                 (give --policy FILE or --env-file FILE)",
                watched.policy
            );
        }
        Ok(watched)
    }

    /// The env file a reload reads: the one given, else OpenVidu's when it
    /// exists (what `fw run` and `fw switch` use).
    fn env_path(&self) -> Option<PathBuf> {
        source::env_file(self.env_file.as_deref())
    }

    fn policy_path(&self) -> Option<PathBuf> {
        is_file_arg(&self.policy).then(|| PathBuf::from(&self.policy))
    }

    /// The directories to watch: of each file as named and as resolved.
    fn dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        for file in self.policy_path().into_iter().chain(self.env_path()) {
            for path in [Some(file.clone()), std::fs::canonicalize(&file).ok()].into_iter().flatten() {
                if let Some(dir) = path.parent().filter(|d| d.is_dir()) {
                    dirs.insert(dir.to_path_buf());
                }
            }
        }
        dirs
    }

    /// What a reload would compile, read now.
    fn read(&self) -> Result<Sources> {
        let policy = PolicyText::resolve(&self.policy)?;
        let env = match self.env_path() {
            Some(path) => {
                let label = path.display().to_string();
                let text = source::file::read_text(&path, &label)?;
                Some((label, text))
            }
            None => None,
        };
        Ok(Sources { policy_label: policy.label, policy_text: policy.text, env })
    }
}

/// Same rule as [`PolicyText::resolve`]: a file, or a shipped policy's name.
fn is_file_arg(arg: &str) -> bool {
    let arg = arg.strip_prefix("builtin:").unwrap_or(arg);
    Path::new(arg).exists() || arg.contains('/') || arg.ends_with(".yaml") || arg.ends_with(".yml")
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("--watch: {}", path.display()))
}

/// The text and names a generation is compiled from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sources {
    /// Canonical path (or `builtin:NAME`), as the instance records it.
    policy_label: String,
    policy_text: String,
    /// (path as the instance records it, text).
    env: Option<(String, String)>,
}

/// What one look at the files came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The files hold what is enforced (or the same failure as last time).
    Unchanged,
    /// Switched to the edited files.
    Reloaded,
    /// The edit changed nothing: a bad policy, or a refused switch.
    Failed,
    /// A switch awaits confirmation: look again later.
    Deferred,
}

/// The blocking half: reads, compares and switches (on the blocking pool).
pub struct Reloader {
    name: String,
    watched: Watched,
    /// The sources (or the error) of the last failed attempt: the same
    /// again is not reported again.
    last_failure: Option<Result<Sources, String>>,
    /// A deferral was announced for these sources.
    deferred: Option<Result<Sources, String>>,
}

impl Reloader {
    pub fn new(name: &str, watched: Watched) -> Reloader {
        Reloader { name: name.to_string(), watched, last_failure: None, deferred: None }
    }

    /// Looks at the files and switches when they differ from what is enforced.
    pub fn check(&mut self) -> Outcome {
        let name = self.name.clone();
        let state = match instance::load_state(&name) {
            Ok(state) => state,
            // The instance is going away (`fw stop`): the housekeeping says so.
            Err(_) => return Outcome::Unchanged,
        };
        let sources = self.watched.read().map_err(|e| one_line(&e));
        if let Ok(now) = &sources {
            if self.enforced_sources(&state).as_ref() == Some(now) {
                self.last_failure = None;
                self.deferred = None;
                return Outcome::Unchanged;
            }
        }
        if self.last_failure.as_ref() == Some(&sources) {
            return Outcome::Unchanged;
        }
        if state.pending.is_some() || state.switching.is_some() {
            if self.deferred.as_ref() != Some(&sources) {
                say!(
                    "fw: {name}: {} changed while a switch awaits `fw confirm --name {name}`: not reloaded; \
                     it will be once the switch is confirmed or rolled back",
                    self.what()
                );
                self.deferred = Some(sources);
            }
            return Outcome::Deferred;
        }
        self.deferred = None;
        let phase = state.enforced.phase.clone();
        let from = state.enforced.generation;
        let result = sources.clone().map_err(anyhow::Error::msg).and_then(|_| {
            instance::switch(
                &name,
                &instance::SwitchRequest {
                    phase: phase.clone(),
                    policy: Some(self.watched.policy.clone()),
                    env_file: self.watched.env_path(),
                    confirm_secs: None,
                    force: false,
                    // This daemon's next tick deletes the old generation.
                    defer_collection: true,
                },
            )
        });
        match result {
            Ok(outcome) => {
                RELOADS_OK.fetch_add(1, Ordering::Relaxed);
                self.last_failure = None;
                crate::say_warnings(&outcome.warnings);
                say!(
                    "fw: {name}: {} changed: reloaded phase {phase} (generation {} -> {}) in {:.1} ms",
                    self.what(),
                    outcome.from.generation,
                    outcome.to.generation,
                    outcome.elapsed.as_secs_f64() * 1e3
                );
                Outcome::Reloaded
            }
            Err(e) => {
                RELOADS_FAILED.fetch_add(1, Ordering::Relaxed);
                say_err!(
                    "fw: {name}: reload of {} failed, nothing changed (phase {phase}, generation {from} stays): {}",
                    self.what(),
                    one_line(&e)
                );
                self.last_failure = Some(sources);
                Outcome::Failed
            }
        }
    }

    /// The sources of the enforced generation: its recorded policy and env
    /// file names and the copy of the text it was compiled from. `None`
    /// when no copy was kept (a state rebuilt from the kernel).
    fn enforced_sources(&self, state: &crate::instance::state::InstanceState) -> Option<Sources> {
        let e = &state.enforced;
        let copy = FileRecords::new(&self.name).load_copy(e.generation).ok().flatten()?;
        let env = match (&e.env_file, copy.env_text) {
            (Some(path), Some(text)) => Some((path.clone(), text)),
            (None, None) => None,
            _ => return None,
        };
        Some(Sources { policy_label: e.policy.clone(), policy_text: copy.policy_text, env })
    }

    fn what(&self) -> String {
        match (self.watched.policy_path(), self.watched.env_path()) {
            (Some(p), Some(e)) => format!("{} (or {})", p.display(), e.display()),
            (Some(p), None) => p.display().to_string(),
            (None, Some(e)) => format!("{} (variables of {})", e.display(), self.watched.policy),
            (None, None) => self.watched.policy.clone(),
        }
    }
}

/// An error on one line (a log line per failed reload, whatever the cause).
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// The async half: inotify on the runtime thread. The daemon loop keeps the
/// debounce and runs the [`Reloader`] on the blocking pool.
pub struct Watch {
    watched: Watched,
    stream: EventStream<Vec<u8>>,
    watches: Watches,
    watching: BTreeSet<PathBuf>,
    /// The reloader, when it is not out on the blocking pool.
    pub reloader: Option<Reloader>,
}

/// What makes a directory worth a look: files written, created, moved,
/// deleted, or their symlinks replaced.
fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

impl Watch {
    /// Subscribes before the instance is started or adopted, so that no
    /// edit made from then on is missed (the daemon's first look is due at
    /// once).
    pub fn subscribe(name: &str, watched: Watched) -> Result<Watch> {
        let inotify = Inotify::init().context("--watch: inotify_init")?;
        let watches = inotify.watches();
        let stream = inotify.into_event_stream(vec![0u8; 4096]).context("--watch: inotify on the runtime")?;
        let mut watch = Watch {
            reloader: Some(Reloader::new(name, watched.clone())),
            watched,
            stream,
            watches,
            watching: BTreeSet::new(),
        };
        watch.refresh_dirs()?;
        Ok(watch)
    }

    /// Watches the directories the files are in now (a ConfigMap update or
    /// a changed symlink moves them).
    pub fn refresh_dirs(&mut self) -> Result<()> {
        // A directory deleted drops its watch in the kernel: forget it, so
        // that one created again under the same name is watched again.
        self.watching.retain(|d| d.is_dir());
        for dir in self.watched.dirs() {
            if !self.watching.contains(&dir) {
                self.watches.add(&dir, mask()).with_context(|| format!("--watch: watching {}", dir.display()))?;
                self.watching.insert(dir);
            }
        }
        Ok(())
    }

    /// The next inotify event, by the name it concerns. Cancel-safe.
    pub async fn event(&mut self) -> Result<Option<OsString>> {
        match self.stream.next().await {
            Some(Ok(event)) => Ok(event.name),
            Some(Err(e)) => Err(e).context("--watch: reading inotify events"),
            None => bail!("--watch: the inotify stream ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shipped_policy_without_an_env_file_leaves_nothing_to_watch() {
        if source::DEFAULT_ENV_FILES.iter().any(|p| Path::new(p).exists()) {
            return; // that env file would be watched
        }
        let e = Watched::new("openvidu-ce", None).unwrap_err().to_string();
        assert!(e.starts_with("--watch: ") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn the_directories_of_the_files_as_named_and_as_resolved_are_watched() {
        // A ConfigMap volume: policy.yaml -> ..data/policy.yaml, ..data -> ..v1.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..v1")).unwrap();
        std::fs::write(dir.path().join("..v1/policy.yaml"), "name: x\n").unwrap();
        std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.yaml", dir.path().join("policy.yaml")).unwrap();
        let named = dir.path().join("policy.yaml");
        let watched = Watched::new(named.to_str().unwrap(), Some(&named)).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let dirs: Vec<PathBuf> = watched.dirs().into_iter().map(|d| std::fs::canonicalize(d).unwrap()).collect();
        assert!(dirs.contains(&root), "{dirs:?}");
        assert!(dirs.contains(&root.join("..v1")), "{dirs:?}");
        // A relative name is made absolute once, at start.
        let relative = Watched::new("src/daemon/watch.rs", None).unwrap();
        assert!(Path::new(&relative.policy).is_absolute());
    }
}
