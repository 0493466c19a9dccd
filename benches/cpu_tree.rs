//! CPU tree benchmarks (issue 2). Every figure is meant to be read as a ratio against a
//! baseline measured in the same run:
//! - `build/*`: memcommit's CPU build at k = 0 and k = 3 against p3-merkle-tree's
//!   `MerkleTree::new` (feature `parallel`) on the same leaves (one `field` address space
//!   = one width-8 matrix, so both compute the same root);
//! - `update/*`: batches of 1 to 64Ki random distinct touched blocks on a 2^20-leaf tree (a
//!   single block shares no node with another, the worst case per block), per block,
//!   against `perm/*`, the measured cost of one permutation (scalar and packed per lane);
//! - `update_witness/*`: batches of 1, 1Ki and 64Ki blocks on the same tree applied with
//!   their witness (`update_with_witness`), against `update/*` with the same sizes and k.
//!
//! Like the `memcommit` binary, the benches keep freed memory mapped
//! (`memcommit::malloc::keep_freed_memory`).
//!
//! `scripts/bench-summary.py` turns criterion's estimates into those ratios.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use memcommit::hash::{permutation, permute, permute_many, Digest, F, LANES};
use memcommit::image::MemoryImage;
use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::{self, Backend, TouchedBlock};
use p3_field::Field;
use p3_matrix::dense::RowMajorMatrix;
use p3_merkle_tree::MerkleTree;
use p3_symmetric::{PaddingFreeSponge, TruncatedPermutation};

/// One `field` address space of `2^log_leaves` blocks, cell `i` = `i · 7919 mod p`.
fn field_space(log_leaves: u32) -> (MemoryLayout, Vec<u32>) {
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::Field,
            num_cells: 8 << log_leaves,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("valid layout");
    let cells = (0..8u64 << log_leaves)
        .map(|i| (i * 7919 % 2013265921) as u32)
        .collect();
    (layout, cells)
}

fn image_of(layout: &MemoryLayout, cells: &[u32]) -> Arc<MemoryImage> {
    let mut image = MemoryImage::zeroed(layout).expect("image");
    let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_le_bytes()).collect();
    image.write(0, 0, &bytes).expect("write");
    Arc::new(image)
}

fn bench_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    let perm = permutation().clone();
    let hasher = PaddingFreeSponge::<_, 16, 8, 8>::new(perm.clone());
    let compressor = TruncatedPermutation::<_, 2, 8, 16>::new(perm);
    for log_leaves in [16u32, 18, 20, 22] {
        let (layout, cells) = field_space(log_leaves);
        let image = image_of(&layout, &cells);
        let matrix = RowMajorMatrix::new(cells.iter().map(|&c| F::new(c)).collect(), 8);
        group.throughput(Throughput::Elements(1 << log_leaves));
        for k in [0u32, 3] {
            group.bench_with_input(
                BenchmarkId::new(format!("memcommit_k{k}"), log_leaves),
                &k,
                |b, &k| {
                    b.iter(|| {
                        tree::build(Backend::Cpu, layout.clone(), image.clone(), k)
                            .expect("build")
                            .root()
                    })
                },
            );
        }
        group.bench_function(BenchmarkId::new("p3_merkle_tree", log_leaves), |b| {
            b.iter_batched(
                || matrix.clone(),
                |m| {
                    let t: MerkleTree<F, F, _, 2, 8> =
                        MerkleTree::new::<<F as Field>::Packing, <F as Field>::Packing, _, _>(
                            &hasher,
                            &compressor,
                            vec![m],
                        );
                    t.root()
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// `n` distinct pseudo-random blocks of a `2^log_leaves`-block field slot.
fn random_batch(log_leaves: u32, n: usize, seed: u64) -> Vec<TouchedBlock> {
    let mut state = seed;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let block = (state >> 20) % (1 << log_leaves);
        if seen.insert(block) {
            let v = (state >> 33) as u32 % 2013265921;
            out.push(TouchedBlock {
                slot: 0,
                block,
                cells: [v; 8],
            });
        }
    }
    out
}

fn bench_update(c: &mut Criterion) {
    updates(c, "update", &[1, 1024, 4096, 65536], false);
}

fn bench_update_witness(c: &mut Criterion) {
    updates(c, "update_witness", &[1, 1024, 65536], true);
}

/// Batches of `sizes` random blocks on a 2^20-leaf tree at k = 0 and 3, with their witness
/// or without.
fn updates(c: &mut Criterion, name: &str, sizes: &[usize], witness: bool) {
    memcommit::malloc::keep_freed_memory();
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    let log_leaves = 20;
    let (layout, cells) = field_space(log_leaves);
    let image = image_of(&layout, &cells);
    for k in [0u32, 3] {
        let mut tree = tree::build(Backend::Cpu, layout.clone(), image.clone(), k).expect("build");
        for &n in sizes {
            let batch = random_batch(log_leaves, n, n as u64);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new(format!("k{k}_2pow{log_leaves}"), n), |b| {
                b.iter(|| match witness {
                    true => tree.update_with_witness(black_box(&batch)).map(|w| w.0),
                    false => tree.update(black_box(&batch)),
                })
            });
        }
    }
    group.finish();
}

fn bench_perm(c: &mut Criterion) {
    let mut group = c.benchmark_group("perm");
    group.throughput(Throughput::Elements(1));
    let state: [F; 16] = core::array::from_fn(|i| F::new(i as u32));
    group.bench_function("scalar", |b| b.iter(|| permute(black_box(state))));
    let n = 64 * LANES;
    let mut out = vec![Digest::ZERO; n];
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("packed", |b| {
        b.iter(|| permute_many(&mut out, |i, s| s[0] = F::new(i as u32)))
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_perm,
    bench_build,
    bench_update,
    bench_update_witness
);
criterion_main!(benches);
