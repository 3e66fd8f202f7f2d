//! `fw`: an eBPF egress enforcer for media servers. See README.md.

use std::process::ExitCode;

use clap::Parser;
use fw_user::cli::{self, Cli};

fn main() -> ExitCode {
    // `fw drops | head`: end quietly on a closed pipe, as other CLI tools do,
    // instead of panicking in println!.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fw: {e:#}");
            ExitCode::from(2)
        }
    }
}
