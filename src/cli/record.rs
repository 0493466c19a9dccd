//! `memcommit record`: converts a `valgrind --tool=lackey --trace-mem=yes` log into a trace
//! file ([`memcommit::trace::lackey`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use memcommit::trace::lackey::{self, LackeyOptions};

/// Arguments of `memcommit record`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Record a log first, e.g.:
  valgrind --tool=lackey --trace-mem=yes --log-file=gzip.lackey gzip -9 -c FILE > /dev/null
then convert it:
  memcommit record gzip.lackey -o gzip.trace.zst --accesses-per-batch 5000

The 4 KiB pages touched by data accesses (L, S, M lines; I lines are ignored) are packed in
first-touch order into one u8 address space of num_cells = next power of two >= pages * 4096.
The initial image is a deterministic pattern (one write line per page); loads keep a block's
values, stores and modifies write deterministic pseudo-random bytes. Every data access marks
each 8-byte block it covers as touched in the current batch.

Output: one JSON line on stdout summarising the conversion, e.g.
  {\"pages\":120,\"num_cells\":524288,\"instructions\":2242874,\"loads\":487953,\"stores\":290276,
   \"modifies\":10232,\"other_lines\":0,\"batches\":158,\"touched_blocks\":123456,
   \"final_root\":[...],\"output_bytes\":2345678}
Logs (and the progress bar, on a terminal) go to stderr.")]
pub struct Args {
    /// The lackey log: what `valgrind --tool=lackey --trace-mem=yes --log-file=LOG PROGRAM`
    /// wrote to LOG. Read twice (pages first, then accesses), never held in memory.
    #[arg(value_name = "LACKEY_LOG")]
    log: PathBuf,

    /// The trace file to write; zstd-compressed when the name ends in `.zst`.
    #[arg(short, long, value_name = "OUT.trace[.zst]")]
    output: PathBuf,

    /// Data accesses (L, S and M lines) per update batch; the last batch may be shorter.
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    accesses_per_batch: u64,

    /// Leave out expect_root. By default the build and every update carry the root computed
    /// by the reference backend, which is the slow part on long logs.
    #[arg(long)]
    no_expect_root: bool,

    /// Stop after M update batches (M * N data accesses). Default: the whole log.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..))]
    max_batches: Option<u64>,

    /// zstd compression level for a `.zst` output (1 fastest .. 22 smallest).
    #[arg(long, value_name = "LEVEL", default_value_t = 19,
          value_parser = clap::value_parser!(i32).range(1..=22))]
    zstd_level: i32,
}

/// Runs the conversion and prints the summary as one JSON line on stdout.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = LackeyOptions {
        accesses_per_batch: args.accesses_per_batch,
        expect_root: !args.no_expect_root,
        max_batches: args.max_batches,
        zstd_level: args.zstd_level,
        progress: true,
    };
    let summary = lackey::convert(&args.log, &args.output, &options).with_context(|| {
        format!(
            "converting {} into {}",
            args.log.display(),
            args.output.display()
        )
    })?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(ExitCode::SUCCESS)
}
