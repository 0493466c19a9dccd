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
