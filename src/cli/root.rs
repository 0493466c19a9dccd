//! `memcommit root`. Stub until its work lands.

use std::process::ExitCode;

/// Arguments of `memcommit root`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("memcommit root is not implemented yet")
}
