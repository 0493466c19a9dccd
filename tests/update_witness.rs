//! The update witness of the reference tree (docs/design.md, "Update witness"): rows in
//! order, consistent with both roots, and with the touched flags the batch implies; and
//! `check_witness` refuses a witness with any row changed.

mod common;

use std::collections::BTreeSet;

use common::random::{batch_from, layout, paged_batch_from, paged_layout};
use common::{check_witness_against_reference, four_spaces, image_with};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::witness::{check_witness, from_openings, WitnessRow};
use memcommit::tree::{Backend, MemoryTree, TouchedBlock};
use proptest::prelude::*;

fn block(slot: u32, block: u64, first: u32) -> TouchedBlock {
    TouchedBlock {
        slot,
        block,
        cells: [first, 2, 3, 4, 5, 6, 7, 8],
    }
}

#[test]
fn reference_witness_rows_chain_from_the_old_root_to_the_new() {
    let (layout, leaves, root) = four_spaces();
    let mut tree = ReferenceTree::build(layout.clone(), image_with(&layout, &leaves), 3);
    assert_eq!(tree.root(), root);
    let h = layout.address_space_height() + layout.address_height();
    assert_eq!(h, 13);
    // Two blocks sharing every ancestor but their parent's sibling, one in another slot, and
    // one rewritten with its own cells (touched, unchanged).
    let unchanged = leaves[0];
    let batch = vec![block(1, 6, 10), block(1, 7, 11), block(3, 0, 12), unchanged];
    let old_root = tree.root();
    let (new_root, rows) = tree.update_with_witness(&batch).expect("update");
    assert_eq!(new_root, tree.root());
    check_witness(&rows, h, &old_root, &new_root).expect("consistent");

    // One row per distinct ancestor of a touched leaf: by hand, the leaf positions'
    // ancestors at every height, as heap indices.
    let leaf =
        |b: &TouchedBlock| (1u64 << h) + ((b.slot as u64) << layout.address_height() | b.block);
    let expected: BTreeSet<(u32, u64)> = batch
        .iter()
        .flat_map(|b| (1..=h).map(move |l| (l, leaf(b) >> l)))
        .collect();
    let got: Vec<(u32, u64)> = rows.iter().map(|r| (r.height, r.index)).collect();
    assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
    // Blocks 6 and 7 of slot 1 are siblings: their parent has both children touched.
    let parent = leaf(&batch[0]) >> 1;
    let row = rows
        .iter()
        .find(|r| (r.height, r.index) == (1, parent))
        .expect("row");
    assert_eq!(row.touched, [true, true]);
    // The unchanged block's parent row: the block is touched, old and new equal.
    let row = rows
        .iter()
        .find(|r| (r.height, r.index) == (1, leaf(&unchanged) >> 1))
        .expect("row");
    let side = (leaf(&unchanged) & 1) as usize;
    assert!(row.touched[side]);
    assert_eq!(row.old[side], row.new[side]);
    // The root row: both halves of the top tree, old and new chain to the roots.
    assert_eq!(rows.last().map(|r| (r.height, r.index)), Some((h, 1)));

    // An empty batch: no rows, the same root.
    let (same, none) = tree.update_with_witness(&[]).expect("empty");
    assert_eq!((same, none.len()), (new_root, 0));
    check_witness(&none, h, &new_root, &new_root).expect("empty witness");
}

/// A change to a witness that `check_witness` must catch.
type Tamper<'a> = Box<dyn Fn(&mut Vec<WitnessRow>) + 'a>;

#[test]
fn check_witness_refuses_any_changed_row() {
    let (layout, leaves, _) = four_spaces();
    let mut tree = ReferenceTree::build(layout.clone(), image_with(&layout, &leaves), 3);
    let h = layout.address_space_height() + layout.address_height();
    let old_root = tree.root();
    let (new_root, rows) = tree
        .update_with_witness(&[block(0, 3, 9), block(2, 1, 7)])
        .expect("update");
    check_witness(&rows, h, &old_root, &new_root).expect("consistent");
    let tampered: Vec<(&str, Tamper)> = vec![
        (
            "old digest",
            Box::new(|r| r[3].old[0].0[0] += memcommit::hash::F::new(1)),
        ),
        (
            "new digest",
            Box::new(|r| r[0].new[1].0[7] += memcommit::hash::F::new(1)),
        ),
        (
            "touched flag",
            Box::new(|r| r[5].touched = [!r[5].touched[0], !r[5].touched[1]]),
        ),
        ("order", Box::new(|r| r.swap(0, 1))),
        (
            "a missing row",
            Box::new(|r| {
                r.remove(4);
            }),
        ),
        ("a duplicated row", Box::new(|r| r.insert(2, r[2]))),
        ("height", Box::new(|r| r[0].height = h + 1)),
    ];
    for (what, change) in tampered {
        let mut bad = rows.clone();
        change(&mut bad);
        assert!(
            check_witness(&bad, h, &old_root, &new_root).is_err(),
            "{what} was not caught"
        );
    }
    assert!(
        check_witness(&rows, h, &new_root, &old_root).is_err(),
        "swapped roots"
    );
    assert!(
        check_witness(&[], h, &old_root, &new_root).is_err(),
        "empty, roots differ"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The CPU tree's own witness equals the reference's row for row, on random paged
    /// layouts (tall sparse slots included), at k from 0 to 12 (above 9 a slot's base
    /// level lies above its pages and the CPU tree takes its openings-based path), over
    /// batches clustered in pages and scattered over absent ones.
    #[test]
    fn cpu_witness_equals_the_reference(
        layout in paged_layout(),
        k in prop_oneof![0u32..=4, 5u32..=12],
        image_seeds in prop::collection::vec(any::<u64>(), 0..16),
        batches in prop::collection::vec(prop::collection::vec(any::<u64>(), 0..24), 1..4),
    ) {
        let batches: Vec<_> = batches.iter().map(|s| paged_batch_from(&layout, s)).collect();
        check_witness_against_reference(
            |l, image, k| memcommit::tree::build(Backend::Cpu, l.clone(), image, k).expect("cpu build"),
            |t, b| t.update_with_witness(b),
            &layout, k, &paged_batch_from(&layout, &image_seeds), &batches,
        )?;
    }

    /// The generic witness (openings before and after the batch, what the CUDA backend
    /// uses) equals the reference's on the CPU tree, on random small layouts.
    #[test]
    fn openings_witness_equals_the_reference(
        layout in layout(),
        k in 0u32..=4,
        image_seeds in prop::collection::vec(any::<u64>(), 0..16),
        batches in prop::collection::vec(prop::collection::vec(any::<u64>(), 0..24), 1..4),
    ) {
        let batches: Vec<_> = batches.iter().map(|s| batch_from(&layout, s)).collect();
        check_witness_against_reference(
            |l, image, k| memcommit::tree::build(Backend::Cpu, l.clone(), image, k).expect("cpu build"),
            from_openings,
            &layout, k, &batch_from(&layout, &image_seeds), &batches,
        )?;
    }
}
