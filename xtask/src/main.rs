//! `cargo xtask`: what cargo alone can't do for `fw`.
//!
//! `cargo build` already builds the eBPF object (fw-user's build script runs
//! aya-build); xtask only prepares the machine for it (nightly + rust-src,
//! bpf-linker against the nightly's LLVM, bpffs, test tools), runs `fw` as
//! root on an interface, and runs both test suites, the privileged one in
//! network namespaces.

mod bench;
mod bootstrap;
mod build;
mod cmd;
mod image;
mod install;
mod run;
mod test;

use std::process::exit;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test fw")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bootstrap the toolchain, then build fw (and its eBPF object).
    Build(build::Options),
    /// Build fw in release mode and run it as root (`fw run ARGS`).
    Run(run::Options),
    /// Run the unprivileged suite, then the privileged (root, netns) suite.
    Test(test::Options),
    /// Measure fw against the floor, nftables and iptables; write BENCHMARKS.md.
    Bench(bench::Options),
    /// Build the container image localhost/fw:VERSION (static fw + the
    /// shipped policies, FROM scratch) with podman.
    Image(image::Options),
    /// Install fw in /usr/local/bin, the policies in /etc/fw/ and the
    /// systemd unit fw@IFACE.service.
    Install(install::Options),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(opts) => build::build(&opts),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::test(&opts),
        Command::Bench(opts) => bench::bench(&opts),
        Command::Install(opts) => install::install(&opts),
        Command::Image(opts) => image::image(&opts),
    };
    if let Err(e) = result {
        eprintln!("{e:#}");
        exit(1);
    }
}
