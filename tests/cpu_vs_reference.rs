//! Layer 3: the CPU tree against the reference, for every `omitted_levels`, on random
//! layouts (mixed cell types, empty slots, small slots with vertical paths) and random
//! batches, invalid ones included.

mod common;

use std::sync::Arc;

use common::random::{batch_from, corrupt, layout, paged_layout};
use common::{check_openings, four_spaces, image_with};
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::tree::{self, verify_opening, Backend, TouchedBlock};
use memcommit::Error;
use proptest::prelude::*;

/// Builds the CPU and reference trees over the image `image_seeds` writes, applies the
/// batches (an invalid one must change nothing, present pages included), and compares
/// roots, images and openings at the touched positions and at `probe_seeds` positions
/// anywhere (absent pages included) after every batch.
fn cpu_matches_reference(
    layout: &MemoryLayout,
    k: u32,
    image_seeds: &[u64],
    batches: &[(Vec<u64>, bool, u8)],
    probe_seeds: &[u64],
) -> Result<(), TestCaseError> {
    let image = image_with(layout, &batch_from(layout, image_seeds));
    let mut cpu = tree::build(Backend::Cpu, layout.clone(), image.clone(), k).expect("cpu");
    let mut reference = tree::build(Backend::Reference, layout.clone(), image, k).expect("ref");
    prop_assert_eq!(cpu.root(), reference.root());
    for (seeds, invalid, how) in batches {
        let mut batch = batch_from(layout, seeds);
        if *invalid && !batch.is_empty() {
            corrupt(layout, &mut batch, *how);
            let before = cpu.root();
            let image_before = cpu.image().clone();
            let usage_before = cpu.memory_usage();
            let err = cpu.update(&batch).expect_err("invalid batch rejected");
            prop_assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
            prop_assert!(reference.update(&batch).is_err());
            prop_assert_eq!(cpu.root(), before);
            prop_assert_eq!(cpu.image(), &image_before);
            prop_assert_eq!(cpu.memory_usage(), usage_before);
            continue;
        }
        let new_root = cpu.update(&batch).expect("valid batch");
        prop_assert_eq!(new_root, reference.update(&batch).expect("valid batch"));
        prop_assert_eq!(cpu.root(), reference.root());
        prop_assert_eq!(cpu.image(), reference.image());
        let mut positions: Vec<_> = batch.iter().map(|b| (b.slot, b.block)).collect();
        positions.extend(
            batch_from(layout, probe_seeds)
                .iter()
                .map(|b| (b.slot, b.block)),
        );
        check_openings(layout, cpu.as_ref(), reference.as_ref(), &positions);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn cpu_tree_equals_reference(
        layout in layout(),
        k in 0u32..=6,
        image_seeds in prop::collection::vec(any::<u64>(), 0..40),
        batches in prop::collection::vec(
            (prop::collection::vec(any::<u64>(), 0..40), any::<bool>(), any::<u8>()), 1..6),
    ) {
        cpu_matches_reference(&layout, k, &image_seeds, &batches, &[])?;
    }

    /// Slots of several pages with few of them written (some tall enough for sparse upper
    /// levels): absent pages, pages that updates create, and k below, at and above the page
    /// level (9).
    #[test]
    fn cpu_tree_equals_reference_over_pages(
        layout in paged_layout(),
        k in prop_oneof![0u32..=3, 8u32..=12],
        image_seeds in prop::collection::vec(any::<u64>(), 0..6),
        batches in prop::collection::vec(
            (prop::collection::vec(any::<u64>(), 0..12), any::<bool>(), any::<u8>()), 1..5),
        probe_seeds in prop::collection::vec(any::<u64>(), 0..6),
    ) {
        cpu_matches_reference(&layout, k, &image_seeds, &batches, &probe_seeds)?;
    }
}

#[test]
fn four_spaces_vector_at_every_k() {
    let (layout, leaves, root) = four_spaces();
    let image = image_with(&layout, &leaves);
    for k in 0..=11 {
        let cpu = tree::build(Backend::Cpu, layout.clone(), image.clone(), k).expect("build");
        assert_eq!(cpu.root(), root, "k = {k}");
        // Stored digests match the docs/design.md formula for the present pages.
        assert_eq!(
            cpu.memory_usage().host_node_bytes,
            tree::node_bytes(&layout, &image, k),
            "k = {k}"
        );
        assert_eq!(cpu.memory_usage().host_raw_bytes, image.total_bytes());
    }
    // By hand. Present: slots 0, 2 and 3 (one page each) and page 1 of slot 1 (its block
    // 1023; page 0 is absent). Slot 0 (16 blocks, h=4): 31+6 → 3+6; slot 1 (h=10, 2 pages):
    // one page's 1023 → 127, plus its dense level 10 (1 digest); slots 2 and 3 (h ≤ 3)
    // stored in full, 7+8 and 15+7; top tree 15.
    assert_eq!(image.total_pages(), 4);
    assert_eq!(
        image.total_bytes(),
        128 * 2 + 512 * 16 + 32 + 64 * 4,
        "u16, u16, u8, field pages"
    );
    assert_eq!(tree::node_bytes(&layout, &image, 0), 1113 * 32);
    assert_eq!(tree::node_bytes(&layout, &image, 3), 189 * 32);
}

#[test]
fn updates_reach_the_four_spaces_root_from_zero() {
    // Building from zero memory and writing the vector's leaves as one batch gives its root.
    let (layout, leaves, root) = four_spaces();
    for k in [0, 3] {
        let image = Arc::new(MemoryImage::zeroed(&layout).expect("image"));
        let mut cpu = tree::build(Backend::Cpu, layout.clone(), image, k).expect("build");
        assert_eq!(cpu.update(&[]).expect("empty batch"), cpu.root());
        assert_eq!(cpu.update(&leaves).expect("update"), root, "k = {k}");
    }
}

#[test]
fn openings_reject_positions_outside_the_layout() {
    let (layout, leaves, _) = four_spaces();
    let cpu = tree::build(
        Backend::Cpu,
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("build");
    let err = cpu
        .openings(&[(0, 0), (2, 4)])
        .expect_err("block 4 of a 4-block slot");
    assert_eq!(
        err.to_string(),
        "invalid positions[1].block: block 4 is out of range (slot 2 has 4 blocks)"
    );
    let err = cpu.openings(&[(9, 0)]).expect_err("slot 9");
    assert!(err
        .to_string()
        .starts_with("invalid positions[0].slot: slot 9 does not exist"));
}

#[test]
fn tampered_opening_fails_verification() {
    let (layout, leaves, root) = four_spaces();
    let cpu = tree::build(
        Backend::Cpu,
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("build");
    let mut o = cpu.openings(&[(1, 1023)]).expect("opening").remove(0);
    assert_eq!(o.cells, [9; 8]);
    verify_opening(&root, &layout, &o).expect("genuine opening verifies");
    o.cells[0] = 8;
    assert!(verify_opening(&root, &layout, &o).is_err());
    o.cells[0] = 9;
    o.siblings.pop();
    let err = verify_opening(&root, &layout, &o).expect_err("short");
    assert!(err.to_string().contains("12 digests, expected"), "{err}");
}

#[test]
fn batch_errors_name_the_entry_and_value() {
    let (layout, _, _) = four_spaces();
    let ok = |slot, block| TouchedBlock {
        slot,
        block,
        cells: [1; 8],
    };
    let err = |batch: &[TouchedBlock]| {
        tree::validate_batch(&layout, batch)
            .expect_err("invalid")
            .to_string()
    };
    assert_eq!(
        err(&[ok(1, 3), ok(0, 2), ok(1, 4), ok(1, 3)]),
        "invalid blocks[3]: (slot 1, block 3) appears more than once in the batch (first at blocks[0])"
    );
    assert_eq!(
        err(&[ok(0, 0), ok(4, 0)]),
        "invalid blocks[1].slot: slot 4 does not exist (the layout has 4 address spaces)"
    );
    assert_eq!(
        err(&[ok(2, 4)]),
        "invalid blocks[0].block: block 4 is out of range (slot 2 has 4 blocks)"
    );
    let mut big = ok(2, 0);
    big.cells[5] = 256;
    assert_eq!(
        err(&[big]),
        "invalid blocks[0].cells[5]: 256 does not fit a u8 cell"
    );
    let mut p = ok(3, 0);
    p.cells[0] = 2013265921;
    assert_eq!(
        err(&[p]),
        "invalid blocks[0].cells[0]: 2013265921 is not a canonical BabyBear element (>= 2013265921)"
    );
    tree::validate_batch(&layout, &[ok(1, 3), ok(0, 3), ok(3, 7)]).expect("distinct");
}
