//! Exact permutation counts of a build and of an update batch, computed from the layout and the
//! batch the way the CPU and CUDA trees do the work (docs/design.md "The stored tree", Update),
//! so permutations per second need no instrumentation of the hot loops.
//!
//! One Poseidon2-16 permutation is one leaf hash (8 cells absorbed at rate 8) or one
//! 2-to-1 compression. Zero hashes of empty subtrees are precomputed once per process and
//! not counted.

use crate::image::MemoryImage;
use crate::layout::MemoryLayout;
use crate::tree::{block_key, Backend, SlotShape, TouchedBlock};

/// Permutations that hash one present page from raw memory to its root (level `q`):
/// `2^q` leaf hashes and `2^q − 1` compressions.
fn page_cost(s: &SlotShape) -> u64 {
    (2u64 << s.page_levels) - 1
}

/// Present page numbers of `slot` in `first .. first + count`.
fn present(image: &MemoryImage, slot: u32, first: u64, count: u64) -> Vec<u64> {
    image
        .pages_in(slot, first..first.saturating_add(count))
        .map(|(n, _)| n)
        .collect()
}

/// Permutations of a build over `image`'s present pages: for each non-empty slot, every
/// present page hashed to its root ([`page_cost`]), one compression per distinct ancestor
/// of the present pages up to the slot's height `h`, and `address_height − h` on its
/// vertical path; plus `2^address_space_height − 1` in the top tree. The same for every
/// `omitted_levels` (k only changes what is stored). A fully present slot costs the dense
/// tree's `2^(h+1) − 1`.
pub fn build_permutations(layout: &MemoryLayout, image: &MemoryImage) -> u64 {
    let ah = layout.address_height();
    let slots: u64 = (0..layout.address_spaces().len())
        .filter_map(|slot| {
            let s = SlotShape::of(layout, slot, 0)?;
            let mut pages: Vec<u64> = image.pages(slot as u32).map(|(n, _)| n).collect();
            Some(
                pages.len() as u64 * page_cost(&s)
                    + distinct_ancestors(&mut pages, s.height - s.page_levels)
                    + u64::from(ah - s.height),
            )
        })
        .sum();
    slots + (1u64 << layout.address_space_height()) - 1
}

/// Permutations of one (valid) update batch at `omitted_levels = k`, with `image` the
/// image after the batch. Per touched slot with shape `h`, `b`, `q` ([`SlotShape`]): each
/// distinct level-`b` ancestor is recomputed from raw memory, which costs `2^(b+1) − 1`
/// when `b ≤ q`, and when `b > q` its present pages' [`page_cost`] plus one compression per
/// distinct ancestor of them up to `b`; each level `b+1..=h` costs one compression per
/// distinct ancestor; the vertical path costs `address_height − h`. The top tree costs one
/// compression per distinct ancestor of the touched slots at levels `1..=address_space_height`.
/// Repeated blocks count once; an empty batch costs 0.
pub fn update_permutations(
    layout: &MemoryLayout,
    image: &MemoryImage,
    k: u32,
    blocks: &[TouchedBlock],
) -> u64 {
    if blocks.is_empty() {
        return 0;
    }
    let ah = layout.address_height();
    let mut keys: Vec<u64> = blocks.iter().map(block_key).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut total = 0u64;
    let mut slots = Vec::new();
    for group in keys.chunk_by(|a, b| a >> 32 == b >> 32) {
        let slot = (group[0] >> 32) as u32;
        slots.push(u64::from(slot));
        let Some(s) = SlotShape::of(layout, slot as usize, k) else {
            continue;
        };
        let b = s.base;
        let mut dirty: Vec<u64> = group.iter().map(|key| (key & 0xffff_ffff) >> b).collect();
        dirty.dedup();
        if s.pages_store_nodes() {
            total += dirty.len() as u64 * ((2u64 << b) - 1);
        } else {
            let span = 1u64 << (b - s.page_levels);
            for &i in &dirty {
                let mut pages = present(image, slot, i * span, span);
                total += pages.len() as u64 * page_cost(&s)
                    + distinct_ancestors(&mut pages, b - s.page_levels);
            }
        }
        total += distinct_ancestors(&mut dirty, s.height - b);
        total += u64::from(ah - s.height);
    }
    total + distinct_ancestors(&mut slots, layout.address_space_height())
}

/// Permutations the CPU tree's witness adds to an update batch
/// ([`crate::tree::MemoryTree::update_with_witness`]): in each touched slot stored from
/// level `b > 0` (with `b` at most the page levels), a leaf hash of every touched block's
/// old cells and one compression per distinct ancestor at levels `1..b` (the old nodes
/// below the stored base level, folded up from the old leaves). Nothing at `k = 0`, where
/// every old node is stored. A slot with `b` above its page levels takes the generic
/// witness, two openings per block, which this does not count.
pub fn witness_permutations(layout: &MemoryLayout, k: u32, blocks: &[TouchedBlock]) -> u64 {
    touched_slots(layout, k, blocks)
        .filter(|(s, _)| s.base > 0 && s.pages_store_nodes())
        .map(|(s, mut nodes)| nodes.len() as u64 + distinct_ancestors(&mut nodes, s.base - 1))
        .sum()
}

/// The update's own permutations below the stored base level: `2^(b+1) − 1` per distinct
/// level-`b` ancestor of the touched blocks, in slots whose pages store nodes. The witness
/// recomputes the old side of these at most once, so [`witness_permutations`] stays under
/// this (docs/design.md, "Update witness").
pub fn below_base_permutations(layout: &MemoryLayout, k: u32, blocks: &[TouchedBlock]) -> u64 {
    touched_slots(layout, k, blocks)
        .filter(|(s, _)| s.pages_store_nodes())
        .map(|(s, nodes)| {
            let mut roots: Vec<u64> = nodes.iter().map(|i| i >> s.base).collect();
            roots.dedup();
            roots.len() as u64 * ((2u64 << s.base) - 1)
        })
        .sum()
}

/// Each non-empty touched slot's shape at `k` with its sorted distinct touched blocks.
fn touched_slots<'a>(
    layout: &'a MemoryLayout,
    k: u32,
    blocks: &[TouchedBlock],
) -> impl Iterator<Item = (SlotShape, Vec<u64>)> + 'a {
    let mut keys: Vec<u64> = blocks.iter().map(block_key).collect();
    keys.sort_unstable();
    keys.dedup();
    let groups: Vec<Vec<u64>> = keys
        .chunk_by(|a, b| a >> 32 == b >> 32)
        .map(<[u64]>::to_vec)
        .collect();
    groups.into_iter().filter_map(move |group| {
        let shape = SlotShape::of(layout, (group[0] >> 32) as usize, k)?;
        Some((shape, group.iter().map(|key| key & 0xffff_ffff).collect()))
    })
}

/// Permutations of openings at (valid) `positions` at `omitted_levels = k` on `backend`:
/// only the siblings below a slot's stored base level `b` are hashed, from raw memory, and
/// nothing in an absent page. Below the page level, with `m = min(b, q)`: the CPU tree
/// hashes the `2^m` blocks under the block's level-`m` ancestor and folds them
/// (`2^(m+1) − 1`, so 1 at `m = 0`); the CUDA tree hashes each sibling subtree of height
/// `l < m` as its own subtree task (`Σ 2^(l+1) − 1 = 2^(m+1) − 2 − m`). When `b > q` both also compute each
/// sibling at levels `q..b` from its present pages (their roots, then one compression per
/// distinct ancestor), per opening. The reference tree stores every node (0).
pub fn opening_permutations(
    backend: Backend,
    layout: &MemoryLayout,
    image: &MemoryImage,
    k: u32,
    positions: &[(u32, u64)],
) -> u64 {
    positions
        .iter()
        .filter_map(|&(slot, block)| {
            let s = SlotShape::of(layout, slot as usize, k)?;
            let b = s.base;
            let q = s.page_levels;
            let page = image.page_id(slot, block >> q).is_some();
            let m = b.min(q);
            let above = || -> u64 {
                (q..b.max(q))
                    .map(|l| {
                        let span = 1u64 << (l - q);
                        let mut pages = present(image, slot, ((block >> l) ^ 1) * span, span);
                        pages.len() as u64 * page_cost(&s) + distinct_ancestors(&mut pages, l - q)
                    })
                    .sum()
            };
            Some(match backend {
                Backend::Cpu | Backend::Auto => {
                    let own = if page { (2u64 << m) - 1 } else { 0 };
                    own + above()
                }
                Backend::Cuda => {
                    let own = if page {
                        (2u64 << m) - 2 - u64::from(m)
                    } else {
                        0
                    };
                    own + above()
                }
                Backend::Reference => 0,
            })
        })
        .sum()
}

/// Sum over `levels` rounds of halving the sorted indices of the distinct parents.
fn distinct_ancestors(sorted: &mut Vec<u64>, levels: u32) -> u64 {
    let mut total = 0;
    for _ in 0..levels {
        for i in sorted.iter_mut() {
            *i >>= 1;
        }
        sorted.dedup();
        total += sorted.len() as u64;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{AddressSpace, CellType, LayoutSpec};

    fn layout(num_cells: &[u64], ash: Option<u32>, ah: Option<u32>) -> MemoryLayout {
        MemoryLayout::new(LayoutSpec {
            address_spaces: num_cells
                .iter()
                .map(|&n| AddressSpace {
                    cell: CellType::U8,
                    num_cells: n,
                })
                .collect(),
            address_space_height: ash,
            address_height: ah,
        })
        .unwrap()
    }

    /// Every slot of `l` written: every page present.
    fn full(l: &MemoryLayout) -> MemoryImage {
        let mut image = MemoryImage::zeroed(l).unwrap();
        for (slot, space) in l.address_spaces().iter().enumerate() {
            image
                .write(slot as u32, 0, &vec![1; space.raw_bytes() as usize])
                .unwrap();
        }
        image
    }

    fn touched(slot: u32, block: u64) -> TouchedBlock {
        TouchedBlock {
            slot,
            block,
            cells: [0; 8],
        }
    }

    #[test]
    fn build_is_two_leaves_minus_one_plus_paths_and_top() {
        // One slot of 2^10 blocks, no padding: 2·1024 − 1.
        let l = layout(&[8 << 10], None, None);
        assert_eq!(build_permutations(&l, &full(&l)), 2047);
        // Slots of 2^3 and 2^1 blocks under address_height 4 and a top tree of height 2:
        // (15 + 1) + (3 + 3) + empty slot 0 + top 3.
        let l = layout(&[64, 16, 0], Some(2), Some(4));
        assert_eq!(build_permutations(&l, &full(&l)), 16 + 6 + 3);
    }

    #[test]
    fn a_build_costs_its_present_pages() {
        // 2^16 blocks (h = 16, 128 pages of 2^9): nothing present costs the vertical path
        // (none here) and the top tree (none); pages 0 and 127 cost 1023 each plus their
        // 7 + 6 distinct ancestors (they meet only at the root).
        let l = layout(&[8 << 16], None, None);
        let mut image = MemoryImage::zeroed(&l).unwrap();
        assert_eq!(build_permutations(&l, &image), 0);
        image.write(0, 0, &[1]).unwrap();
        image.write(0, 127 * 4096, &[1]).unwrap();
        assert_eq!(build_permutations(&l, &image), 2 * 1023 + 7 + 6);
    }

    #[test]
    fn witness_counts_old_leaves_and_their_ancestors_below_k() {
        let l = layout(&[8 << 10], None, None); // h = 10, q = 9
        let blocks = [touched(0, 0), touched(0, 1), touched(0, 9)];
        // k = 0: every old node is logged.
        assert_eq!(witness_permutations(&l, 0, &blocks), 0);
        // k = 3: 3 old leaves, level 1 {0, 4}, level 2 {0, 2}.
        assert_eq!(witness_permutations(&l, 3, &blocks), 3 + 2 + 2);
        // The update's own count below k = 3: level-3 nodes {0, 1}, 15 each.
        assert_eq!(below_base_permutations(&l, 3, &blocks), 30);
        // k = 10 > q: the generic witness, not counted.
        let l11 = layout(&[8 << 11], None, None);
        assert_eq!(witness_permutations(&l11, 10, &blocks), 0);
        assert_eq!(below_base_permutations(&l11, 10, &blocks), 0);
    }

    #[test]
    fn update_counts_distinct_nodes() {
        let l = layout(&[8 << 10], None, None); // h = 10, no top tree
        let img = full(&l);
        let update_permutations = |k, b: &[TouchedBlock]| update_permutations(&l, &img, k, b);
        assert_eq!(update_permutations(3, &[]), 0);
        // One block at k = 0: 1 leaf + 10 compressions.
        assert_eq!(update_permutations(0, &[touched(0, 5)]), 11);
        // One block at k = 3: 15 to rebuild its level-3 node, then 7 levels.
        assert_eq!(update_permutations(3, &[touched(0, 5)]), 15 + 7);
        // Blocks 0 and 1 share every ancestor: 2 leaves + 10 compressions at k = 0, and
        // one level-3 node at k = 3.
        let pair = [touched(0, 0), touched(0, 1)];
        assert_eq!(update_permutations(0, &pair), 12);
        assert_eq!(update_permutations(3, &pair), 22);
        // Blocks 0 and 1023 meet only at the root: 2·11 − 1.
        let far = [touched(0, 0), touched(0, 1023)];
        assert_eq!(update_permutations(0, &far), 21);
        // h = 11 and k = 10 > q = 9: the level-10 node is rebuilt from its two present
        // pages (1023 each + 1), then the root (1).
        let l11 = layout(&[8 << 11], None, None);
        let img11 = full(&l11);
        assert_eq!(
            super::update_permutations(&l11, &img11, 10, &[touched(0, 5)]),
            2048
        );
    }

    #[test]
    fn openings_hash_below_the_stored_base() {
        // h = 10: at k = 3 the CPU hashes 8 leaves and 7 compressions per opening, a CUDA
        // thread the subtrees of heights 0, 1, 2 (1 + 3 + 7); at k = 0 the CPU hashes the
        // block's own leaf and CUDA nothing.
        let l = layout(&[8 << 10], None, None);
        let img = full(&l);
        let two = [(0, 5), (0, 6)];
        let count = |backend, k| opening_permutations(backend, &l, &img, k, &two);
        assert_eq!(count(Backend::Cpu, 3), 30);
        assert_eq!(count(Backend::Cuda, 3), 22);
        assert_eq!(count(Backend::Cpu, 0), 2);
        assert_eq!(count(Backend::Cuda, 0), 0);
        assert_eq!(count(Backend::Reference, 3), 0);
        // h = 11 and k = 10 > q = 9: the own page (1023), then the sibling page at level 9
        // (1023).
        let l11 = layout(&[8 << 11], None, None);
        let img11 = full(&l11);
        assert_eq!(
            opening_permutations(Backend::Cpu, &l11, &img11, 10, &two),
            2 * 2046
        );
        // The CUDA tree hashes the sibling subtrees of heights 0..9 inside the page
        // (2^10 − 2 − 9 = 1013), then folds the sibling page like the CPU (1023).
        assert_eq!(
            opening_permutations(Backend::Cuda, &l11, &img11, 10, &two),
            2 * (1013 + 1023)
        );
        // Nothing to hash in an absent page, on either backend.
        let empty = MemoryImage::zeroed(&l).unwrap();
        assert_eq!(opening_permutations(Backend::Cpu, &l, &empty, 3, &two), 0);
        assert_eq!(opening_permutations(Backend::Cuda, &l, &empty, 3, &two), 0);
        // h = 12 and k = 11 > q, only page 7 present: an opening in absent page 4 hashes
        // nothing of its own page, its level-9 sibling (page 5) is absent, and its level-10
        // sibling covers pages 6 and 7: page 7's root (1023) and 1 compression.
        let l12 = layout(&[8 << 12], None, None);
        let mut one = MemoryImage::zeroed(&l12).unwrap();
        one.write(0, 7 * 4096, &[1]).unwrap();
        for backend in [Backend::Cpu, Backend::Cuda] {
            assert_eq!(
                opening_permutations(backend, &l12, &one, 11, &[(0, 4 * 512 + 3)]),
                1024
            );
        }
        // A slot of height 1 at k = 3 is stored in full (b = 0).
        let small = layout(&[64, 16, 0], Some(2), Some(4));
        let small_img = full(&small);
        assert_eq!(
            opening_permutations(Backend::Cpu, &small, &small_img, 3, &[(1, 0)]),
            1
        );
    }

    #[test]
    fn update_counts_vertical_path_and_top_tree() {
        // Slot 1 has 2^1 blocks under address_height 4, top tree of height 2.
        let l = layout(&[64, 16, 0], Some(2), Some(4));
        let img = full(&l);
        // k = 0: 1 leaf + 1 compression + 3 vertical + 2 top.
        assert_eq!(update_permutations(&l, &img, 0, &[touched(1, 1)]), 7);
        // Two slots: slot 0 (h = 3) 1 + 3 + 1, slot 1: 1 + 1 + 3; top: 1 + 1.
        assert_eq!(
            update_permutations(&l, &img, 0, &[touched(0, 2), touched(1, 0)]),
            5 + 5 + 2
        );
    }
}
