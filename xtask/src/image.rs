//! `cargo xtask image [--save FILE]`: the container image of fw.
//!
//! A static `fw` (target `x86_64-unknown-linux-musl`, release) and the
//! shipped policies, `FROM scratch` (see `Containerfile`), built by podman
//! from a context of exactly those files, tagged `localhost/fw:VERSION`
//! (the version `fw --version` prints) and `localhost/fw:latest`. Nothing is
//! pulled: the build works offline. `--save FILE` writes a docker-archive
//! that `docker load`, `podman load` and `ctr images import` take, for
//! hosts that do not build.
//!
//! Why musl: the glibc target links glibc dynamically (and glibc's static
//! mode still loads NSS modules at run time); musl links everything into
//! one static-pie binary, which aya and tokio support as they are.
//! Measured here: the release build has no program interpreter (checked
//! below on every build), about 9 MB.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::{bootstrap, cmd};

/// The target of the static binary.
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The image's name in local storage.
pub const REPOSITORY: &str = "localhost/fw";

#[derive(Args)]
pub struct Options {
    /// Also write the image as a docker-archive to FILE.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
}

pub fn image(opts: &Options) -> Result<()> {
    let tag = build()?;
    if let Some(file) = &opts.save {
        cmd::run(Command::new("podman").args(["save", "--format", "docker-archive", "-o"]).arg(file).arg(&tag))?;
        println!("saved {tag} to {}", file.display());
    }
    Ok(())
}

/// Builds the binary and the image; returns the version tag
/// (`localhost/fw:VERSION`).
pub fn build() -> Result<String> {
    bootstrap::bootstrap(bootstrap::Purpose::Build)?;
    bootstrap::musl_target()?;
    bootstrap::container_engine()?;
    let root = cmd::workspace_root();
    cmd::run(cmd::cargo().current_dir(root).args(["build", "-p", "fw-user", "--release", "--target", TARGET]))?;
    let binary = root.join("target").join(TARGET).join("release/fw");
    ensure_static(&binary)?;
    let version = cmd::output(Command::new(&binary).arg("--version"))?;
    let version = version.trim().strip_prefix("fw ").context("`fw --version` prints `fw VERSION`")?.to_string();

    let context = root.join("target/image/context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(context.join("policies")).with_context(|| format!("creating {}", context.display()))?;
    fs::copy(&binary, context.join("fw")).context("copying fw into the image context")?;
    for entry in fs::read_dir(root.join("policies")).context("reading policies/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            fs::copy(&path, context.join("policies").join(path.file_name().expect("a file name")))?;
        }
    }
    let tag = format!("{REPOSITORY}:{version}");
    cmd::run(
        Command::new("podman")
            .args(["build", "--format", "docker", "--pull=never", "-f"])
            .arg(root.join("Containerfile"))
            .args(["--build-arg", &format!("VERSION={version}"), "-t", &tag, "-t", &format!("{REPOSITORY}:latest")])
            .arg(&context),
    )?;
    println!("built image {tag}");
    Ok(tag)
}

/// A binary `FROM scratch` must not need a program interpreter (ld.so):
/// an ELF with a PT_INTERP program header would not start in the image.
fn ensure_static(binary: &Path) -> Result<()> {
    let elf = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    if has_interpreter(&elf).with_context(|| format!("{} is not a 64-bit little-endian ELF", binary.display()))? {
        bail!("{} is dynamically linked (it has a program interpreter): it cannot run FROM scratch", binary.display());
    }
    Ok(())
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize)? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_check_reads_program_headers() {
        // xtask itself is a dynamically linked glibc binary here.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_interpreter(&me), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
    }
}
