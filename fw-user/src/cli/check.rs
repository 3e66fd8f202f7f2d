use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Args;

use crate::{policy::compile::Limits, policy::report, source};

/// Validate a policy and print its compiled tables; never touches the kernel
/// (like `nft -c -f`). Exit 0: compiles without warnings; 1: compiles with
/// warnings; 2: does not compile.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Policy file, or the name of a shipped policy.
    pub file: String,
    /// Only this phase (default: every phase).
    #[arg(long)]
    pub phase: Option<String>,
    /// KEY=VALUE file for ${VARS} (default: /opt/openvidu/.env when it exists).
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also load the kernel programs and print what the verifier made of
    /// each: instructions, instructions processed, load time (needs root).
    #[arg(long)]
    pub verbose: bool,
}

pub fn check(args: CheckArgs) -> Result<ExitCode> {
    let (_, loaded, _) = source::load_policy(&args.file, args.env_file.as_deref())?;
    let report = report::check(&loaded, args.phase.as_deref(), &Limits::default(), source::host::ephemeral_range())?;
    if args.json {
        println!("{}", report::render_json(&report));
    } else {
        print!("{}", report::render_text(&report));
        if args.verbose {
            print_instruction_counts();
        }
    }
    Ok(if report.warnings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn print_instruction_counts() {
    if let Err(e) = super::require_root("fw check --verbose") {
        println!("# kernel programs: {e}");
        return;
    }
    match crate::kernel::loader::verified_programs() {
        Ok(programs) => {
            for p in programs {
                println!(
                    "# kernel program {}: {} instructions after verification; the verifier processed {} \
                     (limit 1000000) in {:.0} ms",
                    p.name,
                    p.instructions,
                    p.processed,
                    p.load_time.as_secs_f64() * 1e3
                );
            }
        }
        Err(e) => println!("# kernel programs: {e:#}"),
    }
}
