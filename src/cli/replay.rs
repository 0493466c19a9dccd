//! `memcommit replay`. Stub until its work lands.

use std::process::ExitCode;

/// Arguments of `memcommit replay`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("memcommit replay is not implemented yet")
}
