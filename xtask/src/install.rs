//! `cargo xtask install`: the release `fw` binary, the shipped policies and
//! the systemd unit `fw@IFACE.service`, where an operator expects them.
//!
//! Policies already in the config directory are operator-owned: a shipped
//! file that differs is written beside it as `NAME.yaml.new` (as dpkg does
//! with conffiles), never over it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{bootstrap, build, cmd};

#[derive(Args)]
pub struct Options {
    /// Prefix of the binary: PREFIX/bin/fw.
    #[arg(long, default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Configuration directory: SYSCONFDIR/fw/*.yaml.
    #[arg(long, default_value = "/etc")]
    pub sysconfdir: PathBuf,
    /// Where the systemd unit goes.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unitdir: PathBuf,
}

/// The unit template, with @BINDIR@ and @SYSCONFDIR@ to fill in.
const UNIT_TEMPLATE: &str = include_str!("../../dist/fw@.service");
const UNIT_NAME: &str = "fw@.service";

pub fn install(opts: &Options) -> Result<()> {
    bootstrap::bootstrap(bootstrap::Purpose::Build)?;
    build::cargo_build(true)?;
    let binary = cmd::workspace_root().join("target/release/fw");
    let installed = install_files(&binary, &cmd::workspace_root().join("policies"), opts)?;
    for line in installed {
        println!("{line}");
    }
    if Path::new("/run/systemd/system").is_dir() && opts.unitdir.starts_with("/etc/systemd") {
        cmd::run(Command::new("systemctl").arg("daemon-reload"))?;
    }
    println!("enable it with: systemctl enable --now fw@IFACE.service (settings: {}/fw/IFACE.env)", opts.sysconfdir.display());
    Ok(())
}

/// Copies the binary, policies and unit; returns one line per file written.
pub fn install_files(binary: &Path, policies: &Path, opts: &Options) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let bindir = opts.prefix.join("bin");
    let confdir = opts.sysconfdir.join("fw");
    for dir in [&bindir, &confdir, &opts.unitdir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    copy_atomic(binary, &bindir.join("fw"), 0o755)?;
    done.push(format!("installed {}", bindir.join("fw").display()));

    let mut shipped: Vec<PathBuf> = fs::read_dir(policies)
        .with_context(|| format!("reading {}", policies.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    shipped.sort();
    if shipped.is_empty() {
        bail!("no policies in {}", policies.display());
    }
    for policy in shipped {
        let name = policy.file_name().expect("a file");
        let target = confdir.join(name);
        let text = fs::read(&policy)?;
        match fs::read(&target) {
            Ok(existing) if existing == text => {}
            Ok(_) => {
                let new = target.with_extension("yaml.new");
                copy_atomic(&policy, &new, 0o644)?;
                done.push(format!("kept your {}; the shipped one is {}", target.display(), new.display()));
            }
            Err(_) => {
                copy_atomic(&policy, &target, 0o644)?;
                done.push(format!("installed {}", target.display()));
            }
        }
    }

    let unit = render_unit(&bindir, &opts.sysconfdir);
    let unit_path = opts.unitdir.join(UNIT_NAME);
    write_atomic(&unit_path, unit.as_bytes(), 0o644)?;
    done.push(format!("installed {}", unit_path.display()));
    Ok(done)
}

pub fn render_unit(bindir: &Path, sysconfdir: &Path) -> String {
    UNIT_TEMPLATE
        .replace("@BINDIR@", &bindir.display().to_string())
        .replace("@SYSCONFDIR@", &sysconfdir.display().to_string())
}

fn copy_atomic(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_atomic(to, &bytes, mode)
}

/// Temp file + rename: a running `fw` binary or a unit being read is never
/// seen half-written.
fn write_atomic(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fw-install-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `KEY=VALUE` lines of the `[Service]` section of `unit`.
    fn service_settings(unit: &str) -> Vec<(String, String)> {
        let mut section = "";
        let mut settings = Vec::new();
        for line in unit.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if section == "[Service]" && !line.starts_with('#') {
                if let Some((key, value)) = line.split_once('=') {
                    settings.push((key.trim().to_string(), value.trim().to_string()));
                }
            }
        }
        settings
    }

    /// Why a sandboxing setting would cost fw the host's bpffs, or the
    /// means to check it has it (see fw-user/src/bpffs.rs), or `None`.
    fn loses_the_hosts_bpffs(key: &str, value: &str) -> Option<&'static str> {
        let off = matches!(value, "" | "no" | "false" | "0" | "off");
        match key {
            "PrivateMounts" | "ProtectKernelTunables" | "PrivateNetwork" if !off => {
                Some("a private or read-only /sys, or another network namespace")
            }
            "ProtectSystem" if value == "strict" => Some("/sys read-only: nothing can be pinned"),
            "ProtectProc" if value != "default" && !off => Some("PID 1 hidden: fw cannot verify the bpffs"),
            "ProcSubset" if value != "all" && !off => Some("PID 1 hidden: fw cannot verify the bpffs"),
            "RootDirectory" | "RootImage" | "MountImages" | "NetworkNamespacePath" | "JoinsNamespaceOf" => {
                Some("another root, mount or network namespace")
            }
            "TemporaryFileSystem" | "InaccessiblePaths" | "ReadOnlyPaths" | "BindPaths" | "BindReadOnlyPaths"
                if value.split_whitespace().any(|p| "/sys/fs/bpf".starts_with(p.trim_start_matches(['-', '+']))) =>
            {
                Some("hides or replaces /sys/fs/bpf")
            }
            _ => None,
        }
    }

    #[test]
    fn finding2_unit_sandboxing_keeps_the_hosts_bpffs() {
        // Read the unit: no setting that gives fw a /sys/fs/bpf of its own.
        let settings = service_settings(UNIT_TEMPLATE);
        assert!(settings.iter().any(|(k, _)| k == "ExecStart"), "no [Service] section read: {settings:?}");
        for (key, value) in &settings {
            if let Some(why) = loses_the_hosts_bpffs(key, value) {
                panic!("dist/fw@.service sets {key}={value}: {why}; pins would not outlive fw");
            }
        }
        assert!(loses_the_hosts_bpffs("PrivateMounts", "yes").is_some() && loses_the_hosts_bpffs("ProtectHome", "yes").is_none());
        assert!(loses_the_hosts_bpffs("TemporaryFileSystem", "/sys").is_some());
        assert!(loses_the_hosts_bpffs("ReadOnlyPaths", "-/sys/fs/bpf").is_some());

        // And as systemd reads it, where systemd-analyze exists.
        let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("no systemd-analyze: the unit was checked by reading it only");
            return;
        };
        assert!(version.status.success());
        let root = std::env::temp_dir().join(format!("fw-unit-bpffs-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let bindir = root.join("bin");
        fs::create_dir_all(&bindir).unwrap();
        // Any executable stands in for fw: verify checks that ExecStart runs.
        copy_atomic(Path::new("/bin/true"), &bindir.join("fw"), 0o755).unwrap();
        let instance = root.join("fw@veth0.service");
        fs::write(&instance, render_unit(&bindir, &root.join("etc"))).unwrap();
        let verify = Command::new("systemd-analyze").arg("verify").arg(&instance).output().unwrap();
        let stderr = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
        // The effective sandbox (defaults and implications included), from
        // systemd itself (`--offline`: systemd 250 and later).
        let security = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&instance).output().unwrap();
        fs::remove_dir_all(&root).unwrap();
        if !security.status.success() {
            eprintln!("systemd-analyze security --offline is not available: {}", String::from_utf8_lossy(&security.stderr));
            return;
        }
        let table = String::from_utf8_lossy(&security.stdout);
        for setting in ["PrivateMounts=", "ProtectKernelTunables=", "ProtectProc=", "ProcSubset=", "RootDirectory=/RootImage="] {
            // `✗`: not applied; no mark: not applicable (the unit runs in the
            // early boot phase, DefaultDependencies=no); `✓` would be applied.
            let line = table
                .lines()
                .find(|l| l.split_whitespace().any(|w| w == setting))
                .unwrap_or_else(|| panic!("{setting} missing from systemd-analyze security:\n{table}"));
            assert!(!line.trim_start().starts_with('✓'), "systemd applies {setting} to fw@.service: {line}");
        }
        let protect_system = table.lines().find(|l| l.contains(" ProtectSystem= ")).expect("ProtectSystem= line");
        assert!(!protect_system.contains("strict"), "ProtectSystem=strict makes /sys read-only: {protect_system}");
    }

    #[test]
    fn the_installed_unit_passes_systemd_analyze_verify_and_policies_are_not_overwritten() {
        let root = temp_root();
        let opts = Options {
            prefix: root.join("usr/local"),
            sysconfdir: root.join("etc"),
            unitdir: root.join("etc/systemd/system"),
        };
        // Any executable stands in for fw: verify checks that ExecStart runs.
        let binary = Path::new("/bin/true");
        let policies = cmd::workspace_root().join("policies");
        install_files(binary, &policies, &opts).unwrap();
        let unit = fs::read_to_string(opts.unitdir.join(UNIT_NAME)).unwrap();
        assert!(unit.contains(&format!("ExecStart={}/fw run --iface %i", opts.prefix.join("bin").display())));
        assert!(unit.contains("Restart=on-failure"));

        // systemd-analyze verifies an instance of the template.
        let instance = opts.unitdir.join("fw@veth0.service");
        fs::copy(opts.unitdir.join(UNIT_NAME), &instance).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&instance).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

        // The systemd-analyze above parses; the ordering is checked by
        // reading the unit (finding11_unit_*), as `systemctl show` would need
        // a running systemd.

        // An operator's edit survives a reinstall.
        let policy = opts.sysconfdir.join("fw/openvidu-ce.yaml");
        fs::write(&policy, "# edited\n").unwrap();
        let lines = install_files(binary, &policies, &opts).unwrap();
        assert_eq!(fs::read_to_string(&policy).unwrap(), "# edited\n");
        assert!(opts.sysconfdir.join("fw/openvidu-ce.yaml.new").exists());
        assert!(lines.iter().any(|l| l.contains("kept your")));
        fs::remove_dir_all(&root).unwrap();
    }

    /// `section -> key -> values` of a unit file: values split on white
    /// space, repeated keys accumulated, as systemd does for dependency lists.
    fn parse_unit(text: &str) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>> {
        let mut sections = std::collections::BTreeMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with(['#', ';'])) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_string();
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=VALUE: {line}"));
            let values: &mut Vec<String> = sections
                .entry(section.clone())
                .or_insert_with(std::collections::BTreeMap::new)
                .entry(key.trim().to_string())
                .or_default();
            values.extend(value.split_whitespace().map(str::to_string));
        }
        sections
    }

    /// Finding 11 (boot): the unit starts before the network is configured,
    /// waits for its interface, and reports readiness itself.
    #[test]
    fn finding11_unit_starts_before_the_network_and_reports_readiness() {
        let unit = render_unit(Path::new("/usr/local/bin"), Path::new("/etc"));
        let sections = parse_unit(&unit);
        let get = |section: &str, key: &str| -> Vec<String> {
            sections.get(section).and_then(|s| s.get(key)).cloned().unwrap_or_default()
        };
        let has = |section: &str, key: &str, value: &str| get(section, key).iter().any(|v| v == value);
        let device = "sys-subsystem-net-devices-%i.device";

        // Before networking, as nftables.service: the default dependencies
        // (after sysinit.target and basic.target) would make that impossible.
        assert_eq!(get("Unit", "DefaultDependencies"), ["no"]);
        assert!(has("Unit", "Before", "network-pre.target"), "{unit}");
        assert!(has("Unit", "Wants", "network-pre.target"), "{unit}");
        // What the default dependencies would have given for shutdown.
        assert!(has("Unit", "Before", "shutdown.target") && has("Unit", "Conflicts", "shutdown.target"), "{unit}");
        // Ordered after anything of the network would be a cycle.
        for late in ["network.target", "network-online.target", "network-pre.target", "sysinit.target", "basic.target"] {
            assert!(!has("Unit", "After", late), "After={late} contradicts Before=network-pre.target:\n{unit}");
        }
        // Waits for its interface, and is not stopped when the interface goes
        // (the daemon re-attaches to it when it is back).
        assert!(has("Unit", "Requires", device) && has("Unit", "After", device), "{unit}");
        assert!(get("Unit", "BindsTo").is_empty(), "{unit}");
        assert!(has("Install", "WantedBy", device), "the interface's appearance must start the unit:\n{unit}");
        assert!(has("Install", "WantedBy", "multi-user.target"), "{unit}");
        // The binary and bpffs are mounted first.
        assert!(has("Unit", "RequiresMountsFor", "/usr/local/bin") && has("Unit", "RequiresMountsFor", "/sys/fs/bpf"), "{unit}");

        // Ready only when fw run says so: once it enforces.
        assert_eq!(get("Service", "Type"), ["notify"]);
        assert_eq!(get("Service", "NotifyAccess"), ["main"]);
        assert!(get("Service", "ExecStart").first().is_some_and(|exe| exe == "/usr/local/bin/fw"), "{unit}");
    }
}
