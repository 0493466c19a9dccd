//! `memcommit record`. Stub until its work lands.

use std::process::ExitCode;

/// Arguments of `memcommit record`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("memcommit record is not implemented yet")
}
