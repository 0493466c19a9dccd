//! The sparse case of `memcommit bench`: OpenVM's default layout (a 2^29-byte RAM slot)
//! with a fraction of its 4 KiB pages present, against the same pages packed side by side
//! into one compact `u8` slot, measured in the same run with their runs interleaved. The
//! packed slot does the same leaf hashing with none of the sparse bookkeeping (its upper
//! levels are narrow, hence dense), so each sparse figure is given as a ratio to it.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{ms_since, percentile, system, Lcg, Timing};
use crate::error::{Error, Result};
use crate::image::MemoryImage;
use crate::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout, BLOCK_CELLS};
use crate::trace::lackey::{openvm_layout, OPENVM_MEMORY_BYTES, OPENVM_MEMORY_SLOT};
use crate::tree::{self, Backend, MemoryTree, TouchedBlock};

/// Bytes of one page of the RAM slot (`u8` cells).
const PAGE_BYTES: u64 = 4096;
/// Blocks of one such page.
const PAGE_BLOCKS: u64 = PAGE_BYTES / BLOCK_CELLS as u64;
/// Cases with at most this many pages also check both roots against the reference tree
/// (which is scalar: 2048 pages take it a few seconds).
pub const ROOT_CHECK_PAGES: u64 = 2048;
/// The largest update batch, in blocks (the 1 % of a fully present RAM slot would be 671k).
pub const MAX_BATCH_BLOCKS: u64 = 1 << 16;
/// Update batches timed per case, for the p50 and p99.
pub const UPDATE_BATCHES: usize = 40;

/// One layout's measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseMeasure {
    /// Build time over the present pages.
    pub build: Timing,
    /// Median time of one update batch, ms.
    pub update_p50_ms: f64,
    /// 99th percentile of the update batches, ms.
    pub update_p99_ms: f64,
    /// Host bytes the tree holds (nodes and raw memory), from `memory_usage()`.
    pub host_bytes: u64,
    /// Device bytes the tree holds (0 on the CPU).
    pub device_bytes: u64,
    /// Peak RSS of the process while this layout alone was written, built and updated once
    /// (`VmHWM`, reset first when the kernel allows).
    pub peak_rss_bytes: u64,
}

/// One sparse case: `pages` present pages at `k` on `backend`, in both layouts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SparseRow {
    /// Concrete backend.
    pub backend: Backend,
    /// `omitted_levels`.
    pub k: u32,
    /// Requested fraction of the RAM slot's 131072 pages.
    pub fraction: f64,
    /// Present pages (4 KiB each), in both layouts.
    pub pages: u64,
    /// Blocks per update batch: 1 % of the present blocks (at least 1, at most
    /// [`MAX_BATCH_BLOCKS`]), all in present pages.
    pub batch_blocks: u64,
    /// OpenVM's layout, the pages at scattered page numbers of slot 1.
    pub sparse: SparseMeasure,
    /// One `u8` slot of the next power of two of pages, the same pages side by side.
    pub packed: SparseMeasure,
    /// Whether both builds gave the same root as the reference over the same pages,
    /// checked for up to [`ROOT_CHECK_PAGES`] pages (`false` when not checked).
    pub roots_checked: bool,
}

impl SparseRow {
    /// `sparse / packed` of each figure: build median, update p50 and p99, host bytes and
    /// peak RSS (0 where the packed figure is 0).
    pub fn ratios(&self) -> [f64; 5] {
        let r = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let (s, p) = (&self.sparse, &self.packed);
        [
            r(s.build.median_ms, p.build.median_ms),
            r(s.update_p50_ms, p.update_p50_ms),
            r(s.update_p99_ms, p.update_p99_ms),
            r(s.host_bytes as f64, p.host_bytes as f64),
            r(s.peak_rss_bytes as f64, p.peak_rss_bytes as f64),
        ]
    }
}

/// The present pages of a case: `n` distinct random page numbers of the RAM slot, sorted,
/// each with random bytes. The same `seed` gives the same pages.
fn pages(n: u64, seed: u64) -> Vec<(u64, Vec<u8>)> {
    let total = OPENVM_MEMORY_BYTES / PAGE_BYTES;
    let mut rng = Lcg(seed);
    let chosen: Vec<u64> = if n == total {
        (0..total).collect()
    } else {
        let mut set = std::collections::BTreeSet::new();
        while (set.len() as u64) < n {
            set.insert(rng.next() % total);
        }
        set.into_iter().collect()
    };
    chosen
        .into_iter()
        .map(|p| (p, (0..PAGE_BYTES).map(|_| rng.next() as u8).collect()))
        .collect()
}

/// `UPDATE_BATCHES` batches of `n` distinct blocks each in present pages, as
/// `(page index among the present pages, block in page, cells)`.
fn batches(pages: u64, n: u64, seed: u64) -> Vec<Vec<(u64, u64, [u32; BLOCK_CELLS])>> {
    let mut rng = Lcg(seed);
    (0..UPDATE_BATCHES)
        .map(|_| {
            let mut seen = std::collections::HashSet::new();
            let mut batch = Vec::with_capacity(n as usize);
            while (batch.len() as u64) < n {
                let (p, b) = (rng.next() % pages, rng.next() % PAGE_BLOCKS);
                if seen.insert((p, b)) {
                    batch.push((p, b, core::array::from_fn(|_| (rng.next() % 256) as u32)));
                }
            }
            batch
        })
        .collect()
}

/// One layout: its slot holding the pages, and where page `i` of the case goes in it.
struct Placement {
    layout: MemoryLayout,
    slot: u32,
    page_number: Box<dyn Fn(usize) -> u64>,
}

impl Placement {
    /// The image holding `pages` where this placement puts them.
    fn image(&self, pages: &[(u64, Vec<u8>)]) -> Result<MemoryImage> {
        let mut image = MemoryImage::zeroed(&self.layout)?;
        for (i, (_, data)) in pages.iter().enumerate() {
            image.write(self.slot, (self.page_number)(i) * PAGE_BYTES, data)?;
        }
        Ok(image)
    }

    /// A batch as touched blocks of this placement.
    fn blocks(&self, batch: &[(u64, u64, [u32; BLOCK_CELLS])]) -> Vec<TouchedBlock> {
        batch
            .iter()
            .map(|&(p, b, cells)| TouchedBlock {
                slot: self.slot,
                block: (self.page_number)(p as usize) * PAGE_BLOCKS + b,
                cells,
            })
            .collect()
    }
}

/// Times both placements with their runs interleaved (a packed build, then a sparse one,
/// `repeats` times; then each batch on the packed tree, then on the sparse one), so load
/// from elsewhere on a shared machine falls on both alike. Returns the measures and roots,
/// packed first; the memory figures are filled in by [`peak_memory`].
fn timed(
    places: [&Placement; 2],
    pages: &[(u64, Vec<u8>)],
    batches: &[Vec<(u64, u64, [u32; BLOCK_CELLS])>],
    backend: Backend,
    k: u32,
    repeats: usize,
) -> Result<[(SparseMeasure, tree::Digest); 2]> {
    let images = [
        Arc::new(places[0].image(pages)?),
        Arc::new(places[1].image(pages)?),
    ];
    let mut build_ms = [Vec::with_capacity(repeats), Vec::with_capacity(repeats)];
    let mut trees: [Option<Box<dyn MemoryTree>>; 2] = [None, None];
    for _ in 0..repeats {
        for i in 0..2 {
            drop(trees[i].take());
            let t = Instant::now();
            let built = tree::build(backend, places[i].layout.clone(), Arc::clone(&images[i]), k)?;
            build_ms[i].push(ms_since(t));
            trees[i] = Some(built);
        }
    }
    // The trees now hold the only handles, so updates write the images in place.
    drop(images);
    let [Some(mut packed), Some(mut sparse)] = trees else {
        return Err(Error::invalid("repeats", "no build ran"));
    };
    let roots = [packed.root(), sparse.root()];
    let mut ms = [
        Vec::with_capacity(batches.len()),
        Vec::with_capacity(batches.len()),
    ];
    for batch in batches {
        for (i, t) in [&mut packed, &mut sparse].into_iter().enumerate() {
            let blocks = places[i].blocks(batch);
            let started = Instant::now();
            t.update(&blocks)?;
            ms[i].push(ms_since(started));
        }
    }
    let usage = [packed.memory_usage(), sparse.memory_usage()];
    Ok(std::array::from_fn(|i| {
        ms[i].sort_by(f64::total_cmp);
        (
            SparseMeasure {
                build: Timing::of(&build_ms[i]),
                update_p50_ms: percentile(&ms[i], 0.50),
                update_p99_ms: percentile(&ms[i], 0.99),
                host_bytes: usage[i].host_node_bytes + usage[i].host_raw_bytes,
                device_bytes: usage[i].device_node_bytes + usage[i].device_raw_bytes,
                peak_rss_bytes: 0,
            },
            roots[i],
        )
    }))
}

/// Peak RSS of one placement alone: its image, one build and the first batch, with the
/// process's `VmHWM` reset first (0 where `/proc` cannot tell).
fn peak_memory(
    place: &Placement,
    pages: &[(u64, Vec<u8>)],
    batch: &[(u64, u64, [u32; BLOCK_CELLS])],
    backend: Backend,
    k: u32,
) -> Result<u64> {
    system::reset_peak_rss();
    let image = Arc::new(place.image(pages)?);
    let mut t = tree::build(backend, place.layout.clone(), image, k)?;
    t.update(&place.blocks(batch))?;
    let peak = system::peak_rss_bytes().unwrap_or(0);
    drop(t);
    Ok(peak)
}

/// The root of `pages` placed by `place`, from the reference tree.
fn reference_root(place: &Placement, pages: &[(u64, Vec<u8>)]) -> Result<tree::Digest> {
    let image = Arc::new(place.image(pages)?);
    Ok(tree::build(Backend::Reference, place.layout.clone(), image, 0)?.root())
}

/// Runs the sparse case at one `fraction` of the RAM slot's pages, `k` and `backend`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a fraction outside (0, 1]; what a build or an update
/// returns; [`Error::FailedPrecondition`] when a root differs from the reference's.
pub fn run_case(
    fraction: f64,
    k: u32,
    backend: Backend,
    repeats: usize,
    seed: u64,
) -> Result<SparseRow> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(Error::invalid(
            "sparse",
            format!("{fraction} is not a fraction in (0, 1]"),
        ));
    }
    let total = OPENVM_MEMORY_BYTES / PAGE_BYTES;
    let n = ((fraction * total as f64).round() as u64).clamp(1, total);
    let pages = pages(n, seed);
    let batch_blocks = (n * PAGE_BLOCKS / 100).clamp(1, MAX_BATCH_BLOCKS);
    let batches = batches(n, batch_blocks, seed + 1);
    let numbers: Vec<u64> = pages.iter().map(|p| p.0).collect();
    let sparse = Placement {
        layout: openvm_layout()?,
        slot: OPENVM_MEMORY_SLOT,
        page_number: Box::new(move |i| numbers[i]),
    };
    let packed = Placement {
        layout: MemoryLayout::new(LayoutSpec {
            address_spaces: vec![AddressSpace {
                cell: CellType::U8,
                num_cells: n.next_power_of_two() * PAGE_BYTES,
            }],
            address_space_height: None,
            address_height: None,
        })?,
        slot: 0,
        page_number: Box::new(|i| i as u64),
    };
    let [(mut packed_m, packed_root), (mut sparse_m, sparse_root)] =
        timed([&packed, &sparse], &pages, &batches, backend, k, repeats)?;
    packed_m.peak_rss_bytes = peak_memory(&packed, &pages, &batches[0], backend, k)?;
    sparse_m.peak_rss_bytes = peak_memory(&sparse, &pages, &batches[0], backend, k)?;
    let roots_checked = n <= ROOT_CHECK_PAGES;
    if roots_checked {
        for (what, place, root) in [
            ("sparse", &sparse, sparse_root),
            ("packed", &packed, packed_root),
        ] {
            let expect = reference_root(place, &pages)?;
            if root != expect {
                return Err(Error::FailedPrecondition(format!(
                    "sparse bench: the {what} build's root {root:?} differs from the \
                     reference's {expect:?}"
                )));
            }
        }
    }
    Ok(SparseRow {
        backend,
        k,
        fraction,
        pages: n,
        batch_blocks,
        sparse: sparse_m,
        packed: packed_m,
        roots_checked,
    })
}
