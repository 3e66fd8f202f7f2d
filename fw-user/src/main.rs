//! `fw`: an eBPF egress enforcer for media servers. See README.md.

use std::process::ExitCode;

use clap::Parser;
use fw_user::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    match cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (`fw drops | head`) is not an error.
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("fw: {e:#}");
            ExitCode::from(2)
        }
    }
}
