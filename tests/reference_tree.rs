//! Layer 2: the reference tree against the layout vectors and against p3-merkle-tree.

mod common;

use std::sync::Arc;

use common::{digest, four_spaces, image_with, layout, vectors};
use memcommit::hash::{permutation, Digest, F};
use memcommit::image::MemoryImage;
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{verify_opening, MemoryTree};
use p3_field::Field;
use p3_matrix::dense::RowMajorMatrix;
use p3_merkle_tree::MerkleTree;
use p3_symmetric::{PaddingFreeSponge, TruncatedPermutation};

#[test]
fn four_spaces_vector() {
    let (layout, leaves, root) = four_spaces();
    let tree = ReferenceTree::build(layout.clone(), image_with(&layout, &leaves), 3);
    assert_eq!(tree.root(), root);
    // Every opening of a written leaf verifies against the vector root.
    let positions: Vec<_> = leaves.iter().map(|l| (l.slot, l.block)).collect();
    for o in tree.openings(&positions).expect("openings") {
        verify_opening(&root, &layout, &o).expect("opening verifies");
    }
}

#[test]
fn single_u8_space_vector() {
    let v = &vectors()["single_u8_space_1024_leaves"];
    let layout = layout(&v["layout"]);
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    let bytes: Vec<u8> = (0..8192u32).map(|k| (k % 256) as u8).collect();
    image.write(0, 0, &bytes).expect("write");
    let tree = ReferenceTree::build(layout, Arc::new(image), 0);
    assert_eq!(tree.root(), digest(&v["root"]));
}

fn field_space_2pow20() -> (Vec<u32>, Digest, memcommit::layout::MemoryLayout) {
    let v = &vectors()["single_field_space_2pow20_leaves"];
    let cells: Vec<u32> = (0..8u32 << 20).collect();
    (cells, digest(&v["root"]), layout(&v["layout"]))
}

#[test]
fn single_field_space_vector() {
    let (cells, root, layout) = field_space_2pow20();
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_le_bytes()).collect();
    image.write(0, 0, &bytes).expect("write");
    let tree = ReferenceTree::build(layout, Arc::new(image), 0);
    assert_eq!(tree.root(), root);
}

#[test]
fn p3_merkle_tree_gives_the_same_root() {
    // p3-merkle-tree over one width-8 matrix with PaddingFreeSponge<16,8,8> and
    // TruncatedPermutation<2,8,16> is our one-slot layout with field cells.
    let (cells, root, _) = field_space_2pow20();
    let perm = permutation().clone();
    let hasher = PaddingFreeSponge::<_, 16, 8, 8>::new(perm.clone());
    let compressor = TruncatedPermutation::<_, 2, 8, 16>::new(perm);
    let matrix = RowMajorMatrix::new(cells.iter().map(|&c| F::new(c)).collect(), 8);
    let tree: MerkleTree<F, F, _, 2, 8> = MerkleTree::new::<
        <F as Field>::Packing,
        <F as Field>::Packing,
        _,
        _,
    >(&hasher, &compressor, vec![matrix]);
    let p3_root: [F; 8] = tree.root().into();
    assert_eq!(Digest(p3_root), root);
}
