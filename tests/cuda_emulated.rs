//! Layer 4: the CUDA headers and kernel bodies, compiled for the host and driven through the
//! kernel emulator (`EmulatedDevice`), against p3's constants, the vectors and the reference
//! tree. Runs on every machine; no GPU or nvcc needed.

mod common;

use std::sync::Arc;

use common::random::{batch_from, layout, paged_batch_from, paged_layout};
use common::{device_cases, digest, four_spaces, image_with, u32s, vectors};
use memcommit::hash::{compress, leaf_hash, permute, Digest, F, P};
use memcommit::image::MemoryImage;
use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::cuda::{index, probe, CudaTree, Device, DevicePtr, EmulatedDevice, SEED_VAR};
use memcommit::tree::{self, MemoryTree, TouchedBlock};
use memcommit::Error;
use p3_baby_bear::{
    BABYBEAR_POSEIDON2_RC_16_EXTERNAL_FINAL, BABYBEAR_POSEIDON2_RC_16_EXTERNAL_INITIAL,
    BABYBEAR_POSEIDON2_RC_16_INTERNAL,
};
use p3_field::PrimeField32;
use proptest::prelude::*;

/// An emulated tree; prints the device's thread-order seed, which the test harness shows
/// when the test fails, so the failing order can be replayed with `MEMCOMMIT_EMU_SEED`.
fn emulated(layout: &MemoryLayout, image: Arc<MemoryImage>, k: u32) -> CudaTree<EmulatedDevice> {
    let device = EmulatedDevice::new();
    println!("emulated device: {SEED_VAR}={}", device.seed());
    CudaTree::build(device, layout.clone(), image, k).expect("emulated build")
}

#[test]
fn header_constants_equal_p3() {
    let canonical = |rows: &[[F; 16]; 4]| -> Vec<u32> {
        rows.iter()
            .flatten()
            .map(|x| x.as_canonical_u32())
            .collect()
    };
    let internal: Vec<u32> = BABYBEAR_POSEIDON2_RC_16_INTERNAL
        .iter()
        .map(|x| x.as_canonical_u32())
        .collect();
    let diagonal = u32s(&vectors()["internal_diagonal_canonical"]);
    for tables in [probe::header_constants(), probe::montgomery_tables()] {
        assert_eq!(
            tables.external_initial.to_vec(),
            canonical(&BABYBEAR_POSEIDON2_RC_16_EXTERNAL_INITIAL)
        );
        assert_eq!(
            tables.external_final.to_vec(),
            canonical(&BABYBEAR_POSEIDON2_RC_16_EXTERNAL_FINAL)
        );
        assert_eq!(tables.internal.to_vec(), internal);
        assert_eq!(tables.diagonal.to_vec(), diagonal);
    }
}

#[test]
fn task_structs_have_the_same_size_in_c_and_rust() {
    assert_eq!(probe::task_sizes(), probe::rust_task_sizes());
}

#[test]
fn field_multiply_matches_integer_arithmetic() {
    let p = u64::from(P);
    for (a, b) in [
        (0, 5),
        (1, P - 1),
        (P - 1, P - 1),
        (123_456_789, 987_654_321),
        (2, 1 << 30),
    ] {
        assert_eq!(
            u64::from(probe::mul(a, b)),
            u64::from(a) * u64::from(b) % p,
            "{a} * {b}"
        );
    }
}

#[test]
fn montgomery_words_read_back_as_canonical_values() {
    // The vector's Montgomery words of perm(0..15) are x * 2^32 mod p of its outputs.
    let v = vectors();
    let words: Vec<u32> = v["montgomery"]["perm_0_to_15_montgomery_hex"]
        .as_str()
        .expect("hex string")
        .split_whitespace()
        .map(|h| u32::from_str_radix(h, 16).expect("hex"))
        .collect();
    let canonical = u32s(&v["perm_0_to_15"]);
    for half in 0..2 {
        let w: [u32; 8] = words[8 * half..8 * half + 8].try_into().expect("8 words");
        let c: [u32; 8] = canonical[8 * half..8 * half + 8]
            .try_into()
            .expect("8 values");
        assert_eq!(probe::digest_from_montgomery(w).to_canonical(), c);
    }
}

#[test]
fn permutation_vectors() {
    let v = vectors();
    assert_eq!(
        probe::permute([0; 16]).expect("canonical").to_vec(),
        u32s(&v["perm_zero"])
    );
    assert_eq!(
        probe::permute(core::array::from_fn(|i| i as u32))
            .expect("canonical")
            .to_vec(),
        u32s(&v["perm_0_to_15"])
    );
    assert!(probe::permute([P; 16]).is_err());
}

#[test]
fn leaf_encoding_from_raw_bytes() {
    let v = vectors();
    let want = digest(&v["leaf_hash_0_to_7"]);
    // Cells 0..7 as u8, u16 and field, little-endian; block 1 of a two-block buffer.
    let u8s: Vec<u8> = (0..16u8).map(|i| i % 8).collect();
    let u16s: Vec<u8> = (0..16u16).flat_map(|i| (i % 8).to_le_bytes()).collect();
    let fields: Vec<u8> = (0..16u32).flat_map(|i| (i % 8).to_le_bytes()).collect();
    assert_eq!(
        probe::leaf_from_raw(&u8s, CellType::U8, 1).expect("u8"),
        want
    );
    assert_eq!(
        probe::leaf_from_raw(&u16s, CellType::U16, 1).expect("u16"),
        want
    );
    assert_eq!(
        probe::leaf_from_raw(&fields, CellType::Field, 1).expect("field"),
        want
    );
    // High bytes and p - 1 reach the right field elements.
    let cells = [255u32, 65535, P - 1, 1 << 30, 7, 0, 65280, 2];
    let raw: Vec<u8> = cells.iter().flat_map(|c| c.to_le_bytes()).collect();
    assert_eq!(
        probe::leaf_from_raw(&raw, CellType::Field, 0).expect("field"),
        memcommit::hash::leaf_hash(&cells.map(F::new))
    );
    let raw16: Vec<u8> = cells[..2]
        .iter()
        .chain(&[0, 65280, 1, 2, 3, 4])
        .flat_map(|&c| (c as u16).to_le_bytes())
        .collect();
    assert_eq!(
        probe::leaf_from_raw(&raw16, CellType::U16, 0).expect("u16"),
        memcommit::hash::leaf_hash(&[255, 65535, 0, 65280, 1, 2, 3, 4].map(F::new))
    );
    assert!(probe::leaf_from_raw(&raw, CellType::Field, 1).is_err());
    let bad: Vec<u8> = [P; 8].iter().flat_map(|c| c.to_le_bytes()).collect();
    assert!(probe::leaf_from_raw(&bad, CellType::Field, 0).is_err());
}

#[test]
fn zero_hash_vectors_through_the_zero_hash_kernel() {
    device_cases::zero_hash_vectors(&EmulatedDevice::new());
}

#[test]
fn index_arithmetic_equals_the_header() {
    for h in 0..=32u32 {
        for k in 0..=20u32 {
            let b = probe::stored_base_level(h, k);
            assert_eq!(b, tree::stored_base_level(h, k));
            for l in b..=h {
                assert_eq!(index::level_offset(h, b, l), probe::level_offset(h, b, l));
            }
            // A page's levels b..=q, level-major over one page, are the shape's digests.
            let shape = tree::SlotShape::new(h, k);
            if shape.pages_store_nodes() {
                let (q, b) = (shape.page_levels, shape.base);
                assert_eq!(
                    probe::level_offset(q, b, q) + 1,
                    shape.page_digests(),
                    "h {h} k {k}"
                );
            }
        }
    }
    for ash in 0..=16u32 {
        assert_eq!(index::top_digests(ash), probe::top_digests(ash));
        assert_eq!(probe::top_digests(ash), (2u64 << ash) - 1);
        for l in 0..=ash {
            assert_eq!(
                index::top_level_offset(ash, l),
                probe::top_level_offset(ash, l)
            );
        }
    }
    let (c, rust) = probe::absent_page();
    assert_eq!((c, rust), (u64::MAX, u64::MAX));
}

#[test]
fn four_spaces_vector_at_every_k() {
    device_cases::four_spaces_vector_at_every_k(emulated, |t, _| {
        let usage = t.memory_usage();
        assert_eq!(
            t.device().allocated_bytes(),
            usage.device_node_bytes + usage.device_raw_bytes.next_multiple_of(16),
            "only the node and raw arrays outlive a call (the emulator allocates 16-byte words)"
        );
    });
}

#[test]
fn single_u8_space_vector() {
    device_cases::single_u8_space_vector(emulated);
}

#[test]
fn updates_reach_the_four_spaces_root_from_zero() {
    device_cases::updates_reach_the_four_spaces_root_from_zero(emulated);
}

#[test]
fn openings_reject_positions_outside_the_layout() {
    let (layout, leaves, _) = four_spaces();
    let t = emulated(&layout, image_with(&layout, &leaves), 3);
    let err = t
        .openings(&[(0, 0), (2, 4)])
        .expect_err("block 4 of a 4-block slot");
    assert_eq!(
        err.to_string(),
        "invalid positions[1].block: block 4 is out of range (slot 2 has 4 blocks)"
    );
    assert!(t.openings(&[]).expect("no positions").is_empty());
}

#[test]
fn build_rejects_a_bad_k_or_image() {
    let (layout, leaves, _) = four_spaces();
    let image = image_with(&layout, &leaves);
    let err = CudaTree::build(EmulatedDevice::new(), layout.clone(), image, 21)
        .err()
        .expect("k = 21");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let other = common::layout(&vectors()["single_u8_space_1024_leaves"]["layout"]);
    let image = Arc::new(MemoryImage::zeroed(&other).expect("image"));
    assert!(CudaTree::build(EmulatedDevice::new(), layout, image, 3).is_err());
}

#[test]
fn openvm_layout_with_512_scattered_pages_costs_its_pages_on_the_device() {
    device_cases::openvm_layout_with_512_scattered_pages(emulated, &EMULATED);
}

#[test]
fn a_tall_slot_at_k_below_at_and_above_the_page_level_equals_the_cpu_tree() {
    device_cases::tall_slot_at_every_k(emulated);
}

/// The seeds the block-level tests run under: the environment's (or the default) and two
/// fixed ones.
fn seeds() -> Vec<EmulatedDevice> {
    vec![
        EmulatedDevice::new(),
        EmulatedDevice::with_seed(1),
        EmulatedDevice::with_seed(0xdead_beef),
    ]
}

#[test]
fn block_model_catches_a_shared_race_and_an_out_of_range_index() {
    for device in seeds() {
        let seed = format!("{SEED_VAR}={}", device.seed());
        device.run_block_check(0).expect("a sound two-phase block");
        for mode in [1, 2] {
            let err = device.run_block_check(mode).expect_err("a racy phase");
            let msg = err.to_string();
            assert!(matches!(err, Error::Unavailable(_)), "{msg}");
            for part in [
                "launch block_check",
                "block 0",
                "phase 0",
                "shared-memory race",
                "threads",
                &seed,
            ] {
                assert!(msg.contains(part), "mode {mode}: {msg:?} lacks {part:?}");
            }
        }
        let err = device.run_block_check(3).expect_err("an out-of-range word");
        let msg = err.to_string();
        assert!(matches!(err, Error::Unavailable(_)), "{msg}");
        for part in [
            "block 0",
            "phase 0",
            "thread 7",
            "shared word 256",
            "outside",
            &seed,
        ] {
            assert!(msg.contains(part), "{msg:?} lacks {part:?}");
        }
    }
}

/// A subtree launch folds at most 8 levels (MC_SUBTREE_LEVELS) and refuses one more.
#[test]
fn a_subtree_launch_folds_at_most_eight_levels() {
    assert_eq!(most_levels_per_launch(), 8);
}

fn most_levels_per_launch() -> u32 {
    let device = EmulatedDevice::new();
    let raw = device.alloc(8 << 9).expect("raw");
    let out = device.alloc(32).expect("out");
    // SAFETY: `raw` holds 2^9 u8 blocks and `out` one digest.
    let levels = (0..=9u32)
        .take_while(|&l| unsafe { device.build_base(raw, 0, l, out, 1) }.is_ok())
        .last()
        .expect("level 0 works");
    // SAFETY: allocated above, freed once.
    unsafe {
        device.free(raw);
        device.free(out);
    }
    levels
}

/// `n` u8 blocks of pseudo-random cells, as raw bytes and as leaves.
fn raw_blocks(n: usize, seed: u64) -> (Vec<u8>, Vec<Digest>) {
    let mut x = seed;
    let bytes: Vec<u8> = (0..8 * n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 56) as u8
        })
        .collect();
    let leaves = bytes
        .chunks_exact(8)
        .map(|b| leaf_hash(&core::array::from_fn(|i| F::new(u32::from(b[i])))))
        .collect();
    (bytes, leaves)
}

/// The root over `leaves` (a power of two of them).
fn fold(leaves: &[Digest]) -> Digest {
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|p| compress(&p[0], &p[1]))
            .collect();
    }
    level[0]
}

/// `count` digests from the device at `at`.
fn read_digests(device: &EmulatedDevice, at: DevicePtr, count: usize) -> Vec<Digest> {
    let mut bytes = vec![0u8; 32 * count];
    // SAFETY: the caller's buffer holds `count` digests at `at`.
    unsafe { device.copy_to_host(&mut bytes, at).expect("copy") };
    bytes
        .chunks_exact(32)
        .map(|d| {
            probe::digest_from_montgomery(core::array::from_fn(|i| {
                u32::from_le_bytes(d[4 * i..4 * i + 4].try_into().expect("4 bytes"))
            }))
        })
        .collect()
}

/// Uniform subtree launches (`build_base`) of 1, 255, 256 and 257 outputs and of subtrees
/// that do not fill a block, from raw blocks and from digests, equal the CPU's fold.
#[test]
fn uniform_subtree_launches_of_every_size_equal_the_cpu_fold() {
    const N: usize = 1 << 11;
    let (bytes, leaves) = raw_blocks(N, 7);
    for device in seeds() {
        let raw = device.alloc(bytes.len() as u64).expect("raw");
        let digests = device.alloc(32 * N as u64).expect("digests");
        let out = device.alloc(32 * 512).expect("out");
        // SAFETY: `raw` holds N blocks, `digests` N digests, `out` 512; every launch below
        // stays inside them (count << levels <= N, count <= 512).
        unsafe {
            device.copy_to_device(raw, &bytes).expect("upload");
            device
                .build_base(raw, 0, 0, digests, N as u64)
                .expect("leaves");
        }
        assert_eq!(read_digests(&device, digests, N), leaves, "leaf hashes");
        for (levels, count) in [
            (0, 1),
            (0, 255),
            (0, 256),
            (0, 257),
            (1, 3),
            (3, 37),
            (5, 9),
            (7, 3),
            (8, 1),
            (8, 3),
            (2, 257),
            (1, 511),
        ] {
            let want: Vec<Digest> = leaves
                .chunks_exact(1 << levels)
                .take(count)
                .map(fold)
                .collect();
            for (src, cell) in [(raw, 0), (digests, 3)] {
                let before = EmulatedDevice::permutations_on_this_thread();
                // SAFETY: as above.
                unsafe {
                    device
                        .build_base(src, cell, levels, out, count as u64)
                        .expect("launch")
                };
                let perms = EmulatedDevice::permutations_on_this_thread() - before;
                let leaf_perms = if cell == 0 { count << levels } else { 0 };
                assert_eq!(
                    perms as usize,
                    leaf_perms + count * ((1 << levels) - 1),
                    "levels {levels} count {count} cell {cell}"
                );
                assert_eq!(
                    read_digests(&device, out, count),
                    want,
                    "levels {levels} count {count} cell {cell}"
                );
            }
        }
        // SAFETY: one level more than a launch folds, and a source too short, are refused
        // before any thread runs.
        unsafe {
            assert!(device.build_base(raw, 0, 9, out, 1).is_err());
            assert!(device.build_base(raw, 0, 8, out, 9).is_err());
            device.free(raw);
            device.free(digests);
            device.free(out);
        }
    }
}

/// A `McHashTask` as its 32 bytes (tasks.h).
fn hash_task(
    out: u64,
    src: u64,
    first_thread: u64,
    cell: u32,
    levels: u16,
    to_fold: bool,
) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&out.to_le_bytes());
    b[8..16].copy_from_slice(&src.to_le_bytes());
    b[16..24].copy_from_slice(&first_thread.to_le_bytes());
    b[24..28].copy_from_slice(&cell.to_le_bytes());
    b[28..30].copy_from_slice(&levels.to_le_bytes());
    b[30..32].copy_from_slice(&u16::from(to_fold).to_le_bytes());
    b
}

/// Task-list subtree launches (`hash_tasks`) of 1, 255, 256 and 257 tasks of mixed heights,
/// from raw blocks into the node array and from fold digests into the fold scratch, equal
/// the CPU's fold; a malformed list is refused.
#[test]
fn task_list_subtree_launches_of_every_size_equal_the_cpu_fold() {
    const N: usize = 1 << 11;
    let (bytes, leaves) = raw_blocks(N, 11);
    for device in seeds() {
        let raw = device.alloc(bytes.len() as u64).expect("raw");
        let fold_buf = device.alloc(32 * (N as u64 + 300)).expect("fold");
        let nodes = device.alloc(32 * 300).expect("nodes");
        let tasks = device.alloc(32 * 300).expect("tasks");
        // SAFETY: sizes as allocated; leaves go to fold digests 0..N.
        unsafe {
            device.copy_to_device(raw, &bytes).expect("upload");
            device
                .build_base(raw, 0, 0, fold_buf, N as u64)
                .expect("leaves");
        }
        for (count, salt) in [(1usize, 3u64), (255, 5), (256, 9), (257, 13)] {
            // Heights 0..=8, tallest first; sources anywhere in the N blocks.
            let mut heights: Vec<u16> = (0..count as u64)
                .map(|i| ((i * 7 + salt) % 9) as u16)
                .collect();
            if count == 1 {
                heights = vec![8];
            }
            heights.sort_unstable_by(|a, b| b.cmp(a));
            for from_fold in [false, true] {
                let mut list = Vec::new();
                let mut want = Vec::new();
                let mut at = 0u64;
                for (i, &h) in heights.iter().enumerate() {
                    let first_leaf = ((i as u64 * 97 + salt) % (N as u64 >> h)) << h;
                    want.push(fold(&leaves[first_leaf as usize..][..1 << h]));
                    let (src, cell) = if from_fold {
                        (first_leaf, 3)
                    } else {
                        (8 * first_leaf, 0)
                    };
                    let out = if from_fold {
                        N as u64 + i as u64
                    } else {
                        i as u64
                    };
                    list.extend(hash_task(out, src, at, cell, h, from_fold));
                    at += 1 << h;
                }
                // SAFETY: every task's source and output lie in the buffers above.
                let got = unsafe {
                    device.copy_to_device(tasks, &list).expect("tasks");
                    device
                        .hash_tasks(
                            raw,
                            fold_buf,
                            nodes,
                            tasks,
                            count as u64,
                            at,
                            u32::from(heights[0]),
                        )
                        .expect("launch");
                    if from_fold {
                        read_digests(&device, fold_buf.digest(N as u64), count)
                    } else {
                        read_digests(&device, nodes, count)
                    }
                };
                assert_eq!(got, want, "{count} tasks, from fold {from_fold}");
            }
        }
        // A task not aligned to its width, and one starting inside the previous one.
        for bad in [
            [
                hash_task(0, 0, 1, 0, 1, false),
                hash_task(1, 0, 4, 0, 0, false),
            ],
            [
                hash_task(0, 0, 0, 0, 2, false),
                hash_task(1, 0, 3, 0, 0, false),
            ],
        ] {
            let list: Vec<u8> = bad.concat();
            // SAFETY: the list is checked before any thread runs.
            unsafe {
                device.copy_to_device(tasks, &list).expect("tasks");
                assert!(device
                    .hash_tasks(raw, fold_buf, nodes, tasks, 2, 8, 2)
                    .is_err());
            }
        }
        // SAFETY: allocated above, freed once.
        unsafe {
            for b in [raw, fold_buf, nodes, tasks] {
                device.free(b);
            }
        }
    }
}

/// A slot of 2^23 u8 blocks (sparse upper levels), one of 2^12 u16 blocks and a one-block
/// field slot, for omitted levels above the page level.
fn large_k_layout() -> MemoryLayout {
    MemoryLayout::new(LayoutSpec {
        address_spaces: vec![
            AddressSpace {
                cell: CellType::U8,
                num_cells: 1 << 26,
            },
            AddressSpace {
                cell: CellType::U16,
                num_cells: 1 << 15,
            },
            AddressSpace {
                cell: CellType::Field,
                num_cells: 8,
            },
        ],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout")
}

/// k = 13..=20: build, a one-block update, a batch creating pages, and openings (present and
/// absent pages) against the reference tree, with the permutation counts of
/// `memcommit::bench::count`.
#[test]
fn large_k_builds_updates_and_openings_equal_the_reference() {
    let layout = large_k_layout();
    let block = |slot, block, v| TouchedBlock {
        slot,
        block,
        cells: [v; 8],
    };
    let image = vec![
        block(0, 3, 1),
        block(0, 5 * 512 + 1, 2),
        block(0, (1 << 20) + 77, 3),
        block(0, (1 << 23) - 1, 4),
        block(1, 700, 5),
    ];
    let batches = vec![
        (
            vec![block(0, 3, 9)],
            None,
            vec![(0, 4), (0, 5 * 512), (1, 0)],
        ),
        (
            vec![
                block(0, 9 * 512, 6),
                block(0, (1 << 21) + 1, 7),
                block(1, 4095, 8),
                block(2, 0, 9),
            ],
            None,
            vec![(0, (1 << 20) + 76), (0, 1 << 22), (1, 1), (2, 0)],
        ),
        (vec![block(0, 5 * 512 + 1, 10)], Some(3), vec![(0, 5 * 512)]),
    ];
    for k in 13..=20 {
        device_cases::check_against_reference(
            emulated,
            &EMULATED,
            &layout,
            k,
            &image,
            batches.clone(),
        )
        .unwrap_or_else(|e| panic!("k = {k}: {e}"));
    }
}

/// Launch calls per build, update and openings on the large-k layout at several k: the
/// same under every thread order (the plan does not depend on it). Prints the figures.
#[test]
fn launch_calls_per_call_do_not_depend_on_the_thread_order() {
    let layout = large_k_layout();
    let block = |slot, block, v| TouchedBlock {
        slot,
        block,
        cells: [v; 8],
    };
    let image = image_with(
        &layout,
        &[block(0, 3, 1), block(0, 5 * 512 + 1, 2), block(1, 700, 5)],
    );
    let batch = vec![
        block(0, 3, 9),
        block(0, 9 * 512, 6),
        block(1, 4095, 8),
        block(2, 0, 9),
    ];
    let positions = [(0, 4), (0, 9 * 512 + 3), (1, 1), (2, 0)];
    for k in [0, 8, 9, 10, 13, 20] {
        let counts: Vec<[u64; 4]> = seeds()
            .into_iter()
            .map(|device| {
                let mut t =
                    CudaTree::build(device, layout.clone(), image.clone(), k).expect("build");
                let build = t.device().launch_calls();
                t.update(&batch).expect("update");
                let update = t.device().launch_calls() - build;
                t.update(&batch[..1]).expect("update");
                let one = t.device().launch_calls() - build - update;
                t.openings(&positions).expect("openings");
                let open = t.device().launch_calls() - build - update - one;
                [build, update, one, open]
            })
            .collect();
        println!(
            "k = {k}: launch calls [build, 4-block update, 1-block update, 4 openings] = {:?}",
            counts[0]
        );
        assert!(
            counts.iter().all(|c| *c == counts[0]),
            "k = {k}: {counts:?}"
        );
    }
}

/// The emulator's counters for the shared cases: it allocates 16-byte words and counts
/// host waits.
const EMULATED: device_cases::Extras<EmulatedDevice> = device_cases::Extras {
    stray_bytes: |t| {
        let usage = t.memory_usage();
        t.device().allocated_bytes()
            - usage.device_node_bytes
            - usage.device_raw_bytes.next_multiple_of(16)
    },
    host_syncs: |t| Some(t.device().host_syncs()),
    permutations: || Some(EmulatedDevice::permutations_on_this_thread()),
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn header_permutation_equals_p3(state in prop::array::uniform16(0u32..P)) {
        let want: Vec<u32> = permute(state.map(F::new)).iter().map(|x| x.as_canonical_u32()).collect();
        prop_assert_eq!(probe::permute(state).expect("canonical").to_vec(), want);
    }

    /// Small slots (at most one page each), k = 0..=6.
    #[test]
    fn emulated_cuda_tree_equals_reference(
        layout in layout(),
        k in 0u32..=6,
        image_seeds in prop::collection::vec(any::<u64>(), 0..40),
        batches in prop::collection::vec(
            (prop::collection::vec(any::<u64>(), 0..40), any::<bool>(), any::<u8>()), 1..5),
    ) {
        let batches = batches
            .into_iter()
            .map(|(seeds, invalid, how)| {
                // The touched blocks, plus a few untouched ones (siblings below k from raw
                // memory).
                let rotated: Vec<u64> = seeds.iter().map(|s| s.rotate_left(7)).collect();
                let extra = batch_from(&layout, &rotated).iter().take(3).map(|b| (b.slot, b.block)).collect();
                (batch_from(&layout, &seeds), invalid.then_some(how), extra)
            })
            .collect();
        device_cases::check_against_reference(emulated, &EMULATED, &layout, k, &batch_from(&layout, &image_seeds), batches)?;
    }
}

proptest! {
    // Slots of up to 2^12 blocks (8 pages) and of 2^21..2^23 blocks (sparse upper levels),
    // with few pages present; k below, at and above the page level (9), up to the maximum
    // (20) and above the height. About 4 s in release on the 2-core machine.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn emulated_cuda_tree_over_pages_equals_reference(
        layout in paged_layout(),
        k in prop_oneof![0u32..=8, 9u32..=12, 13u32..=20],
        image_seeds in prop::collection::vec(any::<u64>(), 0..16),
        batches in prop::collection::vec(
            (prop::collection::vec(any::<u64>(), 0..24), any::<u8>(), any::<u8>()), 1..4),
    ) {
        let batches = batches
            .into_iter()
            .map(|(seeds, invalid, how)| {
                let rotated: Vec<u64> = seeds.iter().map(|s| s.rotate_left(13)).collect();
                let extra = paged_batch_from(&layout, &rotated).iter().take(4).map(|b| (b.slot, b.block)).collect();
                // One batch in eight is corrupted.
                (paged_batch_from(&layout, &seeds), (invalid % 8 == 0).then_some(how), extra)
            })
            .collect();
        device_cases::check_against_reference(emulated, &EMULATED, &layout, k, &paged_batch_from(&layout, &image_seeds), batches)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The CUDA tree's witness (through the emulator) equals the reference's row for row on
    /// random paged layouts, at k from 0 to 12.
    #[test]
    fn emulated_cuda_witness_equals_reference(
        layout in paged_layout(),
        k in prop_oneof![0u32..=4, 5u32..=12],
        image_seeds in prop::collection::vec(any::<u64>(), 0..16),
        batches in prop::collection::vec(prop::collection::vec(any::<u64>(), 0..24), 1..4),
    ) {
        let batches: Vec<_> = batches.iter().map(|s| paged_batch_from(&layout, s)).collect();
        common::check_witness_against_reference(
            |l, image, k| Box::new(emulated(l, image, k)),
            |t, b| t.update_with_witness(b),
            &layout, k, &paged_batch_from(&layout, &image_seeds), &batches,
        )?;
    }
}

/// Field values at the edges of the header's arithmetic (issue 14): 0, 1, p − 1, p − 2, values
/// just under p (the largest canonical values, near 2^31), around 2^30 and (p ± 1)/2 (where
/// a doubled or halved word crosses p), and around 2^27 (the 2-adic part of p − 1). Each is
/// canonical; `probe` converts it to its Montgomery word, whose own edges the Montgomery
/// images of R and R² cover.
const FIELD_EDGES: [u32; 24] = [
    0,
    1,
    2,
    3,
    P - 1,
    P - 2,
    P - 3,
    P - (1 << 27),
    P - (1 << 27) - 1,
    (1 << 30) - 1,
    1 << 30,
    (1 << 30) + 1,
    // (p - 1) / 2, (p + 1) / 2 and (p + 3) / 2 (p is odd)
    P / 2,
    P / 2 + 1,
    P / 2 + 2,
    (1 << 27) - 1,
    1 << 27,
    (1 << 27) + 1,
    1 << 29,
    0x0fff_fffe, // R mod p: 1 in Montgomery form
    0x45dd_dde3, // R² mod p
    0x6000_0000,
    0x7777_7777,
    0x5555_5555,
];

#[test]
fn field_multiply_matches_integer_arithmetic_on_edge_values() {
    let p = u64::from(P);
    for &a in &FIELD_EDGES {
        for &b in &FIELD_EDGES {
            assert!(a < P && b < P);
            assert_eq!(
                u64::from(probe::mul(a, b)),
                u64::from(a) * u64::from(b) % p,
                "{a} * {b}"
            );
        }
    }
}

/// A state whose words are edge values three times in four, random canonical otherwise.
fn edgy_state() -> impl Strategy<Value = [u32; 16]> {
    prop::array::uniform16(prop_oneof![
        1 => 0u32..P,
        3 => prop::sample::select(FIELD_EDGES.to_vec()),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    /// The header permutation (min-based reductions, lazy S-box product, the internal layer's
    /// add/halve diagonal entries) equals p3's on states rich in edge values.
    #[test]
    fn header_permutation_equals_p3_on_edge_values(state in edgy_state()) {
        let want: Vec<u32> = permute(state.map(F::new)).iter().map(|x| x.as_canonical_u32()).collect();
        prop_assert_eq!(probe::permute(state).expect("canonical").to_vec(), want);
    }

    /// The header's Montgomery multiply equals u64 arithmetic mod p, edges included.
    #[test]
    fn field_multiply_equals_u64_arithmetic(
        a in prop_oneof![0u32..P, prop::sample::select(FIELD_EDGES.to_vec())],
        b in prop_oneof![0u32..P, prop::sample::select(FIELD_EDGES.to_vec())],
    ) {
        prop_assert_eq!(u64::from(probe::mul(a, b)), u64::from(a) * u64::from(b) % u64::from(P));
    }
}
