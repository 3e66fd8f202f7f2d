//! Who sent it: a cgroup v2 id to its path, and a path to the container or
//! systemd unit it shows.
//!
//! A cgroup v2 id is the inode number of the cgroup's directory, so the
//! only way from an id to a path is to walk the hierarchy. The walk is
//! cached; an unknown id (a cgroup created since) triggers a new walk, at
//! most once per [`REWALK_AFTER`], so a flood of events from a cgroup that
//! is already gone costs one walk, not one per event.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// How often an unknown cgroup id may cause a new walk of the hierarchy.
const REWALK_AFTER: Duration = Duration::from_secs(2);
/// Docker keeps each container's configuration here; `Name` is its name.
const DOCKER_CONTAINERS: &str = "/var/lib/docker/containers";
/// Walks stop this deep (cgroup trees are shallow; this bounds a loop).
const MAX_DEPTH: usize = 32;

/// A container, or the systemd unit, a cgroup path belongs to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// `docker`, `containerd`, `podman`, `crio`, or `systemd` (a unit).
    pub runtime: String,
    /// The container id, or the unit's name.
    pub id: String,
    /// The docker container name, when its configuration is readable.
    pub name: Option<String>,
}

impl Container {
    /// `container openvidu-nginx-1`, `docker 3f2a9c1b7d0e`, `unit nginx.service`.
    pub fn label(&self) -> String {
        match (&self.name, self.runtime.as_str()) {
            (Some(name), _) => format!("container {name}"),
            (None, "systemd") => format!("unit {}", self.id),
            (None, runtime) => format!("{runtime} {}", &self.id[..self.id.len().min(12)]),
        }
    }
}

/// What a cgroup path shows, looking from the innermost directory out: the
/// first container runtime pattern wins; a systemd unit only counts when no
/// container is found (a container's scope sits inside `system.slice`).
pub fn container_of(path: &str) -> Option<Container> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let found = |runtime: &str, id: &str| Container { runtime: runtime.into(), id: id.into(), name: None };
    for (i, part) in parts.iter().enumerate().rev() {
        if let Some(id) = scoped(part, "docker-") {
            return Some(found("docker", id));
        }
        if i > 0 && parts[i - 1] == "docker" && is_container_id(part) {
            return Some(found("docker", part));
        }
        if let Some(id) = scoped(part, "cri-containerd-") {
            return Some(found("containerd", id));
        }
        // `libpod-conmon-<id>.scope` is podman's monitor, not the container:
        // its id is not hex, so `scoped` passes it by.
        if let Some(id) = scoped(part, "libpod-") {
            return Some(found("podman", id));
        }
        if let Some(id) = scoped(part, "crio-") {
            return Some(found("crio", id));
        }
    }
    parts.iter().rev().find(|p| p.ends_with(".service") || p.ends_with(".scope")).map(|unit| found("systemd", unit))
}

/// `<prefix><id>.scope` -> id, when id looks like a container id.
fn scoped<'a>(part: &'a str, prefix: &str) -> Option<&'a str> {
    let id = part.strip_prefix(prefix)?.strip_suffix(".scope")?;
    is_container_id(id).then_some(id)
}

/// Container ids are 64 hex digits; accept any long hex string.
fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Cached cgroup id -> path and docker id -> name lookups.
pub struct Resolver {
    mount: Option<PathBuf>,
    paths: HashMap<u64, String>,
    last_walk: Option<Instant>,
    docker_names: HashMap<String, Option<String>>,
}

impl Resolver {
    /// A resolver over the cgroup v2 hierarchy mounted on this host (none
    /// mounted: every id stays unresolved).
    pub fn new() -> Resolver {
        Resolver { mount: crate::kernel::cgroup::v2_mount().ok(), ..Resolver::empty() }
    }

    /// A resolver that knows no cgroups (tests, hosts without cgroup v2).
    pub fn empty() -> Resolver {
        Resolver { mount: None, paths: HashMap::new(), last_walk: None, docker_names: HashMap::new() }
    }

    /// The path of cgroup `id` under the mount (`/system.slice/x.service`),
    /// `/` for the root.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let mount = self.mount.clone()?;
        if self.last_walk.is_some_and(|t| t.elapsed() < REWALK_AFTER) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        self.paths.clear();
        walk(&mount, &mount, 0, &mut self.paths);
        self.paths.get(&id).cloned()
    }

    /// The container (with its docker name when readable) or unit of `path`.
    pub fn container(&mut self, path: &str) -> Option<Container> {
        let mut container = container_of(path)?;
        if container.runtime == "docker" {
            container.name = self
                .docker_names
                .entry(container.id.clone())
                .or_insert_with(|| docker_name(Path::new(DOCKER_CONTAINERS), &container.id))
                .clone();
        }
        Some(container)
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

fn walk(mount: &Path, dir: &Path, depth: usize, out: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::metadata(dir) else { return };
    let relative = dir.strip_prefix(mount).map(|p| format!("/{}", p.display())).unwrap_or_default();
    out.insert(meta.ino(), relative);
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(mount, &entry.path(), depth + 1, out);
        }
    }
}

/// `Name` from `<dir>/<id>/config.v2.json`, without its leading `/`.
fn docker_name(dir: &Path, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(id).join("config.v2.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let name = config.get("Name")?.as_str()?;
    Some(name.trim_start_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d0e4a5b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d";

    fn runtime_and_id(path: &str) -> Option<(String, String)> {
        container_of(path).map(|c| (c.runtime, c.id))
    }

    #[test]
    fn containers_are_recognised_from_their_cgroup_paths() {
        let want = |runtime: &str, id: &str| Some((runtime.to_string(), id.to_string()));
        assert_eq!(runtime_and_id(&format!("/system.slice/docker-{ID}.scope")), want("docker", ID));
        assert_eq!(runtime_and_id(&format!("/docker/{ID}")), want("docker", ID));
        assert_eq!(
            runtime_and_id(&format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope")),
            want("containerd", ID)
        );
        assert_eq!(runtime_and_id(&format!("/machine.slice/libpod-{ID}.scope/container")), want("podman", ID));
        assert_eq!(runtime_and_id(&format!("/kubepods/crio-{ID}.scope")), want("crio", ID));
        assert_eq!(runtime_and_id("/system.slice/nginx.service"), want("systemd", "nginx.service"));
        assert_eq!(runtime_and_id("/user.slice/user-1000.slice/session-4.scope"), want("systemd", "session-4.scope"));
    }

    #[test]
    fn paths_without_a_container_or_unit_show_none() {
        assert_eq!(runtime_and_id("/"), None);
        assert_eq!(runtime_and_id("/fwt-12-3"), None);
        // `docker` alone or a short non-hex name is not a container.
        assert_eq!(runtime_and_id("/docker/not-an-id"), None);
        assert_eq!(
            runtime_and_id("/system.slice/docker-abc.scope"),
            Some(("systemd".into(), "docker-abc.scope".into()))
        );
    }

    #[test]
    fn podman_conmon_scopes_are_not_the_container() {
        let conmon = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(runtime_and_id(&conmon), Some(("systemd".into(), format!("libpod-conmon-{ID}.scope"))));
    }

    #[test]
    fn docker_names_come_from_the_container_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(ID)).unwrap();
        std::fs::write(dir.path().join(ID).join("config.v2.json"), r#"{"ID":"x","Name":"/openvidu-nginx-1"}"#).unwrap();
        assert_eq!(docker_name(dir.path(), ID).as_deref(), Some("openvidu-nginx-1"));
        assert_eq!(docker_name(dir.path(), "missing"), None);
        let c = Container { runtime: "docker".into(), id: ID.into(), name: None };
        assert_eq!(c.label(), "docker 3f2a9c1b7d0e");
    }

    #[test]
    fn the_walk_maps_inode_numbers_to_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let mut out = HashMap::new();
        walk(dir.path(), dir.path(), 0, &mut out);
        let ino = std::fs::metadata(dir.path().join("a/b")).unwrap().ino();
        assert_eq!(out.get(&ino).map(String::as_str), Some("/a/b"));
        assert_eq!(out.len(), 3);
    }
}
