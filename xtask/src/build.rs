//! `cargo xtask build [--release]`.

use anyhow::Result;
use clap::Args;

use crate::{bootstrap, cmd};

#[derive(Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn build(opts: &Options) -> Result<()> {
    bootstrap::bootstrap(bootstrap::Purpose::Build)?;
    cargo_build(opts.release)
}

/// `cargo build -p fw-user`; fw-user's build script builds the eBPF object.
pub fn cargo_build(release: bool) -> Result<()> {
    let mut cargo = cmd::cargo();
    cargo.current_dir(cmd::workspace_root()).args(["build", "-p", "fw-user"]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
}
