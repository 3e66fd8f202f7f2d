//! What a killed run left behind, removed by the next one: a test or a
//! benchmark killed before its guards ran leaves namespaces (with its
//! processes still in them), fw instances (pins, control sockets, state
//! files, boot records) and scratch directories. Only names of `prefix`
//! whose owner pid is gone are touched ([`crate::names::is_leftover`]), so
//! runs that are still going, and anything that is not ours, stay.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{names::is_leftover, netns::NETNS_DIR};

/// Where fw pins an instance's maps, programs and links.
pub const PIN_ROOT: &str = "/sys/fs/bpf/fw";
/// fw's control sockets and state files.
pub const FW_RUN_DIR: &str = "/run/fw";
/// fw's boot records (`fw stop` without `--forget` keeps them).
pub const FW_LIB_DIR: &str = "/var/lib/fw";

/// Removes the leftovers of dead `prefix` runs. `fw`: the binary that stops
/// a leftover instance properly (`fw stop --forget`) before its files go;
/// `scratch`: more directories whose `prefix` entries are ours (the temp
/// directory).
pub fn sweep(prefix: &str, fw: Option<&Path>, scratch: &[PathBuf]) {
    for ns in entries(Path::new(NETNS_DIR), prefix) {
        eprintln!("sweeping the namespace {ns} of an earlier run, and the processes left in it");
        // Only processes inside a namespace of a dead run of ours.
        let pids = Command::new("ip").args(["netns", "pids", &ns]).output().map(|o| o.stdout).unwrap_or_default();
        for pid in String::from_utf8_lossy(&pids).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    }
    if let Some(fw) = fw {
        for instance in entries(Path::new(PIN_ROOT), prefix) {
            eprintln!("stopping the fw instance {instance} of an earlier run");
            let _ = Command::new(fw).args(["stop", "--name", &instance, "--forget"]).output();
        }
    }
    let dirs = [PIN_ROOT, FW_RUN_DIR, FW_LIB_DIR].map(PathBuf::from);
    for dir in dirs.iter().chain(scratch) {
        for name in entries(dir, prefix) {
            let path = dir.join(&name);
            eprintln!("sweeping {}", path.display());
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// Names in `dir` that are leftovers of dead `prefix` runs.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).filter(|n| is_leftover(prefix, n)).collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_of_dead_owners_with_our_prefix_are_swept() {
        let dir = std::env::temp_dir().join(crate::names::unique("fwlabtest"));
        fs::create_dir_all(&dir).unwrap();
        let mine = crate::names::unique("fwz");
        for name in [mine.as_str(), "fwz-4194399-1.sock", "fwz-4194399-2", "other-4194399-1", "fwz-x"] {
            fs::write(dir.join(name), "").unwrap();
        }
        sweep("fwz", None, std::slice::from_ref(&dir));
        let mut left: Vec<String> =
            fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let _ = fs::remove_dir_all(&dir);
        let mut want = vec![mine, "fwz-x".to_string(), "other-4194399-1".to_string()];
        want.sort();
        assert_eq!(left, want);
    }
}
