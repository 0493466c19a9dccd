//! Random layouts and batches for the backend-vs-reference property tests: mixed cell types,
//! empty slots, small slots with vertical paths, and batches broken in each way docs/design.md
//! lists.

use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::TouchedBlock;
use proptest::prelude::*;

pub fn cell_type() -> impl Strategy<Value = CellType> {
    prop_oneof![
        Just(CellType::U8),
        Just(CellType::U16),
        Just(CellType::Field)
    ]
}

/// 1–5 address spaces of 0 or 2^3..2^12 cells; heights at their minimum or up to 2 above.
pub fn layout() -> impl Strategy<Value = MemoryLayout> {
    (
        prop::collection::vec((cell_type(), prop_oneof![Just(0u32), 3u32..=12]), 1..=5),
        0u32..=2,
        0u32..=1,
    )
        .prop_map(|(spaces, extra_h, extra_top)| layout_of(&spaces, extra_h, extra_top))
}

/// The layout of `(cell, log2 num_cells)` spaces (0: an empty slot) with both heights
/// `extra_h` and `extra_top` above their minimum.
fn layout_of(spaces: &[(CellType, u32)], extra_h: u32, extra_top: u32) -> MemoryLayout {
    let spec = |heights: Option<(u32, u32)>| LayoutSpec {
        address_spaces: spaces
            .iter()
            .map(|&(cell, log)| AddressSpace {
                cell,
                num_cells: if log == 0 { 0 } else { 1 << log },
            })
            .collect(),
        address_space_height: heights.map(|h| h.0),
        address_height: heights.map(|h| h.1),
    };
    let base = MemoryLayout::new(spec(None)).expect("valid by construction");
    MemoryLayout::new(spec(Some((
        base.address_space_height() + extra_top,
        base.address_height() + extra_h,
    ))))
    .expect("valid by construction")
}

/// 1–3 address spaces for the paged trees: 0 cells, 2^3..2^15 cells (slots from one block
/// up to 2^12 blocks, so up to 8 pages of 2^9 blocks), or 2^24..2^26 cells (heights 21–23,
/// whose levels 10..=h−11 are wider than 1024 and stored sparsely). Heights at their minimum
/// or one above.
pub fn paged_layout() -> impl Strategy<Value = MemoryLayout> {
    let log = prop_oneof![Just(0u32), 3u32..=15, 3u32..=15, 24u32..=26];
    (prop::collection::vec((cell_type(), log), 1..=3), 0u32..=1)
        .prop_map(|(spaces, extra_h)| layout_of(&spaces, extra_h, 0))
}

/// Like [`batch_from`], but three of four blocks fall in clusters (the first 2048 blocks, the
/// 2048 around the middle, the last 2048) so pages share their ancestors, and the rest
/// anywhere in the slot (mostly absent pages of a big slot).
pub fn paged_batch_from(layout: &MemoryLayout, seeds: &[u64]) -> Vec<TouchedBlock> {
    blocks_from(layout, seeds, |seed, n| {
        let span = n.min(2048);
        match (seed >> 4) % 4 {
            0 => (seed >> 8) % n,
            1 => (seed >> 8) % span,
            2 => (n / 2).saturating_sub(span / 2) + (seed >> 8) % span,
            _ => n - span + (seed >> 8) % span,
        }
    })
}

/// A cell value that fits `cell`, biased towards the edges.
pub fn fitting(cell: CellType, seed: u64) -> u32 {
    let max = u64::from(cell.max_value());
    match seed % 4 {
        0 => 0,
        1 => max as u32,
        _ => (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) as u32 % (max as u32 + 1),
    }
}

/// Up to `n` distinct valid touched blocks derived from `seeds`.
pub fn batch_from(layout: &MemoryLayout, seeds: &[u64]) -> Vec<TouchedBlock> {
    blocks_from(layout, seeds, |seed, n| (seed >> 8) % n)
}

/// One touched block per seed, repeats dropped: the slot from the seed (among non-empty
/// ones), the block `pick(seed, the slot's blocks)`, and cells that fit the slot's type.
fn blocks_from(
    layout: &MemoryLayout,
    seeds: &[u64],
    pick: impl Fn(u64, u64) -> u64,
) -> Vec<TouchedBlock> {
    let live: Vec<(u32, &AddressSpace)> = layout
        .address_spaces()
        .iter()
        .enumerate()
        .filter(|(_, s)| s.num_cells > 0)
        .map(|(i, s)| (i as u32, s))
        .collect();
    let mut out: Vec<TouchedBlock> = Vec::new();
    if live.is_empty() {
        return out;
    }
    for &seed in seeds {
        let (slot, space) = live[(seed % live.len() as u64) as usize];
        let block = pick(seed, space.num_blocks());
        if out.iter().any(|b| b.slot == slot && b.block == block) {
            continue;
        }
        let cells = core::array::from_fn(|j| fitting(space.cell, seed ^ (j as u64 * 0x1234_5678)));
        out.push(TouchedBlock { slot, block, cells });
    }
    out
}

/// Breaks a valid non-empty batch in one of the ways docs/design.md lists.
pub fn corrupt(layout: &MemoryLayout, batch: &mut Vec<TouchedBlock>, how: u8) {
    let last = batch.len() - 1;
    match how % 4 {
        0 => batch[last].slot = layout.address_spaces().len() as u32 + 3,
        1 => {
            let s = &layout.address_spaces()[batch[last].slot as usize];
            batch[last].block = s.num_blocks();
        }
        2 => {
            let s = &layout.address_spaces()[batch[last].slot as usize];
            batch[last].cells[7] = s.cell.max_value() + 1;
        }
        _ => batch.push(batch[0]),
    }
}
