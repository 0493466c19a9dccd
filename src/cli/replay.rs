//! `memcommit replay`: drives a memcommit server through a trace, checking every
//! `expect_root`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use memcommit::replay::{replay, Progress, ReplayOptions, ReplaySummary};
use memcommit::trace::TraceReader;
use memcommit::tree::{Backend, OmittedLevels};

use super::connect::ConnectArgs;

/// Arguments of `memcommit replay`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exits non-zero at the first step whose root differs from its \
expect_root.\n\nExamples:\n  memcommit replay tests/data/sqlite3.trace.zst\n  \
memcommit replay trace.jsonl --json --server http://10.0.0.5:50051 --backend cpu\n  \
memcommit replay trace.jsonl --json --witness > steps-with-witness.jsonl\n  \
memcommit replay trace.jsonl --server https://prover-7:50051 --tls-ca ca.pem \
--auth-token-file token"
)]
pub struct Args {
    /// Trace file (JSON Lines; zstd-compressed when the name ends in .zst).
    #[arg(value_name = "TRACE")]
    trace: PathBuf,
    /// Print one JSON line per root step: {"step", "root", "expect_root", "blocks", "ms"}.
    #[arg(long)]
    json: bool,
    /// With --json, add each update's witness to its line: "witness": [{"height", "index",
    /// "old": [[8], [8]], "new": [[8], [8]], "touched": [0|1, 0|1]}, ...], one object per
    /// node with a touched block below it, by height then heap index (the rows a prover's
    /// Merkle chip needs; see the README, "Proving memory transitions"). Each witness is
    /// checked against its step's roots before it is printed.
    #[arg(long, requires = "json")]
    witness: bool,
    /// Backend the server builds the tree on: auto uses CUDA if a device is usable, else
    /// CPU.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Overrides the trace's omitted_levels (default 3): 0..=20, or `auto`: at the build the
    /// server picks the smallest k whose tree nodes plus raw memory, for the pages the
    /// trace's writes made present, fit --memory-budget. Never changes a root, only memory
    /// and time.
    #[arg(long, value_name = "K|auto")]
    omitted_levels: Option<OmittedLevels>,
    /// Memory budget of --omitted-levels auto, in bytes. Default: the server's own (its
    /// --memory-budget, else 90% of its free device memory on cuda, of its available host
    /// memory otherwise).
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let trace = TraceReader::open(&args.trace)?;
    // The flag wins over the trace header; either may say auto, which the server resolves
    // at the build from the pages the trace's writes made present.
    let requested = args.omitted_levels.or(trace.header().omitted_levels);
    let auto = requested == Some(OmittedLevels::Auto);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let summary = runtime.block_on(drive(&args, trace, requested))?;
    let mut ms = summary.step_ms.clone();
    ms.sort_by(f64::total_cmp);
    let line = format!(
        "replayed {} root steps of {} (tree {}, omitted_levels {}{}): {} expect_root checked, \
         all matched; {} bytes written in {} pages, {} touched blocks; step p50 {:.2} ms, p99 \
         {:.2} ms",
        summary.steps,
        args.trace.display(),
        summary.tree_id,
        summary.omitted_levels,
        if auto { " (auto)" } else { "" },
        summary.checked,
        summary.bytes_written,
        summary.present_pages,
        summary.blocks,
        memcommit::bench::percentile(&ms, 0.50),
        memcommit::bench::percentile(&ms, 0.99),
    );
    let line = match summary.retried {
        0 => line,
        n => format!("{line}; {n} batches resent after a lost reply (already applied)"),
    };
    // With --json, stdout carries only the per-step lines.
    if args.json {
        tracing::info!("{line}");
    } else {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn drive(
    args: &Args,
    trace: TraceReader,
    omitted_levels: Option<OmittedLevels>,
) -> anyhow::Result<ReplaySummary> {
    let target = args.connect.start(args.memory_budget).await?;
    let mut client = target.connect().await?;
    let progress = progress_bar();
    let json = args.json;
    let replay_options = ReplayOptions {
        backend: args.backend,
        omitted_levels,
        memory_budget: args.memory_budget,
        witness: args.witness,
    };
    let result = replay(&mut client, trace, replay_options, |p| match p {
        Progress::Uploaded(bytes) => progress.set_message(format!("uploaded {bytes} bytes")),
        Progress::Step(step) => {
            if json {
                // Serialising this plain struct cannot fail; an empty line would flag a bug.
                println!("{}", serde_json::to_string(step).unwrap_or_default());
            }
            progress.set_message(format!("step {} ({} blocks)", step.step, step.blocks));
        }
    })
    .await;
    progress.finish_and_clear();
    if let Some(server) = target.server {
        server.stop().await?;
    }
    result.with_context(|| format!("replaying {}", args.trace.display()))
}

/// A spinner on stderr when it is a terminal; hidden otherwise (CI logs, pipes).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
