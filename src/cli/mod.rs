//! clap definitions and dispatch. Each command lives in its own module with an `Args`
//! struct and a `run` function.

mod bench;
mod connect;
mod load;
mod record;
mod replay;
mod root;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Poseidon2/BabyBear Merkle commitments to zkVM memory, on the CPU or a GPU, over gRPC.
#[derive(Parser, Debug)]
#[command(name = "memcommit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gRPC server.
    Serve(serve::Args),
    /// Print the root of a memory image as one JSON line: {"root": [...]}.
    Root(root::Args),
    /// Drive a memcommit server through a trace file, checking every expect_root.
    Replay(replay::Args),
    /// K concurrent clients × M update batches with openings, plus create/drop churn,
    /// every root and opening checked against the reference tree.
    LoadTest(load::Args),
    /// Sweep sizes, cell types, omitted_levels, batch sizes and backends: time, bytes and
    /// the p3-merkle-tree baseline, as a table, DIR/bench.json and DIR/bench.svg.
    Bench(bench::Args),
    /// Convert `valgrind --tool=lackey --trace-mem=yes` output into a trace file.
    Record(record::Args),
}

/// Runs the parsed command. Logs go to stderr (`RUST_LOG` sets the filter, default
/// `info`); stdout carries only the command's output.
pub fn main(cli: Cli) -> ExitCode {
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr);
    match &cli.command {
        // The current span's fields (method, request_id) on every line, not the span list.
        Command::Serve(a) if a.log_format == serve::LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        _ => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Root(a) => root::run(a),
        Command::Replay(a) => replay::run(a),
        Command::LoadTest(a) => load::run(a),
        Command::Record(a) => record::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
