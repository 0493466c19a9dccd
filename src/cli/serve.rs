//! `memcommit serve`. Stub until its work lands.

use std::process::ExitCode;

/// Arguments of `memcommit serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("memcommit serve is not implemented yet")
}
