//! The `memcommit` command line: `serve`, `root`, `replay`, `record` (docs/design.md "CLI
//! contracts").

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    cli::main(cli::Cli::parse())
}
