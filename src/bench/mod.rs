//! `memcommit bench`: a sweep of memory size, cell type, `omitted_levels`, touched blocks per
//! batch and backend, timing builds and updates next to p3-merkle-tree's `MerkleTree::new`
//! on the same leaves, with the bytes each `k` holds (README "Benchmarks", docs/benchmarks.md).
//!
//! Each configuration is one address space of `bytes / cell bytes` cells, filled with
//! deterministic pseudo-random valid cells. Updates write random distinct blocks, so builds
//! for later `k` see the image as earlier updates left it (same size, other values).

pub mod chart;
pub mod count;
pub mod replay;
pub mod sparse;
pub mod system;
pub mod witness;

use std::sync::Arc;
use std::time::Instant;

use p3_field::Field;
use p3_matrix::dense::RowMajorMatrix;
use p3_merkle_tree::MerkleTree;
use p3_symmetric::{PaddingFreeSponge, TruncatedPermutation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{permutation, F, P};
use crate::image::MemoryImage;
use crate::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout, BLOCK_CELLS};
use crate::tree::{self, Backend, MemoryTree, TouchedBlock};

pub use count::{build_permutations, update_permutations};
pub use replay::{percentile, ReplayTiming, TraceBench};

/// The reference backend runs only up to this many blocks: it is scalar and sparse.
pub const REFERENCE_MAX_BLOCKS: u64 = 1 << 16;

/// What to sweep.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Raw memory sizes in bytes (powers of two), smallest first.
    pub sizes: Vec<u64>,
    /// Cell types.
    pub cells: Vec<CellType>,
    /// `omitted_levels` values.
    pub omitted_levels: Vec<u32>,
    /// Touched blocks per update batch, as fractions of the slot's blocks (at least one
    /// block is touched).
    pub touched: Vec<f64>,
    /// Concrete backends (`cpu`, `cuda`, `reference`).
    pub backends: Vec<Backend>,
    /// Timed repetitions of every build and every update batch (and replays per mode of
    /// every trace).
    pub repeats: usize,
    /// Real traces for the replay benchmark ([`replay::bench_trace`]), each replayed at
    /// every `k` of `omitted_levels` on every backend but `reference`.
    #[serde(default)]
    pub traces: Vec<std::path::PathBuf>,
    /// Fractions of OpenVM's RAM pages present in the sparse case ([`sparse::run_case`]);
    /// empty: no sparse case.
    #[serde(default)]
    pub sparse: Vec<f64>,
    /// `omitted_levels` of the sparse case.
    #[serde(default)]
    pub sparse_omitted_levels: Vec<u32>,
    /// Batch sizes of the witness case ([`witness::run_case`]), in blocks; empty: no
    /// witness case.
    #[serde(default)]
    pub witness: Vec<u64>,
    /// `omitted_levels` of the witness case.
    #[serde(default)]
    pub witness_omitted_levels: Vec<u32>,
    /// Blocks of the witness case's slot, as a power of two.
    #[serde(default)]
    pub witness_log_leaves: u32,
}

impl BenchConfig {
    /// Build configurations the sweep will run (p3 baselines included), for a progress bar.
    pub fn steps(&self) -> u64 {
        let mut n = 0;
        for &bytes in &self.sizes {
            for &cell in &self.cells {
                n += 1; // the p3 baseline
                for &b in &self.backends {
                    if runs_at(b, blocks_of(bytes, cell)) {
                        n += self.omitted_levels.len() as u64;
                    }
                }
            }
        }
        n + (self.traces.len() * self.trace_backends().len() * self.omitted_levels.len()) as u64
            + (self.sparse.len() * self.sparse_omitted_levels.len() * self.trace_backends().len())
                as u64
            + ((self.witness.len() + 1)
                * self.witness_omitted_levels.len()
                * self.trace_backends().len()) as u64
                * u64::from(!self.witness.is_empty())
    }

    /// Backends the traces are replayed on: the reference tree is left out, being scalar and
    /// sparse.
    pub fn trace_backends(&self) -> Vec<Backend> {
        self.backends
            .iter()
            .copied()
            .filter(|&b| b != Backend::Reference)
            .collect()
    }
}

/// Median and minimum of the timed repeats, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Median (the mean of the middle two for an even count), ms.
    pub median_ms: f64,
    /// Fastest repeat, ms.
    pub min_ms: f64,
}

impl Timing {
    /// Median and minimum of `ms` (zeros when empty).
    pub fn of(ms: &[f64]) -> Timing {
        if ms.is_empty() {
            return Timing::default();
        }
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median_ms = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Timing {
            median_ms,
            min_ms: v[0],
        }
    }
}

/// p3-merkle-tree 0.8.0's `MerkleTree::new` (feature `parallel`) on the same leaves as a
/// memcommit build: the slot's cells converted to field elements, one width-8 row per block
/// (conversion not timed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    /// Cell type of the memcommit space the leaves come from.
    pub cell: CellType,
    /// Raw memory bytes of that space.
    pub bytes: u64,
    /// Leaves (blocks).
    pub blocks: u64,
    /// Build time.
    pub build: Timing,
    /// Permutations per second at the median: p3 also does `2·blocks − 1`.
    pub perms_per_s: f64,
    /// Whether p3's root equals memcommit's root over the same leaves (always checked).
    pub root_matches: bool,
}

/// One measured configuration: a build and one touched fraction of updates.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    /// Concrete backend.
    pub backend: Backend,
    /// Cell type.
    pub cell: CellType,
    /// Raw memory bytes.
    pub bytes: u64,
    /// Blocks (leaves).
    pub blocks: u64,
    /// `omitted_levels`.
    pub k: u32,
    /// Requested touched fraction of the blocks.
    pub touched_fraction: f64,
    /// Blocks in each update batch.
    pub touched_blocks: u64,
    /// Build time (shared by the rows of one build).
    pub build: Timing,
    /// Update time per batch.
    pub update: Timing,
    /// Permutations of one build ([`build_permutations`]).
    pub build_perms: u64,
    /// Permutations of one update batch, averaged over the repeats
    /// ([`update_permutations`]).
    pub update_perms: u64,
    /// `build_perms` per second at the median build time.
    pub build_perms_per_s: f64,
    /// `update_perms` per second at the median update time.
    pub update_perms_per_s: f64,
    /// p3 median build time / this median build time (> 1: faster than p3).
    pub build_vs_p3: f64,
    /// Bytes of stored digests (host + device), from `memory_usage()`.
    pub node_bytes: u64,
    /// Bytes of raw memory (host + device), from `memory_usage()`.
    pub raw_bytes: u64,
    /// Peak RSS of the process while this build and its updates ran, in bytes (`VmHWM`,
    /// reset before each build when the kernel allows; see `BenchReport::rss_reset`).
    pub peak_rss_bytes: u64,
    /// Peak device bytes: the larger of the tree's device allocations and the drop in
    /// `cuMemGetInfo` free memory during the build and updates; 0 without a device.
    pub peak_device_bytes: u64,
}

/// Everything a sweep measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    /// The sweep.
    pub config: BenchConfig,
    /// CPU threads rayon used.
    pub threads: usize,
    /// The CUDA device's name, when one was usable.
    pub device: Option<String>,
    /// Host `MemAvailable` before the sweep, bytes.
    pub host_available_bytes: Option<u64>,
    /// Whether the peak RSS could be reset per build (else it is the process peak).
    pub rss_reset: bool,
    /// p3-merkle-tree baselines, one per (size, cell).
    pub baselines: Vec<Baseline>,
    /// Measurements.
    pub rows: Vec<Row>,
    /// Replay benchmarks of `config.traces`.
    #[serde(default)]
    pub traces: Vec<TraceBench>,
    /// The sparse case, one row per (fraction, k, backend).
    #[serde(default)]
    pub sparse: Vec<sparse::SparseRow>,
    /// The witness case, one row per (backend, k, batch size).
    #[serde(default)]
    pub witness: Vec<witness::WitnessCase>,
    /// The witness's wire form, one row per (backend, k).
    #[serde(default)]
    pub witness_codec: Vec<witness::WitnessCodec>,
    /// Wall time of the whole sweep, seconds.
    pub wall_s: f64,
}

/// Blocks of a `bytes`-byte space of `cell` cells.
pub fn blocks_of(bytes: u64, cell: CellType) -> u64 {
    bytes / (cell.bytes() * BLOCK_CELLS) as u64
}

fn runs_at(backend: Backend, blocks: u64) -> bool {
    blocks >= 1 && (backend != Backend::Reference || blocks <= REFERENCE_MAX_BLOCKS)
}

/// Estimated peak host bytes of one (size, cell) configuration, used to cap sizes by
/// available memory: the raw image plus the larger of the k = 0 tree (`2·blocks` digests)
/// and the p3 baseline (two copies of the leaves as field elements and about `2·blocks`
/// digests), which never run at the same time.
pub fn host_bytes_needed(bytes: u64, cell: CellType) -> u64 {
    let blocks = blocks_of(bytes, cell);
    let p3 = blocks * (BLOCK_CELLS as u64 * 4) * 2 + 2 * blocks * 32;
    let tree = 2 * blocks * 32;
    bytes + tree.max(p3)
}

/// A one-slot layout of `bytes` raw bytes of `cell` cells.
///
/// # Errors
/// [`Error::InvalidArgument`] when `bytes` is not a power of two of at least one block.
pub fn layout_of(bytes: u64, cell: CellType) -> Result<MemoryLayout> {
    MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell,
            num_cells: bytes / cell.bytes() as u64,
        }],
        address_space_height: None,
        address_height: None,
    })
    .map_err(|e| Error::invalid("bytes", format!("{bytes} bytes of {}: {e}", cell.name())))
}

/// A small deterministic generator (64-bit LCG, high bits out): benchmark inputs need no
/// quality beyond "not all equal", and the sweep must be reproducible.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 16
    }

    fn cell(&mut self, cell: CellType) -> u32 {
        (self.next() % (u64::from(cell.max_value()) + 1)) as u32 % P
    }
}

/// An image of `layout`'s one slot filled with pseudo-random valid cells, written 1 MiB at
/// a time so only one copy of the memory is ever held. The same `seed` gives the same image.
///
/// # Errors
/// [`Error::ResourceExhausted`] when the image cannot be allocated.
pub fn random_image(layout: &MemoryLayout, seed: u64) -> Result<MemoryImage> {
    let mut image = MemoryImage::zeroed(layout)?;
    let cell = layout.address_spaces()[0].cell;
    let total = layout.address_spaces()[0].raw_bytes();
    let mut rng = Lcg(seed);
    let chunk = (1u64 << 20).min(total);
    let mut buf = vec![0u8; chunk as usize];
    let mut at = 0;
    while at < total {
        for c in buf.chunks_exact_mut(cell.bytes()) {
            cell.write(rng.cell(cell), c);
        }
        image.write(0, at, &buf)?;
        at += chunk;
    }
    Ok(image)
}

/// `n` distinct random blocks of slot 0 of a `blocks`-block space (`n ≤ blocks`), sorted,
/// with random valid `cell` values. The same `seed` gives the same batch.
pub fn random_batch(blocks: u64, n: u64, cell: CellType, seed: u64) -> Vec<TouchedBlock> {
    let mut rng = Lcg(seed);
    let mut chosen: Vec<u64> = if n * 2 > blocks {
        // Dense: a partial Fisher–Yates shuffle of all blocks.
        let mut all: Vec<u64> = (0..blocks).collect();
        for i in 0..n as usize {
            let j = i + (rng.next() % (blocks - i as u64)) as usize;
            all.swap(i, j);
        }
        all.truncate(n as usize);
        all
    } else {
        let mut set = std::collections::HashSet::with_capacity(n as usize);
        while (set.len() as u64) < n {
            set.insert(rng.next() % blocks);
        }
        set.into_iter().collect()
    };
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|block| TouchedBlock {
            slot: 0,
            block,
            cells: core::array::from_fn(|_| rng.cell(cell)),
        })
        .collect()
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn per_s(perms: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        perms as f64 / (ms / 1e3)
    } else {
        0.0
    }
}

/// Times p3's `MerkleTree::new` over the slot's leaves and checks its root against
/// memcommit's (the layout's root equals the slot root: one slot, no padding).
fn p3_baseline(layout: &MemoryLayout, image: &MemoryImage, repeats: usize) -> Result<Baseline> {
    let space = layout.address_spaces()[0];
    // The cells straight from the pages, without a raw copy: a 2^25-byte copy freed before
    // the timing raised glibc's dynamic mmap threshold, which let p3's digest layers reuse
    // heap pages instead of faulting fresh ones, and moved its time by 10 %.
    let (w, page) = (space.cell.bytes(), image.page_bytes(0) as usize);
    let mut leaves: Vec<F> = Vec::with_capacity(space.num_cells as usize);
    for n in 0..(space.raw_bytes() as usize).div_ceil(page) as u64 {
        match image.page_id(0, n) {
            Some(id) => leaves.extend(
                image
                    .page(0, id)
                    .chunks_exact(w)
                    .map(|c| F::new(space.cell.read(c))),
            ),
            None => leaves.resize(leaves.len() + page / w, F::new(0)),
        }
    }
    let perm = permutation().clone();
    let hasher = PaddingFreeSponge::<_, 16, 8, 8>::new(perm.clone());
    let compressor = TruncatedPermutation::<_, 2, 8, 16>::new(perm);
    let mut ms = Vec::with_capacity(repeats);
    let mut root = None;
    for _ in 0..repeats {
        let matrix = RowMajorMatrix::new(leaves.clone(), BLOCK_CELLS);
        let t = Instant::now();
        let tree: MerkleTree<F, F, _, 2, 8> = MerkleTree::new::<
            <F as Field>::Packing,
            <F as Field>::Packing,
            _,
            _,
        >(&hasher, &compressor, vec![matrix]);
        ms.push(ms_since(t));
        root = Some(tree.root());
    }
    drop(leaves);
    let ours = tree::build(
        Backend::Cpu,
        layout.clone(),
        Arc::new(image.clone()),
        tree::DEFAULT_OMITTED_LEVELS,
    )?
    .root();
    let build = Timing::of(&ms);
    Ok(Baseline {
        cell: space.cell,
        bytes: space.raw_bytes(),
        blocks: space.num_blocks(),
        build,
        perms_per_s: per_s(build_permutations(layout, image), build.median_ms),
        root_matches: root.is_some_and(|r| Into::<[F; 8]>::into(r) == ours.0),
    })
}

/// Runs the sweep; `progress` is called before each step ([`BenchConfig::steps`]) with
/// what it is about to measure.
///
/// # Errors
/// [`Error::InvalidArgument`] for a size that is not a power of two of at least one block of
/// every cell type, a `k` above [`tree::MAX_OMITTED_LEVELS`] or a touched fraction outside
/// `(0, 1]`; whatever a build or update returns ([`Error::ResourceExhausted`],
/// [`Error::Unavailable`]).
pub fn run(config: &BenchConfig, mut progress: impl FnMut(&str)) -> Result<BenchReport> {
    for &k in &config.omitted_levels {
        tree::check_omitted_levels(k)?;
    }
    if let Some(f) = config.touched.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        return Err(Error::invalid(
            "touched",
            format!("{f} is not a fraction in (0, 1]"),
        ));
    }
    let started = Instant::now();
    let repeats = config.repeats.max(1);
    let device = if config.backends.contains(&Backend::Cuda) {
        tree::cuda::probe_device().ok().map(|d| d.name)
    } else {
        None
    };
    let mut report = BenchReport {
        config: config.clone(),
        threads: rayon::current_num_threads(),
        device,
        host_available_bytes: system::host_available_bytes(),
        rss_reset: system::reset_peak_rss(),
        baselines: Vec::new(),
        rows: Vec::new(),
        traces: Vec::new(),
        sparse: Vec::new(),
        witness: Vec::new(),
        witness_codec: Vec::new(),
        wall_s: 0.0,
    };
    let mut seed = 1u64;
    for &bytes in &config.sizes {
        for &cell in &config.cells {
            let layout = layout_of(bytes, cell)?;
            let blocks = blocks_of(bytes, cell);
            seed += 1;
            let mut image = Arc::new(random_image(&layout, seed)?);
            progress(&format!("p3 baseline {} {bytes} B", cell.name()));
            let baseline = p3_baseline(&layout, &image, repeats)?;
            let p3_ms = baseline.build.median_ms;
            report.baselines.push(baseline);
            for &backend in &config.backends {
                if !runs_at(backend, blocks) {
                    continue;
                }
                for &k in &config.omitted_levels {
                    progress(&format!(
                        "{} {} {bytes} B k={k}",
                        backend.name(),
                        cell.name()
                    ));
                    let (rows, back) = measure(
                        config, &layout, image, backend, k, repeats, &mut seed, p3_ms,
                    )?;
                    image = back;
                    report.rows.extend(rows);
                }
            }
        }
    }
    for path in &config.traces {
        report.traces.extend(replay::bench_trace(
            path,
            &config.trace_backends(),
            &config.omitted_levels,
            repeats,
            &mut progress,
        )?);
    }
    for &fraction in &config.sparse {
        for &k in &config.sparse_omitted_levels {
            tree::check_omitted_levels(k)?;
            for backend in config.trace_backends() {
                progress(&format!("sparse {} {fraction} k={k}", backend.name()));
                seed += 1;
                report
                    .sparse
                    .push(sparse::run_case(fraction, k, backend, repeats, seed)?);
            }
        }
    }
    let witness_ks = match config.witness.is_empty() {
        true => &[][..],
        false => &config.witness_omitted_levels[..],
    };
    for &k in witness_ks {
        tree::check_omitted_levels(k)?;
        for backend in config.trace_backends() {
            seed += 1;
            let (rows, codec) = witness::run_case(
                config.witness_log_leaves,
                k,
                backend,
                &config.witness,
                repeats,
                seed,
                true,
                &mut progress,
            )?;
            report.witness.extend(rows);
            report.witness_codec.extend(codec);
        }
    }
    report.wall_s = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Builds `repeats` times, then runs `repeats` batches per touched fraction on the last
/// tree. Returns the rows and the image (the tree's, after the updates) for the next `k`.
#[allow(clippy::too_many_arguments)]
fn measure(
    config: &BenchConfig,
    layout: &MemoryLayout,
    image: Arc<MemoryImage>,
    backend: Backend,
    k: u32,
    repeats: usize,
    seed: &mut u64,
    p3_ms: f64,
) -> Result<(Vec<Row>, Arc<MemoryImage>)> {
    system::reset_peak_rss();
    let free_before = if backend == Backend::Cuda {
        system::device_free_bytes()
    } else {
        None
    };
    let mut free_min = free_before;
    let mut note_device = || {
        if let (Some(now), Some(min)) = (system::device_free_bytes(), free_min.as_mut()) {
            *min = (*min).min(now);
        }
    };
    let mut build_ms = Vec::with_capacity(repeats);
    let mut image = Some(image);
    let mut tree: Option<Box<dyn MemoryTree>> = None;
    for r in 0..repeats {
        // Free the previous tree first so builds never overlap in memory. The last build
        // takes the only handle on the image, so updates write it in place (a shared image
        // would be copied on the first write).
        drop(tree.take());
        let img = if r + 1 == repeats {
            image.take()
        } else {
            image.clone()
        }
        .ok_or_else(|| Error::invalid("repeats", "no image"))?;
        let t = Instant::now();
        let built = tree::build(backend, layout.clone(), img, k)?;
        build_ms.push(ms_since(t));
        note_device();
        tree = Some(built);
    }
    let mut tree = tree.ok_or_else(|| Error::invalid("repeats", "no build ran"))?;
    let build = Timing::of(&build_ms);
    let blocks = layout.address_spaces()[0].num_blocks();
    let cell = layout.address_spaces()[0].cell;
    let build_perms = build_permutations(layout, tree.image());
    let mut rows = Vec::new();
    let mut updates = Vec::new();
    for &fraction in &config.touched {
        let n = ((fraction * blocks as f64).round() as u64).clamp(1, blocks);
        let mut ms = Vec::with_capacity(repeats);
        let mut perms = 0;
        for _ in 0..repeats {
            *seed += 1;
            let batch = random_batch(blocks, n, cell, *seed);
            let t = Instant::now();
            tree.update(&batch)?;
            ms.push(ms_since(t));
            perms += update_permutations(layout, tree.image(), k, &batch);
        }
        note_device();
        updates.push((fraction, n, Timing::of(&ms), perms / repeats as u64));
    }
    let usage = tree.memory_usage();
    let peak_rss_bytes = system::peak_rss_bytes().unwrap_or(0);
    let device_drop = match (free_before, free_min) {
        (Some(before), Some(min)) => before.saturating_sub(min),
        _ => 0,
    };
    let peak_device_bytes = device_drop.max(usage.device_node_bytes + usage.device_raw_bytes);
    for (fraction, n, update, update_perms) in updates {
        rows.push(Row {
            backend: tree.backend(),
            cell,
            bytes: layout.raw_bytes(),
            blocks,
            k,
            touched_fraction: fraction,
            touched_blocks: n,
            build,
            update,
            build_perms,
            update_perms,
            build_perms_per_s: per_s(build_perms, build.median_ms),
            update_perms_per_s: per_s(update_perms, update.median_ms),
            build_vs_p3: if build.median_ms > 0.0 {
                p3_ms / build.median_ms
            } else {
                0.0
            },
            node_bytes: usage.host_node_bytes + usage.device_node_bytes,
            raw_bytes: usage.host_raw_bytes + usage.device_raw_bytes,
            peak_rss_bytes,
            peak_device_bytes,
        });
    }
    Ok((rows, tree.image().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_distinct_valid_and_of_the_asked_size() {
        for (blocks, n) in [(1024u64, 10u64), (1024, 700), (16, 16), (1, 1)] {
            let batch = random_batch(blocks, n, CellType::U16, 7);
            assert_eq!(batch.len() as u64, n);
            assert!(batch.windows(2).all(|w| w[0].block < w[1].block));
            assert!(batch.iter().all(|b| b.block < blocks));
            assert!(batch.iter().all(|b| b.cells.iter().all(|&c| c <= 0xffff)));
        }
    }

    #[test]
    fn images_hold_valid_cells_and_timing_takes_median_and_min() {
        let layout = layout_of(1 << 12, CellType::Field).unwrap();
        let image = random_image(&layout, 3).unwrap();
        let mut raw = vec![0u8; 1 << 12];
        image.read(0, 0, &mut raw).unwrap();
        assert!(raw.chunks_exact(4).all(|c| CellType::Field.read(c) < P));
        assert!(raw.chunks_exact(4).any(|c| CellType::Field.read(c) != 0));
        assert_eq!(
            Timing::of(&[3.0, 1.0, 2.0]),
            Timing {
                median_ms: 2.0,
                min_ms: 1.0
            }
        );
        assert_eq!(Timing::of(&[4.0, 1.0, 2.0, 3.0]).median_ms, 2.5);
        assert_eq!(blocks_of(1 << 20, CellType::U8), 1 << 17);
        assert_eq!(blocks_of(1 << 20, CellType::Field), 1 << 15);
        assert!(layout_of(1000, CellType::U8).is_err());
    }
}
