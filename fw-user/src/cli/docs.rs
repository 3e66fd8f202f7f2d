//! What operators expect of a tool like `nft`: shell completions and a
//! man page, generated from the clap definitions so they never drift from
//! the real flags. `cargo xtask install` installs both.

use std::{io::Write, process::ExitCode};

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// Print the completion script for SHELL (bash, zsh, fish, elvish,
/// powershell) on standard output.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    pub shell: Shell,
}

pub fn completions(args: CompletionsArgs) -> Result<ExitCode> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "fw", &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The man page fw(8), roff, on standard output.
pub fn manpage() -> Result<ExitCode> {
    std::io::stdout().write_all(&render_manpage()?)?;
    Ok(ExitCode::SUCCESS)
}

fn render_manpage() -> Result<Vec<u8>> {
    let command = Cli::command();
    let mut out = Vec::new();
    // Section 8: system administration commands (like nft(8)).
    let man = clap_mangen::Man::new(command.clone()).section("8");
    man.render(&mut out)?;
    // One section per subcommand, so `man fw` documents every flag.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut options = Vec::new();
        clap_mangen::Man::new(sub.clone()).section("8").render_options_section(&mut options)?;
        // The options section is titled OPTIONS: retitle it FW-VERB.
        let options = String::from_utf8_lossy(&options).replacen(".SH OPTIONS", "", 1);
        out.extend_from_slice(format!(".SH \"FW-{}\"\n", sub.get_name().to_uppercase()).as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            out.extend_from_slice(format!("{about}\n").as_bytes());
        }
        out.extend_from_slice(options.as_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_page_documents_every_subcommand_and_flag() {
        let page = String::from_utf8(render_manpage().unwrap()).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH fw 8"), "{}", &page[..200.min(page.len())]);
        for sub in ["FW-RUN", "FW-SWITCH", "FW-STOP", "FW-EXPLAIN"] {
            assert!(page.contains(sub), "no section {sub}");
        }
        for flag in ["\\-\\-confirm", "\\-\\-forget", "\\-\\-force", "\\-\\-iface"] {
            assert!(page.contains(flag), "no {flag} in the man page");
        }
    }

    #[test]
    fn completions_know_the_subcommands() {
        let mut out = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "fw", &mut out);
        let script = String::from_utf8(out).unwrap();
        for word in ["switch", "confirm", "explain", "--forget"] {
            assert!(script.contains(word), "bash completion lacks {word}");
        }
    }
}
