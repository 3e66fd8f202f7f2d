//! `fw`: an eBPF egress enforcer for media servers. See README.md.

use std::process::ExitCode;

use clap::Parser;
use fw_user::cli::{self, Cli};

/// `fw drops | head`: the reader is done, so are we: exit 0 at once, as
/// ripgrep does, instead of a panic in println! or death by SIGPIPE (141).
extern "C" fn closed_pipe(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, cli::Command::Run(_)) {
        // The daemon keeps Rust's default (ignored): a closed stdout must
        // not end the process that rolls back unconfirmed switches.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, closed_pipe as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp(None).init();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fw: {e:#}");
            ExitCode::from(2)
        }
    }
}
