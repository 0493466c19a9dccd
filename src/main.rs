//! The `memcommit` command line: `serve`, `root`, `replay`, `record` (docs/design.md "CLI
//! contracts").

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    memcommit::malloc::keep_freed_memory();
    cli::main(cli::Cli::parse())
}
