//! Helpers shared by the integration tests: the vector file and layout/image builders.
#![allow(dead_code)]

pub mod device_cases;
pub mod random;

pub mod server;

use std::sync::Arc;

use memcommit::hash::Digest;
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::tree::TouchedBlock;
use serde_json::Value;

/// `tests/data/poseidon2_babybear16.json`, a copy of `shared/vectors`.
pub fn vectors() -> Value {
    let text = include_str!("../data/poseidon2_babybear16.json");
    serde_json::from_str(text).expect("vector file parses")
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("integer")).expect("u32"))
        .collect()
}

pub fn digest(v: &Value) -> Digest {
    let d: [u32; 8] = u32s(v).try_into().expect("8 elements");
    Digest::from_canonical(d).expect("canonical")
}

pub fn layout(v: &Value) -> MemoryLayout {
    serde_json::from_value(v.clone()).expect("layout parses")
}

/// The `four_spaces` vector's image: zero except its listed leaves.
pub fn four_spaces() -> (MemoryLayout, Vec<TouchedBlock>, Digest) {
    let v = &vectors()["four_spaces"];
    let leaves = v["leaves"]
        .as_array()
        .expect("leaves")
        .iter()
        .map(|l| TouchedBlock {
            slot: l["slot"].as_u64().expect("slot") as u32,
            block: l["block"].as_u64().expect("block"),
            cells: u32s(&l["cells"]).try_into().expect("8 cells"),
        })
        .collect();
    (layout(&v["layout"]), leaves, digest(&v["root"]))
}

/// An image of `layout` with `blocks` written into it.
pub fn image_with(layout: &MemoryLayout, blocks: &[TouchedBlock]) -> Arc<MemoryImage> {
    let mut image = MemoryImage::zeroed(layout).expect("image");
    image
        .write_blocks(blocks.iter().map(|b| (b.slot, b.block, &b.cells)))
        .expect("write");
    Arc::new(image)
}

/// Asserts that `tree` and `check` give equal openings at `positions`, and that each
/// verifies against `tree`'s root.
pub fn check_openings(
    layout: &MemoryLayout,
    tree: &dyn memcommit::tree::MemoryTree,
    check: &dyn memcommit::tree::MemoryTree,
    positions: &[(u32, u64)],
) {
    let a = tree
        .openings(positions)
        .expect("openings of the tree under test");
    let b = check
        .openings(positions)
        .expect("openings of the checking tree");
    assert_eq!(a, b);
    for o in &a {
        memcommit::tree::verify_opening(&tree.root(), layout, o).expect("opening verifies");
    }
}

/// Builds a tree with `build` and the reference over the image of `image_blocks`, then
/// applies each batch to both with its witness: the roots and the rows must be equal, and
/// the rows must pass `check_witness` from the old root to the new.
pub fn check_witness_against_reference<T: memcommit::tree::MemoryTree + ?Sized>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> Box<T>,
    witness: impl Fn(
        &mut T,
        &[TouchedBlock],
    ) -> memcommit::Result<(Digest, Vec<memcommit::tree::WitnessRow>)>,
    layout: &MemoryLayout,
    k: u32,
    image_blocks: &[TouchedBlock],
    batches: &[Vec<TouchedBlock>],
) -> Result<(), proptest::test_runner::TestCaseError> {
    use memcommit::tree::MemoryTree;
    let image = image_with(layout, image_blocks);
    let mut reference =
        memcommit::tree::reference::ReferenceTree::build(layout.clone(), image.clone(), k);
    let mut tree = build(layout, image, k);
    let h = layout.address_space_height() + layout.address_height();
    for batch in batches {
        let old = reference.root();
        proptest::prop_assert_eq!(tree.root(), old);
        let (want_root, want) = reference.update_with_witness(batch).expect("reference");
        let (root, rows) = witness(&mut tree, batch).expect("valid batch");
        proptest::prop_assert_eq!(root, want_root);
        proptest::prop_assert_eq!(rows.len(), want.len());
        proptest::prop_assert_eq!(
            memcommit::tree::witness::witness_rows(layout, batch),
            rows.len() as u64,
            "witness_rows"
        );
        if let Some(i) = (0..rows.len()).find(|&i| rows[i] != want[i]) {
            proptest::prop_assert_eq!(rows[i], want[i], "row {}", i);
        }
        if let Err(e) = memcommit::tree::witness::check_witness(&rows, h, &old, &root) {
            proptest::prop_assert!(false, "inconsistent witness: {}", e);
        }
    }
    Ok(())
}
