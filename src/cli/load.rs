//! `memcommit load-test`: K clients × M checked update batches with openings, plus
//! create/drop churn, against a server (in-process on 127.0.0.1 by default).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use memcommit::load::{load_test, LoadOptions, LoadSummary};
use memcommit::tree::Backend;

use super::connect::ConnectArgs;

/// Arguments of `memcommit load-test`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exits non-zero when any call fails or any root or opening \
differs from the local reference tree.\n\nExamples:\n  memcommit load-test --clients 4 \
--batches 20 --churn\n  memcommit load-test --clients 32 --batches 500 --blocks-per-batch 64 \
--churn --duration-limit 600"
)]
pub struct Args {
    /// Concurrent clients, each with its own connection and tree.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    clients: u64,
    /// Update batches per client (each with return_openings).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    batches: u64,
    /// Distinct touched blocks per batch (capped at the client's layout's block count).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    blocks_per_batch: u64,
    /// Also create, build and drop small trees in a loop while the clients run.
    #[arg(long)]
    churn: bool,
    /// Stop after this many seconds even if batches remain (reported, not an error).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    duration_limit: u64,
    /// Backend of every tree.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Seed of the layouts, images and batches.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the summary as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = LoadOptions {
        clients: usize::try_from(args.clients).context("--clients")?,
        batches: args.batches,
        blocks_per_batch: usize::try_from(args.blocks_per_batch).context("--blocks-per-batch")?,
        churn: args.churn,
        duration_limit: Duration::from_secs(args.duration_limit),
        backend: args.backend,
        seed: args.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let summary = runtime.block_on(async {
        let target = args.connect.start(None).await?;
        let bar = super::bench::progress_bar(args.clients * args.batches);
        let tick = bar.clone();
        let result = load_test(
            &target.url,
            &target.options,
            options,
            Arc::new(move || tick.inc(1)),
        )
        .await;
        bar.finish_and_clear();
        if let Some(server) = target.server {
            server.stop().await?;
        }
        result.with_context(|| format!("load test against {}", target.url))
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!("{}", text(&summary));
    }
    if summary.errors > 0 {
        anyhow::bail!(
            "load test failed: {} errors; first: {}",
            summary.errors,
            summary.first_errors.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The summary as one human-readable line.
fn text(s: &LoadSummary) -> String {
    format!(
        "load test: {} clients, {} batches, {} blocks, {} openings checked, {} errors{}; \
         {:.1} s, {:.1} batches/s, {:.0} blocks/s; UpdateBlocks p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms; churn {} trees created and dropped",
        s.clients,
        s.batches,
        s.blocks,
        s.openings_checked,
        s.errors,
        if s.time_limited {
            " (stopped by --duration-limit)"
        } else {
            ""
        },
        s.elapsed_s,
        s.batches_per_s,
        s.blocks_per_s,
        s.update_ms_p50,
        s.update_ms_p99,
        s.update_ms_max,
        s.churn_trees,
    )
}
