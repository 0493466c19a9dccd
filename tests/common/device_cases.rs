//! Cases that every `Device` behind `CudaTree` must pass, shared by the emulated
//! (`tests/cuda_emulated.rs`) and GPU (`tests/cuda_device.rs`) suites so both run the same
//! bodies. `build` makes a tree on the device under test.

use std::sync::Arc;

use memcommit::bench::count;
use memcommit::hash::{zero_hashes, Digest};
use memcommit::image::MemoryImage;
use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::cpu::CpuTree;
use memcommit::tree::cuda::{probe, CudaTree, Device};
use memcommit::tree::reference::ReferenceTree;
use memcommit::tree::{self, verify_opening, Backend, MemoryTree, TouchedBlock};
use memcommit::Error;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::random::corrupt;
use super::{check_openings, digest, four_spaces, image_with, vectors};

/// What the device under test can report beyond the `Device` trait.
pub struct Extras<D: Device> {
    /// Device bytes allocated beyond the tree's node and raw arrays: 0 unless a call leaked
    /// a scratch buffer or a move to bigger arrays kept the old ones.
    pub stray_bytes: fn(&CudaTree<D>) -> u64,
    /// Host waits so far, when the device counts them.
    pub host_syncs: fn(&CudaTree<D>) -> Option<u64>,
    /// Permutations the device has run for calls made on this thread, when it counts them.
    pub permutations: fn() -> Option<u64>,
}

/// Device node bytes of the device tree over `image`'s present pages: the digests the shared
/// stored shape keeps (`tree::node_bytes`: each present page's levels, the upper levels'
/// dense arrays and the sparse nodes above present pages, vertical paths, the top tree)
/// plus the device's zero table (address_height + 1 digests).
pub fn expected_device_node_bytes(layout: &MemoryLayout, image: &MemoryImage, k: u32) -> u64 {
    tree::node_bytes(layout, image, k) + 32 * (u64::from(layout.address_height()) + 1)
}

/// The zero-hash kernel reproduces `zero_hashes_0_to_8` and `zero_hash_28`.
pub fn zero_hash_vectors<D: Device>(device: &D) {
    let v = vectors();
    let count = 29u32;
    let buf = device.alloc(32 * u64::from(count)).expect("alloc");
    let mut bytes = vec![0u8; 32 * count as usize];
    // SAFETY: `buf` holds `count` digests and is freed once, after the copy back (which
    // synchronises).
    unsafe {
        device.zero_hashes(buf, count).expect("launch");
        device.copy_to_host(&mut bytes, buf).expect("copy");
        device.free(buf);
    }
    let got: Vec<Digest> = bytes
        .chunks_exact(32)
        .map(|d| {
            probe::digest_from_montgomery(core::array::from_fn(|i| {
                u32::from_le_bytes(d[4 * i..4 * i + 4].try_into().expect("4 bytes"))
            }))
        })
        .collect();
    for (h, z) in v["zero_hashes_0_to_8"]
        .as_array()
        .expect("array")
        .iter()
        .enumerate()
    {
        assert_eq!(got[h], digest(z), "zero[{h}]");
    }
    assert_eq!(got[28], digest(&v["zero_hash_28"]));
    assert_eq!(&got[..], &zero_hashes()[..count as usize]);
}

/// The `four_spaces` root and node and raw bytes at k = 0..=11 (the by-hand figures at k = 0
/// and 3); `check_memory` adds the device's own allocation checks.
pub fn four_spaces_vector_at_every_k<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
    check_memory: impl Fn(&CudaTree<D>, &MemoryLayout),
) {
    let (layout, leaves, root) = four_spaces();
    let image = image_with(&layout, &leaves);
    // By hand (tests/cpu_vs_reference.rs spells the stored digests out: 1113 at k = 0, 189
    // at k = 3), plus the 11-digest zero table (address_height 10); raw: the 4 present
    // pages.
    assert_eq!(
        expected_device_node_bytes(&layout, &image, 0),
        (1113 + 11) * 32
    );
    assert_eq!(
        expected_device_node_bytes(&layout, &image, 3),
        (189 + 11) * 32
    );
    assert_eq!(image.total_bytes(), 128 * 2 + 512 * 16 + 32 + 64 * 4);
    for k in 0..=11 {
        let t = build(&layout, image.clone(), k);
        assert_eq!(t.root(), root, "k = {k}");
        let usage = t.memory_usage();
        assert_eq!(
            usage.device_node_bytes,
            expected_device_node_bytes(&layout, &image, k),
            "k = {k}"
        );
        assert_eq!(usage.host_raw_bytes, image.total_bytes());
        assert_eq!(usage.device_raw_bytes, image.total_bytes());
        check_memory(&t, &layout);
    }
}

/// The `single_u8_space_1024_leaves` root at k = 0, 3 and 10.
pub fn single_u8_space_vector<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
) {
    let v = &vectors()["single_u8_space_1024_leaves"];
    let layout = super::layout(&v["layout"]);
    let bytes: Vec<u8> = (0..8192u32).map(|k| (k % 256) as u8).collect();
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    image.write(0, 0, &bytes).expect("write");
    for k in [0, 3, 10] {
        let t = build(&layout, Arc::new(image.clone()), k);
        assert_eq!(t.root(), digest(&v["root"]), "k = {k}");
    }
}

/// From zero memory, an empty batch keeps the root and the vector's leaves as one batch
/// give its root, with verifying openings, at k = 0, 3 and 7.
pub fn updates_reach_the_four_spaces_root_from_zero<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
) {
    let (layout, leaves, root) = four_spaces();
    for k in [0, 3, 7] {
        let image = Arc::new(MemoryImage::zeroed(&layout).expect("image"));
        let mut t = build(&layout, image, k);
        assert_eq!(t.update(&[]).expect("empty batch"), t.root());
        assert_eq!(t.update(&leaves).expect("update"), root, "k = {k}");
        assert_eq!(t.image().block_cells(1, 1023), [9; 8]);
        for o in &t.openings(&[(3, 7), (1, 1023)]).expect("openings") {
            verify_opening(&root, &layout, o).expect("verifies");
        }
    }
}

/// xorshift64: a cheap deterministic stream for page numbers and contents.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Distinct ancestors at level `l` (> 9) of the sorted distinct page numbers `pages` (2^9
/// blocks each).
fn ancestors(pages: &[u64], l: u32) -> u64 {
    let mut up: Vec<u64> = pages.iter().map(|p| p >> (l - 9)).collect();
    up.dedup();
    up.len() as u64
}

/// Checks the device tree against the CPU tree: root, image, openings at `positions`.
fn assert_matches_cpu<D: Device>(
    layout: &MemoryLayout,
    dev: &CudaTree<D>,
    cpu: &CpuTree,
    positions: &[(u32, u64)],
    what: &str,
) {
    assert_eq!(dev.root(), cpu.root(), "{what}");
    assert_eq!(dev.image(), cpu.image(), "{what}");
    check_openings(layout, dev, cpu, positions);
}

/// OpenVM's default layout with 514 present pages (512 scattered in the 2^29-byte slot 1):
/// device bytes follow the pages (a by-hand formula), the root and openings equal the CPU
/// tree's, and so after a batch that creates 18 pages; the old arrays are freed, and the
/// batch waits for the device once (where it counts waits).
pub fn openvm_layout_with_512_scattered_pages<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
    extras: &Extras<D>,
) {
    // OpenVM's default layout (openvm-circuit 2.0.2 MemoryConfig::default()).
    let layout: MemoryLayout = serde_json::from_value(serde_json::json!({
        "address_spaces": [
            {"cell": "u8", "num_cells": 128},
            {"cell": "u8", "num_cells": 1u64 << 29},
            {"cell": "u8", "num_cells": 32},
            {"cell": "field", "num_cells": 1 << 14},
            {"cell": "field", "num_cells": 0},
            {"cell": "field", "num_cells": 0},
            {"cell": "field", "num_cells": 0},
            {"cell": "field", "num_cells": 0}
        ],
        "address_space_height": 3,
        "address_height": 26
    }))
    .expect("layout");
    assert_eq!(
        layout,
        memcommit::trace::lackey::openvm_layout().expect("openvm")
    );
    // 512 scattered 4 KiB pages of slot 1 (2^17 pages declared), random bytes; slot 0's one
    // page; one 16 KiB page of slot 3 (page 2 of 4); slot 2 absent.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut pages: Vec<u64> = Vec::new();
    while pages.len() < 512 {
        let p = next(&mut state) % (1 << 17);
        if !pages.contains(&p) {
            pages.push(p);
        }
    }
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    let mut bytes = vec![0u8; 4096];
    for &p in &pages {
        bytes.iter_mut().for_each(|b| *b = next(&mut state) as u8);
        image.write(1, p * 4096, &bytes).expect("slot 1");
    }
    image.write(0, 40, &[1, 2, 3]).expect("slot 0");
    let cells: Vec<u8> = (0..4096u32)
        .flat_map(|c| (c * 7919 % 65536).to_le_bytes())
        .collect();
    image.write(3, 2 * 16384, &cells).expect("slot 3");
    pages.sort_unstable();
    let image = Arc::new(image);
    assert_eq!(image.total_pages(), 514);

    // The stored digests by hand at k = 3 (q = 9): slot 1 (h = 26) stores 127 per page, its
    // sparse levels 10..=15 the pages' distinct ancestors, its dense levels 16..=26 2047;
    // slot 0 (h = 4, b = 3) 3 per page and a 22-node vertical path; slot 2 (h = 2, absent)
    // its 24-node path; slot 3 (h = 11) 127 per page, dense levels 10 and 11 (3) and a path
    // of 15; the top tree 15 and the device's zero table 27.
    let expected_nodes = |pages1: &[u64], pages0: u64, pages2: u64, pages3: u64| {
        let sparse: u64 = (10..=15).map(|l| ancestors(pages1, l)).sum();
        32 * (pages1.len() as u64 * 127
            + sparse
            + 2047
            + pages0 * 3
            + 22
            + pages2 * 7
            + 24
            + pages3 * 127
            + 3
            + 15
            + 15
            + 27)
    };
    let k = 3;
    let mut dev = build(&layout, image.clone(), k);
    let mut cpu = CpuTree::build(layout.clone(), image.clone(), k).expect("cpu");
    let usage = dev.memory_usage();
    assert_eq!(usage.device_node_bytes, expected_nodes(&pages, 1, 0, 1));
    assert_eq!(
        usage.device_node_bytes,
        tree::node_bytes(&layout, &image, k) + 27 * 32
    );
    assert_eq!(usage.device_raw_bytes, 512 * 4096 + 128 + 16384);
    // The dense device tree allocated slot 1's 2^24 − 1 digests (512 MiB) and its 2^29 raw
    // bytes whatever was present.
    assert!(usage.device_node_bytes + usage.device_raw_bytes < 5 << 20);
    println!(
        "openvm layout, 514 present pages: device node bytes {}, raw bytes {} (dense: {} + {})",
        usage.device_node_bytes,
        usage.device_raw_bytes,
        ((1u64 << 24) - 1 + 3 + 22 + 7 + 24 + (1 << 9) - 1 + 15 + 15 + 27) * 32,
        (1u64 << 29) + 128 + 32 + (1 << 16)
    );
    let mut positions: Vec<(u32, u64)> = vec![(1, pages[0] << 9), (1, (pages[7] << 9) + 511)];
    positions.extend([
        (1, 3),
        (1, (1 << 26) - 1),
        (2, 1),
        (0, 5),
        (3, 1000),
        (3, 2047),
    ]);
    assert_matches_cpu(&layout, &dev, &cpu, &positions, "build");

    // A batch creating pages: 48 blocks in absent pages of slot 1 (three per page, on 16
    // pages; pages 2^16 and 2^16 + 1 share all their sparse ancestors but level 10's
    // sibling), 16 in present pages, slot 2's page and slot 3's page 0.
    let mut batch = Vec::new();
    let mut new_pages: Vec<u64> = vec![1 << 16, (1 << 16) + 1, (1 << 17) - 1];
    while new_pages.len() < 16 {
        let p = next(&mut state) % (1 << 17);
        if pages.binary_search(&p).is_err() && !new_pages.contains(&p) {
            new_pages.push(p);
        }
    }
    for &p in &new_pages {
        for j in [0u64, 17, 511] {
            batch.push(TouchedBlock {
                slot: 1,
                block: (p << 9) + j,
                cells: core::array::from_fn(|_| (next(&mut state) % 256) as u32),
            });
        }
    }
    for &p in &pages[..16] {
        batch.push(TouchedBlock {
            slot: 1,
            block: (p << 9) + 100,
            cells: [255; 8],
        });
    }
    batch.push(TouchedBlock {
        slot: 2,
        block: 3,
        cells: [7; 8],
    });
    batch.push(TouchedBlock {
        slot: 3,
        block: 5,
        cells: [0x7800_0000; 8],
    });
    let syncs = (extras.host_syncs)(&dev);
    let root = dev.update(&batch).expect("device update");
    if let (Some(before), Some(after)) = (syncs, (extras.host_syncs)(&dev)) {
        assert_eq!(after, before + 1, "one host sync for the batch");
    }
    assert_eq!(root, cpu.update(&batch).expect("cpu update"));
    let mut all: Vec<u64> = pages.iter().chain(&new_pages).copied().collect();
    all.sort_unstable();
    let usage = dev.memory_usage();
    assert_eq!(dev.image().total_pages(), 514 + 18);
    assert_eq!(usage.device_node_bytes, expected_nodes(&all, 1, 1, 2));
    assert_eq!(usage.device_raw_bytes, 528 * 4096 + 128 + 32 + 2 * 16384);
    assert_eq!((extras.stray_bytes)(&dev), 0, "the old arrays are freed");
    positions.extend(batch.iter().step_by(5).map(|b| (b.slot, b.block)));
    positions.push((1, (new_pages[3] << 9) + 1));
    assert_matches_cpu(&layout, &dev, &cpu, &positions, "update creating pages");
    // A batch in present pages only moves nothing.
    let again: Vec<TouchedBlock> = batch
        .iter()
        .take(10)
        .map(|b| TouchedBlock {
            cells: [3; 8],
            ..*b
        })
        .collect();
    dev.update(&again).expect("device");
    cpu.update(&again).expect("cpu");
    assert_eq!(dev.memory_usage(), usage);
    assert_matches_cpu(&layout, &dev, &cpu, &positions, "update in place");
}

/// A 2^12-block slot (8 pages) and a 2^23-block one (sparse levels) at every k from 0 to 13
/// (below, at and above the page level 9, and above the first slot's height): build, a batch
/// creating pages, and openings in present and absent pages, against the CPU tree.
pub fn tall_slot_at_every_k<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
) {
    // Slot 0: 2^12 u16 blocks (h = 12, 8 pages of 2^9); slot 1: 2^23 u8 blocks (h = 23,
    // levels 10..=12 sparse); slot 2: one field block.
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![
            AddressSpace {
                cell: CellType::U16,
                num_cells: 1 << 15,
            },
            AddressSpace {
                cell: CellType::U8,
                num_cells: 1 << 26,
            },
            AddressSpace {
                cell: CellType::Field,
                num_cells: 8,
            },
        ],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    let block = |slot, block, v| TouchedBlock {
        slot,
        block,
        cells: [v; 8],
    };
    // Present: pages 0, 1, 3 and 7 of slot 0, pages 0, 5 and 2^13 + 9 of slot 1.
    let image = image_with(
        &layout,
        &[
            block(0, 0, 1),
            block(0, 700, 2),
            block(0, 3 * 512 + 9, 3),
            block(0, 4095, 4),
            block(1, 3, 5),
            block(1, 5 * 512, 6),
            block(1, ((1 << 13) + 9) * 512 + 77, 7),
        ],
    );
    // Creates slot 0's pages 2 and 6, slot 1's pages 4 and 3 · 2^12 (a new sparse subtree), and
    // slot 2's page; rewrites present pages.
    let batch = vec![
        block(0, 2 * 512 + 1, 8),
        block(0, 6 * 512, 9),
        block(0, 700, 10),
        block(1, 4 * 512 + 511, 11),
        block(1, (3 << 12) * 512, 12),
        block(1, 3, 13),
        block(2, 0, 14),
    ];
    let positions = [
        (0, 0),
        (0, 2 * 512 + 1),
        (0, 5 * 512 + 3),
        (0, 4095),
        (1, 4),
        (1, 6 * 512),
        (1, (3 << 12) * 512 + 1),
        (1, (1 << 23) - 1),
        (2, 0),
    ];
    for k in 0..=13 {
        let mut dev = build(&layout, image.clone(), k);
        let mut cpu = CpuTree::build(layout.clone(), image.clone(), k).expect("cpu");
        assert_matches_cpu(&layout, &dev, &cpu, &positions, &format!("build, k = {k}"));
        assert_eq!(
            dev.update(&batch).expect("device"),
            cpu.update(&batch).expect("cpu")
        );
        assert_matches_cpu(&layout, &dev, &cpu, &positions, &format!("update, k = {k}"));
        assert_eq!(
            dev.memory_usage().device_node_bytes,
            expected_device_node_bytes(&layout, dev.image(), k),
            "k = {k}"
        );
    }
}

/// Builds `layout` over `image_blocks` on the device under test and the reference, then runs
/// `batches` (`(blocks, Some(how))` is corrupted first and must be refused), checking after
/// every step the root, the image, the device bytes against the formula, that nothing but
/// the two arrays outlives a call, and openings at the touched blocks plus `extra`
/// positions (absent pages included); where the device counts them, one host sync per
/// applied batch and exactly the permutations `memcommit::bench::count` states for the
/// build, each batch and each set of openings.
#[allow(clippy::type_complexity)]
pub fn check_against_reference<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
    extras: &Extras<D>,
    layout: &MemoryLayout,
    k: u32,
    image_blocks: &[TouchedBlock],
    batches: Vec<(Vec<TouchedBlock>, Option<u8>, Vec<(u32, u64)>)>,
) -> Result<(), TestCaseError> {
    let image = image_with(layout, image_blocks);
    let perms = (extras.permutations)();
    let mut dev = build(layout, image.clone(), k);
    if let (Some(before), Some(after)) = (perms, (extras.permutations)()) {
        // The build, plus the zero table (a leaf hash and address_height compressions).
        prop_assert_eq!(
            after - before,
            count::build_permutations(layout, &image) + u64::from(layout.address_height()) + 1,
            "build permutations"
        );
    }
    let mut reference = ReferenceTree::build(layout.clone(), image, k);
    prop_assert_eq!(dev.root(), reference.root());
    let check_bytes = |dev: &CudaTree<D>| -> Result<(), TestCaseError> {
        let usage = dev.memory_usage();
        prop_assert_eq!(
            usage.device_node_bytes,
            expected_device_node_bytes(layout, dev.image(), k)
        );
        prop_assert_eq!(usage.device_raw_bytes, dev.image().total_bytes());
        prop_assert_eq!(
            (extras.stray_bytes)(dev),
            0,
            "only the two arrays outlive a call"
        );
        Ok(())
    };
    check_bytes(&dev)?;
    for (mut batch, corrupt_how, extra) in batches {
        if let (Some(how), false) = (corrupt_how, batch.is_empty()) {
            corrupt(layout, &mut batch, how);
            let before = dev.root();
            let image_before = dev.image().clone();
            let err = dev.update(&batch).expect_err("invalid batch rejected");
            prop_assert!(matches!(err, Error::InvalidArgument { .. }), "{}", err);
            prop_assert!(reference.update(&batch).is_err());
            prop_assert_eq!(dev.root(), before);
            prop_assert_eq!(dev.image(), &image_before);
            prop_assert_eq!(dev.image().total_pages(), image_before.total_pages());
            continue;
        }
        let syncs = (extras.host_syncs)(&dev);
        let perms = (extras.permutations)();
        let new_root = dev.update(&batch).expect("valid batch");
        if let (Some(before), Some(after), false) =
            (syncs, (extras.host_syncs)(&dev), batch.is_empty())
        {
            prop_assert_eq!(after, before + 1, "one host sync per batch");
        }
        if let (Some(before), Some(after)) = (perms, (extras.permutations)()) {
            prop_assert_eq!(
                after - before,
                count::update_permutations(layout, dev.image(), k, &batch),
                "update permutations"
            );
        }
        prop_assert_eq!(new_root, reference.update(&batch).expect("valid batch"));
        prop_assert_eq!(dev.root(), reference.root());
        prop_assert_eq!(dev.image(), reference.image());
        check_bytes(&dev)?;
        let mut positions: Vec<_> = batch.iter().map(|b| (b.slot, b.block)).collect();
        positions.extend(extra);
        let perms = (extras.permutations)();
        check_openings(layout, &dev, &reference, &positions);
        if let (Some(before), Some(after)) = (perms, (extras.permutations)()) {
            prop_assert_eq!(
                after - before,
                count::opening_permutations(Backend::Cuda, layout, dev.image(), k, &positions),
                "opening permutations"
            );
        }
    }
    Ok(())
}

/// xorshift64: a cheap deterministic stream for the launch-shape cases' images and cells.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// One slot of `2^log_blocks` u8 blocks, every block filled from `seed` (all pages present).
fn filled_u8_slot(log_blocks: u32, seed: u64) -> (MemoryLayout, Arc<MemoryImage>) {
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::U8,
            num_cells: 8 << log_blocks,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    let mut state = seed;
    let mut chunk = vec![0u8; 1 << 20];
    let bytes = 8u64 << log_blocks;
    for at in (0..bytes).step_by(chunk.len()) {
        let n = chunk.len().min((bytes - at) as usize);
        for w in chunk[..n].chunks_exact_mut(8) {
            w.copy_from_slice(&xorshift(&mut state).to_le_bytes());
        }
        image.write(0, at, &chunk[..n]).expect("fill slot 0");
    }
    (layout, Arc::new(image))
}

/// u8 cells of one block from the stream.
fn u8_cells(state: &mut u64) -> [u32; 8] {
    let v = xorshift(state).to_le_bytes();
    core::array::from_fn(|i| u32::from(v[i]))
}

/// Issue 14's repeat check: a dense batch (every block under 64 adjacent stored base nodes,
/// crossing a page boundary) and a second batch over the same blocks with other cells,
/// applied alternately `repeats` times on one device tree at k = 3. Each root must equal the
/// CPU tree's for that batch, so a launch that raced (a task reading a node another task of
/// the same launch writes) shows as a root that differs between repeats.
pub fn dense_batch_repeats<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
    repeats: usize,
) {
    let k = 3;
    let (layout, image) = filled_u8_slot(16, 0x243F_6A88_85A3_08D3);
    let mut dev = build(&layout, image.clone(), k);
    let mut cpu = CpuTree::build(layout.clone(), image, k).expect("cpu");
    assert_eq!(dev.root(), cpu.root(), "build");
    // 64 base nodes of 2^k blocks from block 8000: pages 15 and 16 (512 blocks a page).
    let first = 8000u64;
    let blocks = first..first + (64 << k);
    let mut state = 0x1319_8A2E_0370_7344u64;
    let batches: [Vec<TouchedBlock>; 2] = core::array::from_fn(|_| {
        blocks
            .clone()
            .map(|block| TouchedBlock {
                slot: 0,
                block,
                cells: u8_cells(&mut state),
            })
            .collect()
    });
    let expected: Vec<Digest> = batches
        .iter()
        .map(|b| cpu.update(b).expect("cpu"))
        .collect();
    assert_ne!(expected[0], expected[1]);
    for r in 0..repeats {
        let root = dev.update(&batches[r % 2]).expect("device update");
        assert_eq!(root, expected[r % 2], "repeat {r}");
    }
    let positions = [(0, first), (0, first + 511), (0, 0), (0, (1 << 16) - 1)];
    let cpu_now = CpuTree::build(layout.clone(), dev.image().clone(), k).expect("cpu");
    assert_matches_cpu(&layout, &dev, &cpu_now, &positions, "after the repeats");
}

/// Issue 14's launch sizes: for `n` in 1, 255, 256 and 257 (around the 256 threads of a CUDA
/// block), a batch of `n` blocks 2^11 apart in a 2^20-block slot with two pages present, so
/// the scatter, the base recomputes and every pair round below level 11 have exactly `n`
/// tasks and the batch creates about `n` pages; then `n` openings in one launch. At k = 0
/// and k = 3, against the CPU tree.
pub fn launch_counts<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
) {
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::U8,
            num_cells: 8 << 20,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    let image = image_with(
        &layout,
        &[
            TouchedBlock {
                slot: 0,
                block: 5,
                cells: [3; 8],
            },
            TouchedBlock {
                slot: 0,
                block: (1 << 20) - 1,
                cells: [4; 8],
            },
        ],
    );
    let mut state = 0xA409_3822_299F_31D0u64;
    for k in [0, 3] {
        for n in [1u64, 255, 256, 257] {
            let batch: Vec<TouchedBlock> = (0..n)
                .map(|i| TouchedBlock {
                    slot: 0,
                    block: (i << 11) + (xorshift(&mut state) & 511),
                    cells: u8_cells(&mut state),
                })
                .collect();
            let mut dev = build(&layout, image.clone(), k);
            let mut cpu = CpuTree::build(layout.clone(), image.clone(), k).expect("cpu");
            assert_eq!(
                dev.update(&batch).expect("device"),
                cpu.update(&batch).expect("cpu"),
                "k = {k}, n = {n}"
            );
            let positions: Vec<(u32, u64)> = batch.iter().map(|b| (b.slot, b.block)).collect();
            assert_matches_cpu(
                &layout,
                &dev,
                &cpu,
                &positions,
                &format!("k = {k}, n = {n}"),
            );
        }
    }
}

/// Issue 14's large-k case: a fully present slot of `2^log_blocks` u8 blocks at k = 20 (the
/// largest `omitted_levels`), built, then a one-block update and openings, against the CPU
/// tree. Returns the device's build and update times.
pub fn largest_k<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
    log_blocks: u32,
) -> (std::time::Duration, std::time::Duration) {
    let k = tree::MAX_OMITTED_LEVELS;
    assert_eq!(k, 20);
    let (layout, image) = filled_u8_slot(log_blocks, 0x0801_F2E2_858E_FC16);
    let started = std::time::Instant::now();
    let mut dev = build(&layout, image.clone(), k);
    let build_time = started.elapsed();
    let mut cpu = CpuTree::build(layout.clone(), image, k).expect("cpu");
    assert_eq!(dev.root(), cpu.root(), "build at k = 20");
    let last = (1u64 << log_blocks) - 1;
    let batch = [TouchedBlock {
        slot: 0,
        block: last - 77,
        cells: [200; 8],
    }];
    let started = std::time::Instant::now();
    let root = dev.update(&batch).expect("device update");
    let update_time = started.elapsed();
    assert_eq!(root, cpu.update(&batch).expect("cpu"), "update at k = 20");
    let positions = [(0, 0), (0, last - 77), (0, last)];
    assert_matches_cpu(&layout, &dev, &cpu, &positions, "k = 20");
    (build_time, update_time)
}
