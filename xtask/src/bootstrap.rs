//! Prepares the machine: every step checks first, does work only when
//! something is missing, and prints one line when (and only when) it acts.
//! A second run prints nothing and does nothing.
//!
//! * the nightly toolchain with `rust-src` (the eBPF target builds `core`);
//! * `bpf-linker`, built against the nightly's own LLVM (no system LLVM
//!   matches it), through a stable prefix directory whose `lib/libLLVM.so`
//!   links to the nightly's library; the binary's RUNPATH points there, so
//!   the prefix lives in `~/.cache/fw/`, not in `target/` or `/tmp`;
//! * bpffs at `/sys/fs/bpf` (pins), for the privileged tests (as root;
//!   `xtask run` mounts it itself, through sudo if need be);
//! * the tools the privileged tests drive (`ip`, `nsenter`, `setpriv`);
//! * for the image (`cargo xtask image`, and the tests that run it): the
//!   musl target of the stable toolchain, musl-tools (mimalloc is C),
//!   podman and runc (Debian's packages; runc because crun refuses a
//!   hybrid cgroup layout);
//! * for the Kubernetes manifests' test: `kubernetes-validate`, pinned, in
//!   a virtualenv under `~/.cache/fw/` (it ships the schemas: offline).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// What the bootstrapped machine must be able to do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Build fw and its eBPF object.
    Build,
    /// Also run the privileged tests: bpffs (if root) and the netns tools.
    Test,
}

pub const BPFFS: &str = "/sys/fs/bpf";

pub fn bootstrap(purpose: Purpose) -> Result<()> {
    cargo_bin_on_path()?;
    nightly_with_rust_src()?;
    bpf_linker()?;
    match purpose {
        Purpose::Build => {}
        Purpose::Test => {
            test_tools()?;
            musl_target()?;
            container_engine()?;
            kubernetes_validate()?;
            if cmd::is_root() {
                mount_bpffs()?;
            }
        }
    }
    Ok(())
}

/// `cargo install` puts bpf-linker in `$CARGO_HOME/bin`; aya-build looks it
/// up on PATH, so make sure that directory is there for every child.
fn cargo_bin_on_path() -> Result<()> {
    let bin = cargo_home()?.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return Ok(());
    }
    let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
        .context("PATH cannot hold $CARGO_HOME/bin")?;
    std::env::set_var("PATH", joined);
    Ok(())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    Ok(home_dir()?.join(".cargo"))
}

fn home_dir() -> Result<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")
}

fn nightly_with_rust_src() -> Result<()> {
    if cmd::which("rustup").is_none() {
        bail!("rustup not found: building the eBPF object needs a nightly toolchain with rust-src, managed by rustup");
    }
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    let has_nightly = toolchains.lines().any(|l| l.split_whitespace().next().is_some_and(|t| t.starts_with("nightly")));
    if !has_nightly {
        println!("installing the nightly toolchain (builds the eBPF object)");
        cmd::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        cmd::output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("adding rust-src to the nightly toolchain (the eBPF target builds core from source)");
        cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// A bpf-linker that is on PATH but cannot start (its libLLVM moved away) is
/// as good as missing, so the check runs it.
fn bpf_linker() -> Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    let llvm = NightlyLlvm::find()?;
    let prefix = llvm_prefix(&llvm)?;
    println!("building bpf-linker against nightly's LLVM {} (takes about a minute)", llvm.major);
    cmd::run(
        cmd::cargo()
            .args(["install", "bpf-linker", "--force", "--locked", "--no-default-features"])
            .arg("--features")
            .arg(format!("llvm-{}", llvm.major))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    Ok(())
}

/// The LLVM shared library that ships inside the nightly toolchain.
struct NightlyLlvm {
    major: u32,
    /// `<sysroot>/lib/libLLVM.so.<ver>-rust-<...>`
    library: PathBuf,
}

impl NightlyLlvm {
    fn find() -> Result<Self> {
        let vv = cmd::output(Command::new("rustc").args(["+nightly", "-vV"]))?;
        let major = parse_llvm_major(&vv)
            .with_context(|| format!("no \"LLVM version: X.Y.Z\" line in `rustc +nightly -vV`:\n{vv}"))?;
        let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
        let lib = Path::new(sysroot.trim()).join("lib");
        let library = fs::read_dir(&lib)
            .with_context(|| format!("reading {}", lib.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
            .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
        Ok(Self { major, library })
    }
}

fn parse_llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv.lines().find_map(|l| l.strip_prefix("LLVM version: "))?.split('.').next()?.trim().parse().ok()
}

/// `~/.cache/fw/llvm-<major>/lib/libLLVM.so` -> the nightly's library, for
/// llvm-sys to link against, plus a link under the library's own name (its
/// soname), which the built bpf-linker loads through its RUNPATH to this
/// directory. So the prefix must outlive the build.
fn llvm_prefix(llvm: &NightlyLlvm) -> Result<PathBuf> {
    let prefix = home_dir()?.join(".cache/fw").join(format!("llvm-{}", llvm.major));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = llvm.library.file_name().context("libLLVM path has a file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() != Some(llvm.library.as_path()) {
            // Stale (an older nightly) or absent: point it at today's library.
            let _ = fs::remove_file(&link);
            symlink(&llvm.library, &link)
                .with_context(|| format!("linking {} to {}", link.display(), llvm.library.display()))?;
        }
    }
    Ok(prefix)
}

pub fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    }))
}

/// Mounts bpffs (as root) when it is not mounted yet.
pub fn mount_bpffs() -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("bpffs is not mounted at {BPFFS} and mounting it needs root");
    }
    println!("mounting bpffs at {BPFFS} (pins keep fw attached)");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpffs", BPFFS]))
}

/// Adds the musl target (the static binary of the image) to the toolchain
/// that builds fw, and musl's C compiler wrapper: fw's allocator, mimalloc,
/// is C (libmimalloc-sys builds it with `musl-gcc` for this target).
pub fn musl_target() -> Result<()> {
    apt_install(&[("musl-gcc", "musl-tools")], "the image's static fw (its allocator is C)")?;
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|t| t.trim() == crate::image::TARGET) {
        return Ok(());
    }
    println!("adding the {} target (the static fw of the image)", crate::image::TARGET);
    cmd::run(Command::new("rustup").args(["target", "add", crate::image::TARGET]))
}

/// rustfmt checks the code's layout (rustfmt.toml) in the unprivileged suite.
pub fn rustfmt() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    if installed.lines().any(|c| c.starts_with("rustfmt")) {
        return Ok(());
    }
    println!("adding rustfmt to the toolchain (the suite checks the code's layout)");
    cmd::run(Command::new("rustup").args(["component", "add", "rustfmt"]))
}

/// podman builds and runs the image; runc runs it (Debian 12's crun
/// refuses a hybrid cgroup v1/v2 layout, which some hosts have).
pub fn container_engine() -> Result<()> {
    apt_install(&[("podman", "podman"), ("runc", "runc")], "the image")
}

/// The pinned validator of the Kubernetes manifests; it ships the
/// schemas of every Kubernetes version it knows, so it validates offline.
pub const KUBERNETES_VALIDATE: &str = "1.37.0";

/// `~/.cache/fw/kubernetes-validate-VERSION/bin/kubernetes-validate`.
pub fn kubernetes_validate_bin() -> Result<PathBuf> {
    Ok(home_dir()?
        .join(".cache/fw")
        .join(format!("kubernetes-validate-{KUBERNETES_VALIDATE}"))
        .join("bin/kubernetes-validate"))
}

/// Installs kubernetes-validate into its own virtualenv (no system Python
/// package is touched; PyPI is the registry the project uses for it).
fn kubernetes_validate() -> Result<()> {
    let bin = kubernetes_validate_bin()?;
    if bin.exists() {
        return Ok(());
    }
    let venv = bin.parent().and_then(Path::parent).context("the venv directory")?.to_path_buf();
    // A python3 that can make a venv (with pip), else Debian's with its
    // python3-venv package.
    let can_venv =
        |python: &str| Command::new(python).args(["-c", "import venv, ensurepip"]).status().is_ok_and(|s| s.success());
    let python = if can_venv("python3") {
        "python3"
    } else {
        apt_install(&[("/usr/share/doc/python3-venv", "python3-venv")], "the manifests' validator")?;
        "/usr/bin/python3"
    };
    println!("installing kubernetes-validate {KUBERNETES_VALIDATE} into {}", venv.display());
    let _ = fs::remove_dir_all(&venv);
    cmd::run(Command::new(python).arg("-m").arg("venv").arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")),
    )
    .context("installing kubernetes-validate")
}

/// Installs the packages of the missing tools (tool, Debian package).
fn apt_install(tools: &[(&str, &str)], for_what: &str) -> Result<()> {
    let mut packages: Vec<&str> = tools.iter().filter(|(tool, _)| missing(tool)).map(|&(_, p)| p).collect();
    packages.sort_unstable();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "{for_what} needs {} (apt-get install {}), and installing needs root",
            packages.join(", "),
            packages.join(" ")
        );
    }
    println!("installing {}: {}", for_what, packages.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages),
    )
}

/// Commands the privileged tests run, and the Debian package of each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("mount", "mount"),
    ("systemd-analyze", "systemd"),
    // By its own path: the events tests need the real interpreter (a pyenv
    // shim would change the command name the kernel reports).
    ("/usr/bin/python3", "python3-minimal"),
    // The DNS server of the names tests (issue 14). The -base package: the
    // binary without a system service that would listen on port 53.
    ("dnsmasq", "dnsmasq-base"),
    // The DHCP client of the preflight test (a real lease from dnsmasq's
    // DHCP server; run with no script, so it configures nothing).
    ("dhclient", "isc-dhcp-client"),
    // The export tests load `fw export nft` and `fw export iptables` into a
    // namespace and judge packets with them (a fresh Debian has neither).
    ("nft", "nftables"),
    ("iptables-restore", "iptables"),
    ("ip6tables-restore", "iptables"),
];

fn test_tools() -> Result<()> {
    let mut packages: Vec<&str> =
        TEST_TOOLS.iter().filter(|(tool, _)| missing(tool)).map(|&(_, package)| package).collect();
    packages.sort_unstable();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "the privileged tests need {} (apt-get install {}), and installing needs root",
            packages.join(", "),
            packages.join(" ")
        );
    }
    println!("installing test tools: {}", packages.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages),
    )
}

/// A tool given by path must be there; a name must be on PATH or in sbin.
fn missing(tool: &str) -> bool {
    if tool.starts_with('/') {
        return !Path::new(tool).exists();
    }
    cmd::which(tool).is_none() && !in_sbin(tool)
}

/// A non-root PATH often lacks /sbin and /usr/sbin, where `ip` lives.
fn in_sbin(tool: &str) -> bool {
    ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(tool).exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_comes_from_the_llvm_version_line() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv), Some(22));
        assert_eq!(parse_llvm_major("rustc 1.0.0\n"), None);
    }
}
