//! The replay benchmark (`memcommit bench --trace`): one real trace replayed twice per
//! repeat, in-process (the tree's `build` and `update` called directly) and through gRPC (a
//! [`LoopbackServer`] on 127.0.0.1 driven by [`crate::replay::replay`]), so that the ratio
//! of the two per-step latencies is what the service costs on top of the tree.
//!
//! Both modes time the same steps: the build (step 0) and each update batch. Uploading the
//! initial image and decoding trace lines are not timed. Every `expect_root` is checked in
//! both modes. Permutations are counted from the layout and the batches
//! ([`super::build_permutations`], [`super::update_permutations`]), the way the trees do
//! the work.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{build_permutations, ms_since, per_s, update_permutations, Timing};
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::image::MemoryImage;
use crate::layout::MemoryLayout;
use crate::replay::{replay, ReplayOptions};
use crate::service::client::Client;
use crate::service::{LoopbackServer, ServiceConfig};
use crate::trace::{TraceEvent, TraceReader};
use crate::tree::{self, Backend, OmittedLevels, TouchedBlock};

/// Latency of one mode over every repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayTiming {
    /// The build (step 0), median and minimum over the repeats.
    pub build: Timing,
    /// Update steps: nearest-rank median over every update of every repeat, ms.
    pub step_p50_ms: f64,
    /// Update steps: nearest-rank 99th percentile, ms.
    pub step_p99_ms: f64,
    /// The whole replay (build plus every update), median and minimum over the repeats.
    pub total: Timing,
    /// Permutations of the whole replay per second, at the median total.
    pub perms_per_s: f64,
}

/// One trace on one backend at one `omitted_levels`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceBench {
    /// The trace file as given.
    pub trace: String,
    /// Concrete backend.
    pub backend: Backend,
    /// `omitted_levels`.
    pub k: u32,
    /// Root steps per replay (the build included).
    pub steps: u64,
    /// Touched blocks over all update steps.
    pub blocks: u64,
    /// Permutations of one whole replay: the build plus every update.
    pub perms: u64,
    /// Replays per mode.
    pub repeats: usize,
    /// `expect_root`s checked per replay (all matched, else the bench fails).
    pub checked: u64,
    /// The tree called directly.
    pub in_process: ReplayTiming,
    /// Through gRPC on 127.0.0.1 (client round trip per step).
    pub grpc: ReplayTiming,
    /// `grpc.step_p50_ms / in_process.step_p50_ms`.
    pub grpc_vs_in_process_p50: f64,
    /// `grpc.step_p99_ms / in_process.step_p99_ms`.
    pub grpc_vs_in_process_p99: f64,
}

/// Nearest-rank percentile `q` (in `[0, 1]`) of sorted values; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A trace held in memory, so that the in-process replays time only the tree.
struct LoadedTrace {
    layout: MemoryLayout,
    image: MemoryImage,
    build_root: Option<Digest>,
    updates: Vec<(Vec<TouchedBlock>, Option<Digest>)>,
}

impl LoadedTrace {
    /// Permutations of the build and every update at `omitted_levels = k`, each update
    /// counted on the image as it stands after it.
    fn permutations(&self, k: u32) -> Result<u64> {
        let mut image = self.image.clone();
        let mut perms = build_permutations(&self.layout, &image);
        for (blocks, _) in &self.updates {
            image.write_blocks(blocks.iter().map(|b| (b.slot, b.block, &b.cells)))?;
            perms += update_permutations(&self.layout, &image, k, blocks);
        }
        Ok(perms)
    }

    fn checked(&self) -> u64 {
        u64::from(self.build_root.is_some())
            + self.updates.iter().filter(|(_, r)| r.is_some()).count() as u64
    }
}

fn load(path: &Path) -> Result<LoadedTrace> {
    let trace = TraceReader::open(path)?;
    let layout = trace.header().layout.clone();
    let mut image = MemoryImage::zeroed(&layout)?;
    let mut build_root = None;
    let mut updates = Vec::new();
    for event in trace {
        match event? {
            TraceEvent::Write { slot, offset, data } => image.write(slot, offset, &data)?,
            TraceEvent::Build { expect_root } => build_root = expect_root,
            TraceEvent::Update {
                blocks,
                expect_root,
            } => updates.push((blocks, expect_root)),
        }
    }
    Ok(LoadedTrace {
        layout,
        image,
        build_root,
        updates,
    })
}

/// Fails naming the step when a recorded root differs.
fn check(step: usize, root: Digest, expect: Option<Digest>) -> Result<()> {
    match expect {
        Some(e) if e != root => Err(Error::FailedPrecondition(format!(
            "step {step}: root {root:?} does not match expect_root {e:?}"
        ))),
        _ => Ok(()),
    }
}

/// Per-repeat step times of one mode: `[build, update 1, update 2, …]` in ms.
fn timing(runs: &[Vec<f64>], perms: u64) -> ReplayTiming {
    let builds: Vec<f64> = runs.iter().filter_map(|r| r.first().copied()).collect();
    let totals: Vec<f64> = runs.iter().map(|r| r.iter().sum()).collect();
    let mut steps: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.iter().skip(1).copied())
        .collect();
    steps.sort_by(f64::total_cmp);
    let total = Timing::of(&totals);
    ReplayTiming {
        build: Timing::of(&builds),
        step_p50_ms: percentile(&steps, 0.50),
        step_p99_ms: percentile(&steps, 0.99),
        total,
        perms_per_s: per_s(perms, total.median_ms),
    }
}

fn in_process(trace: &LoadedTrace, backend: Backend, k: u32) -> Result<Vec<f64>> {
    let image = Arc::new(trace.image.clone());
    let mut ms = Vec::with_capacity(trace.updates.len() + 1);
    let t = Instant::now();
    let mut tree = tree::build(backend, trace.layout.clone(), image, k)?;
    ms.push(ms_since(t));
    check(0, tree.root(), trace.build_root)?;
    for (i, (blocks, expect)) in trace.updates.iter().enumerate() {
        let t = Instant::now();
        let root = tree.update(blocks)?;
        ms.push(ms_since(t));
        check(i + 1, root, *expect)?;
    }
    Ok(ms)
}

async fn through_grpc(
    path: &Path,
    backend: Backend,
    k: u32,
    repeats: usize,
) -> Result<Vec<Vec<f64>>> {
    let unavailable = |e: anyhow::Error| Error::Unavailable(format!("{e:#}"));
    let server = LoopbackServer::start(ServiceConfig::default())
        .await
        .map_err(unavailable)?;
    let runs = async {
        let mut client = Client::connect(&server.url).await?;
        let mut runs = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let options = ReplayOptions {
                backend,
                omitted_levels: Some(OmittedLevels::Fixed(k)),
                memory_budget: None,
                witness: false,
            };
            let summary = replay(&mut client, TraceReader::open(path)?, options, |_| {}).await?;
            runs.push(summary.step_ms);
        }
        Ok::<_, Error>(runs)
    }
    .await;
    server.stop().await.map_err(unavailable)?;
    runs
}

/// Replays the trace at `path` `repeats` times in each mode, on `backend` at each `k`,
/// calling `progress` before each (backend, k).
///
/// # Errors
/// The trace's errors (I/O, format); [`Error::FailedPrecondition`] naming the step when a
/// root differs from its `expect_root`; what a build or update returns; and
/// [`Error::Unavailable`] when the in-process server cannot start.
pub fn bench_trace(
    path: &Path,
    backends: &[Backend],
    ks: &[u32],
    repeats: usize,
    mut progress: impl FnMut(&str),
) -> Result<Vec<TraceBench>> {
    let repeats = repeats.max(1);
    let trace = load(path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the tokio runtime", e))?;
    let mut out = Vec::new();
    for &backend in backends {
        for &k in ks {
            tree::check_omitted_levels(k)?;
            progress(&format!(
                "replay {} {} k={k}",
                path.display(),
                backend.name()
            ));
            let perms = trace.permutations(k)?;
            let local = (0..repeats)
                .map(|_| in_process(&trace, backend, k))
                .collect::<Result<Vec<_>>>()?;
            let remote = runtime.block_on(through_grpc(path, backend, k, repeats))?;
            let (in_process, grpc) = (timing(&local, perms), timing(&remote, perms));
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
            out.push(TraceBench {
                trace: path.display().to_string(),
                backend,
                k,
                steps: trace.updates.len() as u64 + 1,
                blocks: trace.updates.iter().map(|(b, _)| b.len() as u64).sum(),
                perms,
                repeats,
                checked: trace.checked(),
                grpc_vs_in_process_p50: ratio(grpc.step_p50_ms, in_process.step_p50_ms),
                grpc_vs_in_process_p99: ratio(grpc.step_p99_ms, in_process.step_p99_ms),
                in_process,
                grpc,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..3], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn timing_pools_updates_and_keeps_builds_apart() {
        let runs = vec![vec![100.0, 1.0, 2.0, 3.0], vec![120.0, 4.0, 5.0, 6.0]];
        let t = timing(&runs, 1_000);
        assert_eq!(t.build.median_ms, 110.0);
        assert_eq!(t.build.min_ms, 100.0);
        assert_eq!(t.step_p50_ms, 3.0);
        assert_eq!(t.step_p99_ms, 6.0);
        assert_eq!(t.total.median_ms, 120.5);
        assert!((t.perms_per_s - 1_000.0 / 0.1205).abs() < 1e-6);
    }
}
