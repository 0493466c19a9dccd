//! `memcommit bench`: the sweep of `memcommit::bench`, printed as a table and written to
//! `DIR/bench.json` and `DIR/bench.svg`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use memcommit::bench::{self, chart, system, BenchConfig, BenchReport};
use memcommit::layout::CellType;
use memcommit::tree::{Backend, MAX_OMITTED_LEVELS};

/// Arguments of `memcommit bench`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Sizes are raw memory bytes, every power of two from --min-bytes to \
--max-bytes that fits in available host memory. Each build is also timed with \
p3-merkle-tree's MerkleTree::new on the same leaves (the cells as field elements).\n\n\
Defaults: --min-bytes 2^20 --max-bytes 2^32 --cells u8,u16,field --omitted-levels 0,1,2,3,4,5 \
--touched 0.0001,0.001,0.01 --repeats 5.\n--trace replays a real trace in-process and through \
gRPC at each --omitted-levels value (cpu and cuda backends).\n--quick: 2^20 to 2^22 bytes, u8 and field cells, k \
0,1,3,5, touched 0.001 and 0.01, sparse 0.001 and 0.01, 3 repeats (explicit flags still \
win).\n--sparse: OpenVM's default layout with a fraction of its RAM pages present, against \
the same pages packed into one slot.\n\n\
Examples:\n  memcommit bench --quick --out /tmp/bench\n  memcommit bench --out bench \
--min-bytes 1048576 --max-bytes 268435456 --cells u8 --omitted-levels 0,3\n  memcommit bench --out bench \
--no-sweep --trace tests/data/sqlite3.trace.zst --omitted-levels 0,3 --repeats 5\n  \
memcommit bench --out bench --no-sweep --sparse 0.001,0.01,1 --sparse-omitted-levels 3\n  \
memcommit bench --out bench --no-sweep --witness 1,1024,65536 --witness-omitted-levels 0,3"
)]
pub struct Args {
    /// Directory for bench.json and bench.svg (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A small sweep that finishes in under 2 minutes on 2 cores.
    #[arg(long)]
    quick: bool,
    /// Smallest raw memory size, bytes (a power of two).
    #[arg(long, value_name = "BYTES")]
    min_bytes: Option<u64>,
    /// Largest raw memory size, bytes (a power of two); sizes that do not fit in available
    /// host memory are skipped.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// Cell types, comma-separated: u8, u16, field.
    #[arg(long, value_delimiter = ',', value_parser = parse_cell)]
    cells: Option<Vec<CellType>>,
    /// omitted_levels values, comma-separated (each 0..=20).
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    omitted_levels: Option<Vec<u32>>,
    /// Touched blocks per update batch as fractions of the blocks, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    touched: Option<Vec<f64>>,
    /// Backends, comma-separated. cuda is skipped when no device is usable, reference above
    /// 2^16 blocks.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cpu,cuda,reference"
    )]
    backends: Vec<Backend>,
    /// Timed repeats of each build and update batch (median and min are reported), and
    /// replays per mode of each --trace.
    #[arg(long, value_name = "N")]
    repeats: Option<usize>,
    /// A real trace (JSON Lines, .zst compressed or not) to replay in-process and through
    /// gRPC at every --omitted-levels value: per-step p50/p99 of both, their ratio, and
    /// permutations per second over the whole trace. Repeatable.
    #[arg(long = "trace", value_name = "TRACE")]
    traces: Vec<PathBuf>,
    /// Skip the size sweep (and bench.svg); only replay the --trace files and run the
    /// sparse case.
    #[arg(long)]
    no_sweep: bool,
    /// The sparse case: OpenVM's default layout with these fractions of its 2^29-byte RAM
    /// slot's 4 KiB pages present (random pages, random bytes), against the same pages
    /// packed into one compact slot, on cpu and cuda. Default 0.001,0.01,1 (--quick:
    /// 0.001,0.01; --no-sweep: none); 0 skips it.
    #[arg(long, value_delimiter = ',', value_name = "F,...")]
    sparse: Option<Vec<f64>>,
    /// omitted_levels of the sparse case, comma-separated. Default 3.
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    sparse_omitted_levels: Option<Vec<u32>>,
    /// The witness case: batches of these many random blocks on one field slot of
    /// 2^--witness-log-leaves blocks, each applied with and without its witness (the
    /// Merkle-chip rows, UpdateBlocks.return_witness) in the same run; plus the encode and
    /// decode time of the witness of a batch of every block. Default 1,1024,65536 (--quick
    /// and --no-sweep: none); 0 skips it.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    witness: Option<Vec<u64>>,
    /// omitted_levels of the witness case, comma-separated. Default 0,3.
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    witness_omitted_levels: Option<Vec<u32>>,
    /// Blocks of the witness case's slot, as a power of two (1..=24).
    #[arg(long, value_name = "LOG2", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=24))]
    witness_log_leaves: u32,
}

fn parse_cell(s: &str) -> Result<CellType, String> {
    match s {
        "u8" => Ok(CellType::U8),
        "u16" => Ok(CellType::U16),
        "field" => Ok(CellType::Field),
        other => Err(format!("{other:?} is not one of u8, u16, field")),
    }
}

/// The sweep the flags ask for, sizes capped by available host memory.
fn config(args: &Args) -> anyhow::Result<BenchConfig> {
    let q = args.quick;
    let min = args.min_bytes.unwrap_or(1 << 20);
    let max = args.max_bytes.unwrap_or(if q { 1 << 22 } else { 1 << 32 });
    for (flag, v) in [("--min-bytes", min), ("--max-bytes", max)] {
        if !v.is_power_of_two() || v < 32 {
            bail!("{flag} {v} is not a power of two of at least 32 (one block of field cells)");
        }
    }
    if min > max {
        bail!("--min-bytes {min} is larger than --max-bytes {max}");
    }
    let cells = args.cells.clone().unwrap_or_else(|| {
        if q {
            vec![CellType::U8, CellType::Field]
        } else {
            vec![CellType::U8, CellType::U16, CellType::Field]
        }
    });
    let omitted_levels = args.omitted_levels.clone().unwrap_or_else(|| {
        if q {
            vec![0, 1, 3, 5]
        } else {
            (0..=5).collect()
        }
    });
    if let Some(k) = omitted_levels.iter().find(|&&k| k > MAX_OMITTED_LEVELS) {
        bail!("--omitted-levels {k} exceeds the maximum {MAX_OMITTED_LEVELS}");
    }
    let touched = args.touched.clone().unwrap_or_else(|| {
        if q {
            vec![0.001, 0.01]
        } else {
            vec![0.0001, 0.001, 0.01]
        }
    });
    if let Some(f) = touched.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        bail!("--touched {f} is not a fraction in (0, 1]");
    }
    let mut backends = Vec::new();
    for b in &args.backends {
        match b.resolve() {
            Ok(b) if !backends.contains(&b) => backends.push(b),
            Ok(_) => {}
            Err(e) => tracing::info!("skipping backend {}: {e}", b.name()),
        }
    }
    // Leave 10% of available memory to everything else.
    let budget = system::host_available_bytes().map(|b| b / 10 * 9);
    let mut sizes = Vec::new();
    let mut size = min;
    while size <= max {
        let need = cells
            .iter()
            .map(|&c| bench::host_bytes_needed(size, c))
            .max()
            .unwrap_or(0);
        if budget.is_some_and(|b| need > b) {
            tracing::info!(
                "stopping at {} bytes: {size} bytes needs about {need} bytes of host memory",
                size / 2
            );
            break;
        }
        sizes.push(size);
        size = match size.checked_mul(2) {
            Some(s) => s,
            None => break,
        };
    }
    if sizes.is_empty() {
        bail!("--min-bytes {min} does not fit in available host memory");
    }
    if args.no_sweep {
        sizes.clear();
    }
    for t in &args.traces {
        if !t.is_file() {
            bail!("--trace {}: no such file", t.display());
        }
    }
    // --no-sweep runs only what is asked for by name.
    let mut sparse = args.sparse.clone().unwrap_or_else(|| {
        if args.no_sweep {
            vec![]
        } else if q {
            vec![0.001, 0.01]
        } else {
            vec![0.001, 0.01, 1.0]
        }
    });
    sparse.retain(|&f| f != 0.0);
    if let Some(f) = sparse.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        bail!("--sparse {f} is not a fraction in (0, 1] (or 0 to skip the sparse case)");
    }
    let sparse_omitted_levels = args.sparse_omitted_levels.clone().unwrap_or(vec![3]);
    if let Some(k) = sparse_omitted_levels
        .iter()
        .find(|&&k| k > MAX_OMITTED_LEVELS)
    {
        bail!("--sparse-omitted-levels {k} exceeds the maximum {MAX_OMITTED_LEVELS}");
    }
    let mut witness = args.witness.clone().unwrap_or_else(|| {
        if args.no_sweep || q {
            vec![]
        } else {
            vec![1, 1024, 65536]
        }
    });
    witness.retain(|&n| n != 0);
    let witness_omitted_levels = args.witness_omitted_levels.clone().unwrap_or(vec![0, 3]);
    if let Some(k) = witness_omitted_levels
        .iter()
        .find(|&&k| k > MAX_OMITTED_LEVELS)
    {
        bail!("--witness-omitted-levels {k} exceeds the maximum {MAX_OMITTED_LEVELS}");
    }
    Ok(BenchConfig {
        witness,
        witness_omitted_levels,
        witness_log_leaves: args.witness_log_leaves,
        sizes,
        cells,
        omitted_levels,
        touched,
        backends,
        repeats: args.repeats.unwrap_or(if q { 3 } else { 5 }).max(1),
        traces: args.traces.clone(),
        sparse,
        sparse_omitted_levels,
    })
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = config(&args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let bar = progress_bar(config.steps());
    let report = bench::run(&config, |what| {
        bar.set_message(what.to_string());
        bar.inc(1);
    });
    bar.finish_and_clear();
    let report = report?;
    print_table(&report);
    let json = args.out.join("bench.json");
    let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
    std::fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    if report.rows.is_empty() {
        println!("wrote {} in {:.1} s", json.display(), report.wall_s);
    } else {
        let svg = args.out.join("bench.svg");
        chart::write_svg(&report, &svg)?;
        println!(
            "wrote {} and {} in {:.1} s",
            json.display(),
            svg.display(),
            report.wall_s
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar on stderr when it is a terminal; hidden otherwise (CI logs, pipes).
pub(super) fn progress_bar(steps: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / f64::from(1u32 << 20))
}

/// The table on stdout: baselines, then one row per build and touched fraction, then the
/// replays.
fn print_table(r: &BenchReport) {
    println!(
        "memcommit bench: {} threads, device {}, peak RSS {}",
        r.threads,
        r.device.as_deref().unwrap_or("none"),
        if r.rss_reset {
            "per build (VmHWM reset before each)"
        } else {
            "of the whole process (VmHWM)"
        }
    );
    if !r.rows.is_empty() || !r.baselines.is_empty() {
        print_sweep(r);
    }
    if !r.traces.is_empty() {
        print_traces(r);
    }
    if !r.sparse.is_empty() {
        print_sparse(r);
    }
    if !r.witness.is_empty() {
        print_witness(r);
    }
}

/// The witness case: each batch with its witness against the same batch without, and the
/// wire form's cost against the update it describes.
fn print_witness(r: &BenchReport) {
    println!(
        "\nwitness: random batches on one field slot, each applied with and without its \
         witness, alternating, {} repeats; (x) = with / without; perms per touched block: \
         update, with witness, bound (update + its count below level k)",
        r.config.repeats
    );
    println!(
        "{:<7} {:>2} {:>9} {:>7} {:>10} {:>17} {:>9} {:>27} {:>9}",
        "backend",
        "k",
        "leaves",
        "batch",
        "update ms",
        "+witness ms (x)",
        "rows",
        "perms/block",
        "B/row"
    );
    for w in &r.witness {
        println!(
            "{:<7} {:>2} {:>9} {:>7} {:>10.3} {:>17} {:>9} {:>27} {:>9.1}",
            w.backend.name(),
            w.k,
            w.leaves,
            w.batch,
            w.update.median_ms,
            format!("{:.3} ({:.2}x)", w.with_witness.median_ms, w.ratio),
            w.rows,
            format!(
                "{:.2} / {:.2} / {:.2}",
                w.update_perms_per_block, w.with_witness_perms_per_block, w.bound_perms_per_block
            ),
            w.wire_bytes_per_row
        );
    }
    for c in &r.witness_codec {
        println!(
            "wire form, {} k={}: {} rows, {} MiB; encode {:.1} ms ({:.3}x the update's {:.1} \
             ms), decode {:.1} ms ({:.3}x)",
            c.backend.name(),
            c.k,
            c.rows,
            mib(c.wire_bytes),
            c.encode.median_ms,
            c.encode_vs_update,
            c.update.median_ms,
            c.decode.median_ms,
            c.decode_vs_update
        );
    }
}

/// The sparse case: each figure of OpenVM's layout, and its ratio to the packed slot.
fn print_sparse(r: &BenchReport) {
    println!(
        "
sparse: OpenVM's default layout (2^29-byte RAM slot) with a fraction of its 4 KiB \
         pages present vs the same pages packed into one slot; (x) = sparse / packed; {} \
         builds, {} update batches of 1% of the present blocks (at most 64 Ki)",
        r.config.repeats,
        bench::sparse::UPDATE_BATCHES
    );
    println!(
        "{:<7} {:>2} {:>7} {:>7} {:>17} {:>17} {:>17} {:>17} {:>17} {:>9} {:>5}",
        "backend",
        "k",
        "pages",
        "batch",
        "build ms (x)",
        "upd p50 ms (x)",
        "upd p99 ms (x)",
        "host MiB (x)",
        "peak RSS MiB (x)",
        "dev MiB",
        "roots"
    );
    for s in &r.sparse {
        let [build, p50, p99, host, rss] = s.ratios();
        let cell = |v: f64, x: f64| format!("{v:.3} ({x:.2}x)");
        println!(
            "{:<7} {:>2} {:>7} {:>7} {:>17} {:>17} {:>17} {:>17} {:>17} {:>9} {:>5}",
            s.backend.name(),
            s.k,
            s.pages,
            s.batch_blocks,
            cell(s.sparse.build.median_ms, build),
            cell(s.sparse.update_p50_ms, p50),
            cell(s.sparse.update_p99_ms, p99),
            format!("{} ({host:.2}x)", mib(s.sparse.host_bytes)),
            format!("{} ({rss:.2}x)", mib(s.sparse.peak_rss_bytes)),
            mib(s.sparse.device_bytes),
            if s.roots_checked { "ok" } else { "-" }
        );
    }
    println!(
        "packed baseline per row: build ms, update p50/p99 ms, host MiB, peak RSS MiB = {}",
        r.sparse
            .iter()
            .map(|s| format!(
                "[{:.3}, {:.3}/{:.3}, {}, {}]",
                s.packed.build.median_ms,
                s.packed.update_p50_ms,
                s.packed.update_p99_ms,
                mib(s.packed.host_bytes),
                mib(s.packed.peak_rss_bytes)
            ))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// The replay benchmark: per-step latency in-process and through gRPC, their ratio, and
/// permutations per second over the whole trace.
fn print_traces(r: &BenchReport) {
    println!(
        "\nreplay: update steps in-process (the tree called directly) vs through gRPC on \
         127.0.0.1, {} replays per mode; build = step 0",
        r.config.repeats
    );
    println!(
        "{:<9} {:>2} {:>5} {:>8} {:>10} {:>10} {:>9} {:>9} {:>6} {:>9} {:>9} {:>6} {:>9} {:>9}",
        "backend",
        "k",
        "steps",
        "blocks",
        "build ms",
        "build rpc",
        "p50 ms",
        "p50 rpc",
        "ratio",
        "p99 ms",
        "p99 rpc",
        "ratio",
        "Mperm/s",
        "Mp/s rpc"
    );
    for t in &r.traces {
        println!(
            "{:<9} {:>2} {:>5} {:>8} {:>10.2} {:>10.2} {:>9.3} {:>9.3} {:>5.2}x {:>9.3} {:>9.3} {:>5.2}x {:>9.2} {:>9.2}",
            t.backend.name(),
            t.k,
            t.steps,
            t.blocks,
            t.in_process.build.median_ms,
            t.grpc.build.median_ms,
            t.in_process.step_p50_ms,
            t.grpc.step_p50_ms,
            t.grpc_vs_in_process_p50,
            t.in_process.step_p99_ms,
            t.grpc.step_p99_ms,
            t.grpc_vs_in_process_p99,
            t.in_process.perms_per_s / 1e6,
            t.grpc.perms_per_s / 1e6,
        );
    }
    let mut names: Vec<&str> = r.traces.iter().map(|t| t.trace.as_str()).collect();
    names.dedup();
    println!(
        "traces: {}; every expect_root checked in both modes. Mperm/s: permutations of the \
         whole replay (build + updates) per second of build + update time.",
        names.join(", ")
    );
}

/// The sweep: p3 baselines, then one row per build and touched fraction.
fn print_sweep(r: &BenchReport) {
    println!(
        "\np3-merkle-tree 0.8.0 MerkleTree::new on the same leaves (cells as field elements):"
    );
    println!(
        "{:<6} {:>10} {:>9} {:>10} {:>10} {:>9} {:>5}",
        "cell", "bytes", "blocks", "med ms", "min ms", "Mperm/s", "root"
    );
    for b in &r.baselines {
        println!(
            "{:<6} {:>10} {:>9} {:>10.2} {:>10.2} {:>9.2} {:>5}",
            b.cell.name(),
            b.bytes,
            b.blocks,
            b.build.median_ms,
            b.build.min_ms,
            b.perms_per_s / 1e6,
            if b.root_matches { "same" } else { "DIFF" }
        );
    }
    println!(
        "\n{:<9} {:<5} {:>10} {:>8} {:>2} {:>7} {:>9} {:>9} {:>6} {:>8} {:>8} {:>7} {:>7} {:>9} {:>8} {:>8} {:>8}",
        "backend", "cell", "bytes", "blocks", "k", "touched", "build med", "build min", "vs p3",
        "upd med", "upd min", "Mperm/s", "upd Mp/s", "nodes MiB", "raw MiB", "RSS MiB", "dev MiB"
    );
    for x in &r.rows {
        println!(
            "{:<9} {:<5} {:>10} {:>8} {:>2} {:>7} {:>9.2} {:>9.2} {:>5.2}x {:>8.3} {:>8.3} {:>7.2} {:>7.2} {:>9} {:>8} {:>8} {:>8}",
            x.backend.name(),
            x.cell.name(),
            x.bytes,
            x.blocks,
            x.k,
            x.touched_blocks,
            x.build.median_ms,
            x.build.min_ms,
            x.build_vs_p3,
            x.update.median_ms,
            x.update.min_ms,
            x.build_perms_per_s / 1e6,
            x.update_perms_per_s / 1e6,
            mib(x.node_bytes),
            mib(x.raw_bytes),
            mib(x.peak_rss_bytes),
            mib(x.peak_device_bytes),
        );
    }
    println!(
        "\nms: median and min of {} repeats. Permutations: build 2^(h+1) - 1 for 2^h blocks; \
         update: distinct nodes recomputed (a level-k node costs 2^(k+1) - 1).",
        r.config.repeats
    );
}
