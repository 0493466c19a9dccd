//! Layer 4: the CUDA headers and kernel bodies, compiled for the host and driven through the
//! kernel emulator (`EmulatedDevice`), against p3's constants, the vectors and the reference
//! tree. Runs on every machine; no GPU or nvcc needed.

mod common;

use std::sync::Arc;

use common::random::{batch_from, layout, paged_batch_from, paged_layout};
use common::{device_cases, digest, four_spaces, image_with, u32s, vectors};
use memcommit::hash::{permute, F, P};
use memcommit::image::MemoryImage;
use memcommit::layout::{CellType, MemoryLayout};
use memcommit::tree::cuda::{index, probe, CudaTree, EmulatedDevice, SEED_VAR};
use memcommit::tree::{self, MemoryTree};
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
    // with few pages present; k below, at and above the page level (9) and above the
    // height. About 4 s in release on the 2-core machine.
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn emulated_cuda_tree_over_pages_equals_reference(
        layout in paged_layout(),
        k in prop_oneof![0u32..=8, 9u32..=12],
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
