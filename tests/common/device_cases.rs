//! Cases that every `Device` behind `CudaTree` must pass, shared by the emulated
//! (`tests/cuda_emulated.rs`) and GPU (`tests/cuda_device.rs`) suites so both run the same
//! bodies. `build` makes a tree on the device under test.

use std::sync::Arc;

use memcommit::hash::{zero_hashes, Digest};
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::tree::cuda::{probe, CudaTree, Device};
use memcommit::tree::{self, verify_opening, MemoryTree};

use super::{digest, four_spaces, image_with, vectors};

/// Device node bytes of the dense device tree: every slot's levels and vertical path, the
/// top tree and the zero table (address_height + 1 digests).
pub fn expected_device_node_bytes(layout: &MemoryLayout, k: u32) -> u64 {
    let ah = layout.address_height();
    let slots: u64 = layout
        .address_spaces()
        .iter()
        .filter_map(|s| s.height())
        .map(|h| memcommit::tree::cuda::index::slot_digests(h, tree::stored_base_level(h, k), ah))
        .sum();
    let top = (1u64 << (layout.address_space_height() + 1)) - 1;
    32 * (slots + top + u64::from(ah) + 1)
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

/// The `four_spaces` root and node bytes at k = 0..=11; `check_memory` adds the device's
/// own raw-buffer and allocation checks.
pub fn four_spaces_vector_at_every_k<D: Device>(
    build: impl Fn(&MemoryLayout, Arc<MemoryImage>, u32) -> CudaTree<D>,
    check_memory: impl Fn(&CudaTree<D>, &MemoryLayout),
) {
    let (layout, leaves, root) = four_spaces();
    let image = image_with(&layout, &leaves);
    for k in 0..=11 {
        let t = build(&layout, image.clone(), k);
        assert_eq!(t.root(), root, "k = {k}");
        let usage = t.memory_usage();
        assert_eq!(
            usage.device_node_bytes,
            expected_device_node_bytes(&layout, k),
            "k = {k}"
        );
        assert_eq!(usage.host_raw_bytes, image.total_bytes());
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
