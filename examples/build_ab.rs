//! Build time of the CPU tree against p3-merkle-tree on the same leaves, alternating runs
//! and keeping the minimum: a quick A/B that holds up on a loaded machine when run with
//! RAYON_NUM_THREADS=1. Usage: build_ab [LOG_LEAVES] [ROUNDS]
use std::sync::Arc;
use std::time::Instant;

use memcommit::hash::{permutation, F};
use memcommit::image::MemoryImage;
use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::{self, Backend};
use p3_field::Field;
use p3_matrix::dense::RowMajorMatrix;
use p3_merkle_tree::MerkleTree;
use p3_symmetric::{PaddingFreeSponge, TruncatedPermutation};

fn main() {
    let mut args = std::env::args().skip(1);
    let log: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(18);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::Field,
            num_cells: 8 << log,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    let cells: Vec<u32> = (0..8u64 << log)
        .map(|i| (i * 7919 % 2013265921) as u32)
        .collect();
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_le_bytes()).collect();
    image.write(0, 0, &bytes).expect("write");
    let image = Arc::new(image);
    let perm = permutation().clone();
    let h = PaddingFreeSponge::<_, 16, 8, 8>::new(perm.clone());
    let c = TruncatedPermutation::<_, 2, 8, 16>::new(perm);
    let matrix = RowMajorMatrix::new(cells.iter().map(|&x| F::new(x)).collect(), 8);
    let (mut best_p3, mut best_k0, mut best_k3) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..rounds {
        let m = matrix.clone();
        let t = Instant::now();
        let tree: MerkleTree<F, F, _, 2, 8> =
            MerkleTree::new::<<F as Field>::Packing, <F as Field>::Packing, _, _>(&h, &c, vec![m]);
        best_p3 = best_p3.min(t.elapsed().as_secs_f64() * 1e3);
        drop(tree);
        for (k, best) in [(0, &mut best_k0), (3, &mut best_k3)] {
            let t = Instant::now();
            let ours = tree::build(Backend::Cpu, layout.clone(), image.clone(), k).expect("build");
            *best = best.min(t.elapsed().as_secs_f64() * 1e3);
            drop(ours);
        }
    }
    println!(
        "2^{log} leaves, min of {rounds}: p3 {best_p3:.1} ms, k0 {best_k0:.1} ms ({:.3}x), k3 {best_k3:.1} ms ({:.3}x)",
        best_p3 / best_k0,
        best_p3 / best_k3
    );
}
