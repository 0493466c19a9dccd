//! Exact permutation counts of a build and of an update batch, computed from the layout and
//! the batch the way the CPU and CUDA trees do the work (DESIGN.md "Update"), so
//! permutations per second need no instrumentation of the hot loops.
//!
//! One Poseidon2-16 permutation is one leaf hash (8 cells absorbed at rate 8) or one
//! 2-to-1 compression. Zero hashes of empty subtrees are precomputed once per process and
//! not counted.

use crate::layout::MemoryLayout;
use crate::tree::{block_key, stored_base_level, Backend, TouchedBlock};

/// Permutations of a full build: for each non-empty slot of real height `h`,
/// `2^h` leaf hashes + `2^h − 1` compressions + `address_height − h` on its vertical path,
/// i.e. `2^(h+1) − 1 + (address_height − h)`; plus `2^address_space_height − 1` in the top
/// tree. The same for every `omitted_levels` (k only changes what is stored).
pub fn build_permutations(layout: &MemoryLayout) -> u64 {
    let ah = layout.address_height();
    let slots: u64 = layout
        .address_spaces()
        .iter()
        .filter_map(|s| s.height())
        .map(|h| (1u64 << (h + 1)) - 1 + u64::from(ah - h))
        .sum();
    slots + (1u64 << layout.address_space_height()) - 1
}

/// Permutations of one (valid) update batch at `omitted_levels = k`. Per touched slot of
/// height `h` and stored base level `b` ([`stored_base_level`]): each distinct level-`b`
/// ancestor costs `2^b` leaf hashes and `2^b − 1` compressions (`2^(b+1) − 1`); each level
/// `b+1..=h` costs one compression per distinct ancestor; the vertical path costs
/// `address_height − h`. The top tree costs one compression per distinct ancestor of the
/// touched slots at levels `1..=address_space_height`. Repeated blocks count once; an empty
/// batch costs 0.
pub fn update_permutations(layout: &MemoryLayout, k: u32, blocks: &[TouchedBlock]) -> u64 {
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
        let slot = (group[0] >> 32) as usize;
        slots.push(slot as u64);
        let Some(h) = layout.address_spaces().get(slot).and_then(|s| s.height()) else {
            continue;
        };
        let b = stored_base_level(h, k);
        let mut dirty: Vec<u64> = group.iter().map(|key| (key & 0xffff_ffff) >> b).collect();
        dirty.dedup();
        total += dirty.len() as u64 * ((2u64 << b) - 1);
        total += distinct_ancestors(&mut dirty, h - b);
        total += u64::from(ah - h);
    }
    total + distinct_ancestors(&mut slots, layout.address_space_height())
}

/// Permutations of openings at (valid) `positions` at `omitted_levels = k` on `backend`:
/// only the siblings below a slot's stored base level `b` ([`stored_base_level`]) are
/// hashed, from raw memory. The CPU tree hashes the `2^b` blocks under the block's level-`b`
/// ancestor and folds them (`2^(b+1) − 1`, so 1 at `b = 0`); a CUDA thread hashes each
/// sibling subtree of height `l < b` alone (`Σ 2^(l+1) − 1 = 2^(b+1) − 2 − b`). The
/// reference tree stores every node (0).
pub fn opening_permutations(
    backend: Backend,
    layout: &MemoryLayout,
    k: u32,
    positions: &[(u32, u64)],
) -> u64 {
    positions
        .iter()
        .filter_map(|&(slot, _)| layout.address_spaces().get(slot as usize)?.height())
        .map(|h| {
            let b = stored_base_level(h, k);
            match backend {
                Backend::Cpu | Backend::Auto => (2u64 << b) - 1,
                Backend::Cuda => (2u64 << b) - 2 - u64::from(b),
                Backend::Reference => 0,
            }
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
        assert_eq!(build_permutations(&layout(&[8 << 10], None, None)), 2047);
        // Slots of 2^3 and 2^1 blocks under address_height 4 and a top tree of height 2:
        // (15 + 1) + (3 + 3) + empty slot 0 + top 3.
        assert_eq!(
            build_permutations(&layout(&[64, 16, 0], Some(2), Some(4))),
            16 + 6 + 3
        );
    }

    #[test]
    fn update_counts_distinct_nodes() {
        let l = layout(&[8 << 10], None, None); // h = 10, no top tree
        assert_eq!(update_permutations(&l, 3, &[]), 0);
        // One block at k = 0: 1 leaf + 10 compressions.
        assert_eq!(update_permutations(&l, 0, &[touched(0, 5)]), 11);
        // One block at k = 3: 15 to rebuild its level-3 node, then 7 levels.
        assert_eq!(update_permutations(&l, 3, &[touched(0, 5)]), 15 + 7);
        // Blocks 0 and 1 share every ancestor: 2 leaves + 10 compressions at k = 0, and
        // one level-3 node at k = 3.
        let pair = [touched(0, 0), touched(0, 1)];
        assert_eq!(update_permutations(&l, 0, &pair), 12);
        assert_eq!(update_permutations(&l, 3, &pair), 22);
        // Blocks 0 and 1023 meet only at the root: 2·11 − 1.
        let far = [touched(0, 0), touched(0, 1023)];
        assert_eq!(update_permutations(&l, 0, &far), 21);
    }

    #[test]
    fn openings_hash_below_the_stored_base() {
        // h = 10: at k = 3 the CPU hashes 8 leaves and 7 compressions per opening, a CUDA
        // thread the subtrees of heights 0, 1, 2 (1 + 3 + 7); at k = 0 the CPU hashes the
        // block's own leaf and CUDA nothing.
        let l = layout(&[8 << 10], None, None);
        let two = [(0, 5), (0, 6)];
        assert_eq!(opening_permutations(Backend::Cpu, &l, 3, &two), 30);
        assert_eq!(opening_permutations(Backend::Cuda, &l, 3, &two), 22);
        assert_eq!(opening_permutations(Backend::Cpu, &l, 0, &two), 2);
        assert_eq!(opening_permutations(Backend::Cuda, &l, 0, &two), 0);
        assert_eq!(opening_permutations(Backend::Reference, &l, 3, &two), 0);
        // A slot of height 1 at k = 3 is stored in full (b = 0).
        let small = layout(&[64, 16, 0], Some(2), Some(4));
        assert_eq!(opening_permutations(Backend::Cpu, &small, 3, &[(1, 0)]), 1);
    }

    #[test]
    fn update_counts_vertical_path_and_top_tree() {
        // Slot 1 has 2^1 blocks under address_height 4, top tree of height 2.
        let l = layout(&[64, 16, 0], Some(2), Some(4));
        // k = 0: 1 leaf + 1 compression + 3 vertical + 2 top.
        assert_eq!(update_permutations(&l, 0, &[touched(1, 1)]), 7);
        // Two slots: slot 0 (h = 3) 1 + 3 + 1, slot 1: 1 + 1 + 3; top: 1 + 1.
        assert_eq!(
            update_permutations(&l, 0, &[touched(0, 2), touched(1, 0)]),
            5 + 5 + 2
        );
    }
}
