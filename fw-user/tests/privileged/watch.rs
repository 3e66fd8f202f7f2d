//! `fw run --watch` (issue 17): an edit of the policy or env file switches
//! the enforced phase within 2 s; a broken edit changes nothing, logs one
//! line and counts a failure; a Kubernetes-style ConfigMap update (the
//! `..data` symlink swapped) is an edit too; and nothing is reloaded while
//! a switch awaits `fw confirm`.

use std::{
    ffi::OsStr,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::symlink,
    path::Path,
    time::{Duration, Instant},
};

use crate::harness::{
    self,
    fw::Fw,
    metrics,
    netns::VethPair,
    poll,
    traffic::{in_netns, tcp_echo, Echo, Outcome, DROP_TIMEOUT, PASS_TIMEOUT},
    TempDir,
};

const PORT_A: u16 = 8080;
const PORT_B: u16 = 8081;

/// Egress to `to` on `port` only.
fn policy(to: &str, port: u16) -> String {
    format!(
        "name: watched\nphases:\n  test:\n    egress:\n      - {{ name: allowed, to: [\"{to}\"], proto: tcp, ports: [{port}] }}\n"
    )
}

/// Writes `text` the way editors save: a new file renamed over the old one.
fn save_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-save");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// TCP echo servers on both ports of both far addresses.
struct Site {
    _servers: Vec<Echo>,
    dir: TempDir,
    pair: VethPair,
}

impl Site {
    fn new() -> Self {
        harness::setup();
        let pair = VethPair::new(0);
        let mut servers = Vec::new();
        for ip in pair.far_addrs() {
            for port in [PORT_A, PORT_B] {
                servers.push(Echo::tcp(&pair.far, SocketAddr::new(ip, port)));
            }
        }
        Site { _servers: servers, dir: TempDir::new(), pair }
    }

    fn passes(&self, ip: IpAddr, port: u16) -> bool {
        match in_netns(&self.pair.near, || tcp_echo(SocketAddr::new(ip, port), PASS_TIMEOUT)) {
            Outcome::Echoed => true,
            other => panic!("{ip}:{port} should pass, got {other:?}"),
        }
    }

    fn dropped(&self, ip: IpAddr, port: u16) -> bool {
        match in_netns(&self.pair.near, || tcp_echo(SocketAddr::new(ip, port), DROP_TIMEOUT)) {
            Outcome::TimedOut => true,
            other => panic!("{ip}:{port} should be dropped, got {other:?}"),
        }
    }

    fn start(&self, policy: &Path, phase: &str, extra: &[&str]) -> Fw<'_> {
        let mut args: Vec<&OsStr> = vec![OsStr::new("--watch"), OsStr::new("--metrics"), OsStr::new("127.0.0.1:0")];
        args.extend(extra.iter().map(OsStr::new));
        Fw::start_with(&self.pair.near, &self.pair.near_if, policy, phase, &args)
    }
}

fn generation(fw: &Fw) -> u64 {
    fw.status_json()["generation"].as_u64().expect("a generation")
}

/// Polls `fw status` until the generation is not `from`, at most `limit`.
/// Returns how long it took, or `None`.
fn new_generation_within(fw: &Fw, from: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if generation(fw) != from {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reloads(site: &Site, fw: &Fw, outcome: &str) -> u64 {
    let text = metrics::scrape(&site.pair.near, metrics::address(fw));
    metrics::sample(&text, &format!("fw_policy_reloads_total{{outcome=\"{outcome}\"}}"))
}

fn failure_lines(fw: &Fw) -> Vec<String> {
    fw.log_text().lines().filter(|l| l.contains("reload of") && l.contains("failed")).map(str::to_string).collect()
}

#[test]
fn watch_an_edit_of_the_policy_switches_within_2s() {
    let site = Site::new();
    let far4 = site.pair.far4.to_string();
    let file = site.dir.write("policy.yaml", &policy(&far4, PORT_A));
    let fw = site.start(&file, "test", &[]);
    let far: IpAddr = site.pair.far4.into();
    assert!(site.passes(far, PORT_A) && site.dropped(far, PORT_B));
    let before = generation(&fw);

    save_by_rename(&file, &policy(&far4, PORT_B));
    let took = new_generation_within(&fw, before, Duration::from_secs(2));
    assert!(took.is_some(), "no switch within 2 s of the edit; fw run printed:\n{}", fw.log_text());
    eprintln!("edit -> new generation in {:?}", took.unwrap());

    let status = fw.status_json();
    assert_eq!(status["phase"], "test", "only the enforced phase is reloaded: {status}");
    assert!(site.passes(far, PORT_B) && site.dropped(far, PORT_A));
    assert!(fw.log_text().contains("changed: reloaded phase test"), "{}", fw.log_text());
    // Counted once the reload has finished (after the new generation is
    // active, the old one is still being deleted).
    assert!(poll(Duration::from_secs(10), || reloads(&site, &fw, "ok") == 1), "{}", fw.log_text());
    assert_eq!((reloads(&site, &fw, "ok"), reloads(&site, &fw, "failed")), (1, 0));
}

#[test]
fn watch_a_broken_edit_changes_nothing_logs_one_line_and_counts_a_failure() {
    let site = Site::new();
    let far4 = site.pair.far4.to_string();
    let file = site.dir.write("policy.yaml", &policy(&far4, PORT_A));
    let fw = site.start(&file, "test", &[]);
    let far: IpAddr = site.pair.far4.into();
    let before = generation(&fw);

    // Written in place (truncate, write), as `echo > file` does: a port
    // out of range, which the policy loader rejects with line and column.
    fs::write(&file, policy(&far4, 65535).replace("65535", "70000")).unwrap();
    assert!(
        fw.log_has_within("reload of", Duration::from_secs(10)),
        "no failure line after a broken edit; fw run printed:\n{}",
        fw.log_text()
    );
    let lines = failure_lines(&fw);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("nothing changed") && lines[0].contains("policy.yaml:"), "{}", lines[0]);
    assert_eq!(generation(&fw), before, "a broken edit changed the generation");
    assert!(site.passes(far, PORT_A) && site.dropped(far, PORT_B), "a broken edit changed the enforcement");
    assert_eq!(reloads(&site, &fw, "failed"), 1);

    // Noise in the directory (a swap file), then a good edit: the broken
    // text is not reported twice, and the good one is applied.
    site.dir.write(".policy.yaml.swp", "editor state");
    save_by_rename(&file, &policy(&far4, PORT_B));
    assert!(new_generation_within(&fw, before, Duration::from_secs(10)).is_some(), "{}", fw.log_text());
    assert_eq!(failure_lines(&fw).len(), 1, "{}", fw.log_text());
    assert!(site.passes(far, PORT_B));
    assert!(poll(Duration::from_secs(10), || reloads(&site, &fw, "ok") == 1), "{}", fw.log_text());
    assert_eq!((reloads(&site, &fw, "ok"), reloads(&site, &fw, "failed")), (1, 1));
}

/// A ConfigMap volume as the kubelet writes it: the files are symlinks
/// through `..data`, itself a symlink to a timestamped directory that an
/// update replaces (new directory, `..data` renamed over, old one deleted).
struct ConfigMapDir<'a> {
    root: &'a Path,
    version: u32,
}

impl<'a> ConfigMapDir<'a> {
    fn new(root: &'a Path, files: &[(&str, &str)]) -> Self {
        let mut dir = ConfigMapDir { root, version: 0 };
        dir.update(files);
        for (name, _) in files {
            symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        dir
    }

    fn update(&mut self, files: &[(&str, &str)]) {
        self.version += 1;
        let new = format!("..2026_v{}", self.version);
        fs::create_dir(self.root.join(&new)).unwrap();
        for (name, text) in files {
            fs::write(self.root.join(&new).join(name), text).unwrap();
        }
        symlink(&new, self.root.join("..data_tmp")).unwrap();
        fs::rename(self.root.join("..data_tmp"), self.root.join("..data")).unwrap();
        if self.version > 1 {
            fs::remove_dir_all(self.root.join(format!("..2026_v{}", self.version - 1))).unwrap();
        }
    }
}

#[test]
fn watch_follows_a_configmap_update_of_the_env_file() {
    let site = Site::new();
    let text = policy("${ALLOWED}", PORT_A);
    let (far4, far6) = (site.pair.far4.to_string(), site.pair.far6.to_string());
    let mut config =
        ConfigMapDir::new(site.dir.path(), &[("policy.yaml", &text), ("fw.env", &format!("ALLOWED={far4}\n"))]);
    let env = site.dir.path().join("fw.env");
    let fw = site.start(&site.dir.path().join("policy.yaml"), "test", &["--env-file", env.to_str().unwrap()]);
    assert!(site.passes(far4.parse().unwrap(), PORT_A) && site.dropped(far6.parse().unwrap(), PORT_A));
    let before = generation(&fw);

    config.update(&[("policy.yaml", &text), ("fw.env", &format!("ALLOWED={far6}\n"))]);
    assert!(
        new_generation_within(&fw, before, Duration::from_secs(2)).is_some(),
        "no switch within 2 s of the ConfigMap update; fw run printed:\n{}",
        fw.log_text()
    );
    assert!(site.passes(far6.parse().unwrap(), PORT_A) && site.dropped(far4.parse().unwrap(), PORT_A));
    // The instance now names the new directory, not the deleted one: a
    // plain `fw switch` (no --policy) still finds the files.
    let switched = fw.cli(&["switch", "test"]);
    assert!(switched.status.success(), "{switched:#?}");
}

#[test]
fn watch_waits_while_a_switch_awaits_confirmation() {
    let site = Site::new();
    let far4 = site.pair.far4.to_string();
    let two_phases = |port: u16| {
        format!(
            "name: watched\nphases:\n  runtime:\n    egress:\n      - {{ name: allowed, to: [\"{far4}\"], proto: tcp, ports: [{port}] }}\n  install:\n    extends: runtime\n    egress:\n      - {{ name: web, to: [\"{far4}\"], proto: tcp, ports: [{PORT_B}] }}\n"
        )
    };
    let file = site.dir.write("policy.yaml", &two_phases(PORT_A));
    let fw = site.start(&file, "install", &[]);
    let switched = fw.cli(&["switch", "runtime", "--confirm", "120"]);
    assert!(switched.status.success(), "{switched:#?}");
    let pending = generation(&fw);

    save_by_rename(&file, &two_phases(PORT_B));
    assert!(fw.log_has_within("awaits `fw confirm", Duration::from_secs(10)), "{}", fw.log_text());
    assert_eq!(generation(&fw), pending, "reloaded while a switch awaited confirmation");
    assert_eq!(fw.status_json()["phase"], "runtime");

    let confirmed = fw.cli(&["confirm"]);
    assert!(confirmed.status.success(), "{confirmed:#?}");
    assert!(
        new_generation_within(&fw, pending, Duration::from_secs(10)).is_some(),
        "the edit was not applied after the confirmation:\n{}",
        fw.log_text()
    );
    let status = fw.status_json();
    assert_eq!(status["phase"], "runtime", "the watcher switched phases: {status}");
    assert!(status["pending_confirm"].is_null(), "{status}");
    let far: IpAddr = site.pair.far4.into();
    assert!(site.passes(far, PORT_B) && site.dropped(far, PORT_A));
}

#[test]
fn watch_loads_an_edit_made_while_no_daemon_ran() {
    let site = Site::new();
    let far4 = site.pair.far4.to_string();
    let file = site.dir.write("policy.yaml", &policy(&far4, PORT_A));
    let mut fw = site.start(&file, "test", &[]);
    let before = generation(&fw);
    // The daemon dies (enforcement stays); the file is edited meanwhile.
    fw.kill_run_process();
    save_by_rename(&file, &policy(&far4, PORT_B));
    assert_eq!(generation(&fw), before);
    // The next daemon adopts the instance, then loads the edited file.
    fw.start_again();
    assert!(
        new_generation_within(&fw, before, Duration::from_secs(10)).is_some(),
        "the restarted daemon did not load the file edited while none ran:\n{}",
        fw.log_text()
    );
    let far: IpAddr = site.pair.far4.into();
    assert!(site.passes(far, PORT_B) && site.dropped(far, PORT_A));
}
