//! The command line: one module per verb; the doc comments are the help.
//!
//! Exit codes: 0 success; 1 "no" (`fw status`: not enforcing; `fw check`:
//! problems found); 2 the command could not do its job.

mod check;
mod docs;
mod drops;
mod duration;
mod explain;
mod export;
mod learn;
mod names;
mod preflight;
mod run;
mod source;
mod status;
mod stop;
mod switch;
mod target;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use target::require_root;

#[derive(Parser, Debug)]
#[command(name = "fw", version, about = "eBPF egress enforcer for media servers", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Run(run::RunArgs),
    Check(check::CheckArgs),
    Explain(explain::ExplainArgs),
    Preflight(preflight::PreflightArgs),
    Export(export::ExportArgs),
    Switch(switch::SwitchArgs),
    Confirm(switch::ConfirmArgs),
    Status(status::StatusArgs),
    Drops(drops::DropsArgs),
    Names(names::NamesArgs),
    Learn(learn::LearnArgs),
    Stop(stop::StopArgs),
    Completions(docs::CompletionsArgs),
    #[command(hide = true)]
    Manpage,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
        Command::Explain(args) => explain::explain(args),
        Command::Preflight(args) => preflight::preflight(args),
        Command::Export(args) => export::export(args),
        Command::Switch(args) => switch::switch(args),
        Command::Confirm(args) => switch::confirm(args),
        Command::Status(args) => status::status(args),
        Command::Drops(args) => drops::drops(args),
        Command::Names(args) => names::names(args),
        Command::Learn(args) => learn::learn(args),
        Command::Stop(args) => stop::stop(args),
        Command::Completions(args) => docs::completions(args),
        Command::Manpage => docs::manpage(),
    }
}
