//! `memcommit record`: converts a `valgrind --tool=lackey --trace-mem=yes` log into a trace
//! file ([`memcommit::trace::lackey`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use memcommit::trace::lackey::{self, LackeyOptions, LayoutMode};

/// Arguments of `memcommit record`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Record a log first, e.g.:
  valgrind --tool=lackey --trace-mem=yes --log-file=gzip.lackey gzip -9 -c FILE > /dev/null
then convert it:
  memcommit record gzip.lackey -o gzip.trace.zst --accesses-per-batch 5000

The 4 KiB pages touched by data accesses (L, S, M lines; I lines are ignored) go into one u8
address space, as --layout says:
  packed  (default) side by side in first-touch order, in the only slot (0) of a layout of
          num_cells = next power of two >= pages * 4096.
  openvm  OpenVM's default layout (openvm-circuit 2.0.2 MemoryConfig::default(): 8 slots,
          address_space_height 3, address_height 26); each page at its real address mod 2^29
          in slot 1 (2^29 u8 cells), e.g. byte 0x1ffefffd20 at offset 0x1efffd20. Fails, naming
          both pages, if two touched pages collide mod 2^29. Recording roots then builds the
          reference tree over the 512 MiB slot. For example:
            memcommit record sqlite3.lackey -o sqlite3-openvm.trace.zst --layout openvm

The initial image is a deterministic pattern (one write line per page); loads keep a block's
values, stores and modifies write deterministic pseudo-random bytes. Every data access marks
each 8-byte block it covers as touched in the current batch.

Output: one JSON line on stdout summarising the conversion, e.g.
  {\"pages\":120,\"num_cells\":524288,\"instructions\":2242874,\"loads\":487953,\"stores\":290276,
   \"modifies\":10232,\"other_lines\":0,\"batches\":158,\"touched_blocks\":123456,
   \"final_root\":[...],\"output_bytes\":2345678,\"layout\":\"packed\",\"slot\":0}
num_cells is that of the slot holding the pages.
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

    /// Where the touched pages go: `packed` (first-touch order, smallest tree) or `openvm`
    /// (real addresses mod 2^29 in slot 1 of OpenVM's default layout).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = LayoutMode::Packed)]
    layout: LayoutMode,

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
        layout: args.layout,
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
