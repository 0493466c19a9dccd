//! A batch that fails part-way leaves the tree and its root unchanged (issue 5, faults).
//!
//! Failures are injected through `memcommit::tree::fault` (feature `fault-injection`, on
//! for tests through the self dev-dependency). The armed point is process-global, so every
//! test here holds `SERIAL` while it runs, and no other test binary arms it.

mod common;

use std::sync::{Arc, Mutex, MutexGuard};

use common::server::{err, start};
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::service::Limits;
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{self, fault, Backend, MemoryTree, Opening, TouchedBlock};
use memcommit::Error;
use tonic::Code;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Three slots of mixed types and heights (64, 8 and 128 blocks) and an empty one, with a
/// top tree of height 2.
fn layout() -> MemoryLayout {
    MemoryLayout::from_json(
        r#"{"address_spaces": [{"cell": "u8", "num_cells": 512}, {"cell": "field", "num_cells": 64},
            {"cell": "u8", "num_cells": 0}, {"cell": "u16", "num_cells": 1024}]}"#,
    )
    .expect("layout")
}

/// Every block position of `layout`.
fn all_positions(layout: &MemoryLayout) -> Vec<(u32, u64)> {
    layout
        .address_spaces()
        .iter()
        .enumerate()
        .flat_map(|(s, a)| (0..a.num_blocks()).map(move |b| (s as u32, b)))
        .collect()
}

/// `n` distinct blocks spread over slots 0, 1 and 3, with cells from `seed`.
fn batch(n: u64, seed: u32) -> Vec<TouchedBlock> {
    let mut out = Vec::new();
    for i in 0..n {
        let (slot, blocks) = [(0u32, 64u64), (1, 8), (3, 128)][(i % 3) as usize];
        let block = (i * 7 + u64::from(seed)) % blocks;
        if out
            .iter()
            .any(|b: &TouchedBlock| b.slot == slot && b.block == block)
        {
            continue;
        }
        out.push(TouchedBlock {
            slot,
            block,
            cells: std::array::from_fn(|j| (seed + i as u32 * 31 + j as u32) % 251),
        });
    }
    out
}

fn initial_image(layout: &MemoryLayout) -> Arc<MemoryImage> {
    let mut image = MemoryImage::zeroed(layout).expect("image");
    for b in batch(60, 3) {
        image.write_block(b.slot, b.block, &b.cells).expect("write");
    }
    Arc::new(image)
}

/// Root, image and every opening (which between them show every stored node).
fn snapshot(t: &dyn MemoryTree) -> (memcommit::hash::Digest, MemoryImage, Vec<Opening>) {
    (
        t.root(),
        (**t.image()).clone(),
        t.openings(&all_positions(t.layout())).expect("openings"),
    )
}

/// Fails `batch` on `t` at each fault point in turn (0, 1, 2, …), calling `after_failure`
/// after each failure, until the batch goes through. Returns the failures' messages (each an
/// injected fault) and the root the batch finally gave.
fn fail_at_every_point(
    t: &mut dyn MemoryTree,
    batch: &[TouchedBlock],
    mut after_failure: impl FnMut(&dyn MemoryTree, &str),
) -> (Vec<String>, memcommit::hash::Digest) {
    let mut failures = Vec::new();
    loop {
        fault::fail_at(failures.len() as u64);
        let fired = fault::fired();
        let r = t.update(batch);
        if fault::fired() == fired {
            fault::disarm();
            return (
                failures,
                r.expect("no fault left to hit: the batch applies"),
            );
        }
        match r {
            Err(Error::Unavailable(m)) => failures.push(m),
            other => panic!(
                "point {}: expected the injected fault, got {other:?}",
                failures.len()
            ),
        }
        after_failure(t, failures.last().map_or("", String::as_str));
    }
}

/// At every k of interest, fails the same batch at each fault point in turn (0, 1, 2, …)
/// and checks that each failure leaves root, image and every opening unchanged, until the
/// batch goes through; its root and openings must then be the reference's. The points
/// must include every stored level of each touched slot, each vertical path and every
/// top level.
#[test]
fn cpu_update_rolls_back_at_every_fault_point() {
    let _serial = serial();
    let layout = layout();
    let touched = batch(40, 11);
    let second = batch(25, 5);
    for k in [0u32, 2, 3, 7] {
        let mut t =
            tree::build(Backend::Cpu, layout.clone(), initial_image(&layout), k).expect("build");
        let mut reference = ReferenceTree::build(layout.clone(), initial_image(&layout), k);
        assert_eq!(t.root(), reference.root());
        let before = snapshot(t.as_ref());
        let (failures, root) = fail_at_every_point(t.as_mut(), &touched, |t, why| {
            assert!(
                snapshot(t) == before,
                "k = {k}: the failure at {why:?} changed the tree"
            );
        });
        assert_eq!(root, reference.update(&touched).expect("reference"));
        // Slots 0, 1 and 3 have heights 6, 3 and 7; a slot stores levels min(k, h)..=h
        // (0..=h when h <= k).
        let mut expected = vec!["injected fault at the raw image write".to_string()];
        for (slot, h) in [(0u32, 6u32), (1, 3), (3, 7)] {
            let base = if h > k { k } else { 0 };
            for l in base..=h {
                expected.push(format!("injected fault at slot {slot} level {l}"));
            }
            expected.push(format!("injected fault at slot {slot} vertical path"));
        }
        for l in 0..=layout.address_space_height() {
            expected.push(format!("injected fault at top level {l}"));
        }
        assert_eq!(failures, expected, "k = {k}: the fault points in order");
        // Still usable, and still the reference's tree.
        assert_eq!(
            t.update(&second).expect("later update"),
            reference.update(&second).expect("reference")
        );
        let positions = all_positions(&layout);
        assert_eq!(
            t.openings(&positions).expect("openings"),
            reference.openings(&positions).expect("reference openings")
        );
    }
}

/// `UpdateBlocks` that hits an injected fault fails with `UNAVAILABLE` naming the tree and
/// saying nothing was applied; `GetRoot` and `GetOpenings` still give the old tree, and the
/// next `UpdateBlocks` works and matches the reference.
#[test]
fn grpc_update_failing_part_way_leaves_the_tree_unchanged() {
    let _serial = serial();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut srv = start(Limits::default()).await;
        let c = &mut srv.client;
        let layout = layout();
        let id = c
            .create_tree(&layout, Some(2), Backend::Cpu)
            .await
            .expect("create")
            .tree_id;
        let image = initial_image(&layout);
        for slot in [0u32, 1, 3] {
            for (n, page) in image.pages(slot) {
                let offset = n * image.page_bytes(slot);
                c.write_memory(&id, slot, offset, image.page(slot, page))
                    .await
                    .expect("write");
            }
        }
        let mut reference = ReferenceTree::build(layout.clone(), image, 2);
        assert_eq!(c.build_tree(&id).await.expect("build"), reference.root());
        let positions = all_positions(&layout);
        let openings = c.get_openings(&id, &positions).await.expect("openings");

        // Point 2: slot 0's level 3, after the image and two levels have changed.
        fault::fail_at(2);
        let s = err(
            c.update_blocks(&id, &batch(30, 9), true).await,
            Code::Unavailable,
            &[
                &format!("tree {id}"),
                "the batch was not applied",
                "injected fault at slot 0 level 3",
            ],
        );
        fault::disarm();
        assert!(!s.message().contains("unavailable: unavailable"), "{s:?}");
        assert_eq!(c.get_root(&id).await.expect("root"), reference.root());
        assert_eq!(
            c.get_openings(&id, &positions).await.expect("openings"),
            openings
        );
        let info = c.list_trees().await.expect("list");
        assert_eq!(info[0].updates, 0, "a failed batch is not counted");

        let r = c
            .update_blocks(&id, &batch(30, 9), true)
            .await
            .expect("the next update works");
        assert_eq!(r.old_root, reference.root());
        assert_eq!(
            r.new_root,
            reference.update(&batch(30, 9)).expect("reference")
        );
        srv.stop().await;
    });
}

/// A batch that creates pages and fails at any of its fault points leaves the image (its
/// present pages included), every node, the root and the memory usage as before; the
/// batch then goes through and matches the reference. Covers k below, at and above the page
/// level (9), where the lowest stored level lies inside the pages or above them.
#[test]
fn cpu_rollback_removes_the_pages_a_failed_batch_created() {
    let _serial = serial();
    // 2^12 u8 blocks (8 pages) and 2^13 u16 blocks (16 pages).
    let layout = MemoryLayout::from_json(
        r#"{"address_spaces": [{"cell": "u8", "num_cells": 32768}, {"cell": "u16", "num_cells": 65536}]}"#,
    )
    .expect("layout");
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    image.write(0, 0, &[1; 4096]).expect("page 0 of slot 0");
    let image = Arc::new(image);
    // Blocks in absent pages of both slots, and one in the present page.
    let touched: Vec<TouchedBlock> = [
        (0u32, 5u64),
        (0, 3 * 512 + 1),
        (0, 7 * 512 + 511),
        (1, 2 * 512),
        (1, 15 * 512 + 3),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(slot, block))| TouchedBlock {
        slot,
        block,
        cells: [i as u32 + 2; 8],
    })
    .collect();
    // Every touched position, and a spread of others in present and absent pages.
    let mut positions: Vec<(u32, u64)> = touched.iter().map(|b| (b.slot, b.block)).collect();
    positions.extend((0..4096).step_by(37).map(|b| (0, b)));
    positions.extend((0..8192).step_by(101).map(|b| (1, b)));
    for k in [0u32, 3, 9, 10, 11] {
        let mut t = tree::build(Backend::Cpu, layout.clone(), image.clone(), k).expect("build");
        let mut reference = ReferenceTree::build(layout.clone(), image.clone(), k);
        assert_eq!(t.root(), reference.root(), "k = {k}");
        let before = (
            t.root(),
            (**t.image()).clone(),
            t.openings(&positions).expect("openings"),
        );
        let usage = t.memory_usage();
        let (failures, root) = fail_at_every_point(t.as_mut(), &touched, |t, why| {
            let now = (
                t.root(),
                (**t.image()).clone(),
                t.openings(&positions).expect("openings"),
            );
            assert!(
                now == before,
                "k = {k}: the failure at {why:?} changed the tree"
            );
            assert_eq!(t.image().total_pages(), 1, "k = {k}: created pages removed");
            assert_eq!(
                t.memory_usage(),
                usage,
                "k = {k}: nodes of created pages freed"
            );
        });
        assert_eq!(root, reference.update(&touched).expect("reference"));
        // The raw write; each stored level k..=h of both slots (h = 12 and 13), each then
        // followed by its vertical path (slot 0 has one node, slot 1 none, but the point is
        // there); the top tree's levels 0 and 1.
        assert_eq!(
            failures.len() as u32,
            1 + (13 - k) + 1 + (14 - k) + 1 + 2,
            "k = {k}: {failures:?}"
        );
        assert_eq!(t.image().total_pages(), 5, "k = {k}: 4 pages created");
        assert_eq!(
            t.openings(&positions).expect("openings"),
            reference.openings(&positions).expect("reference openings")
        );
    }
}
