//! Which digests a slot stores, over its present pages (docs/design.md "The stored tree"): the
//! shape every tree backend with omitted levels shares, and the memory formulas built on it.
//!
//! For a slot of real height `h`, stored base level `b` ([`stored_base_level`]) and page
//! levels `q = min(PAGE_LEVELS, h)`:
//! - each present page stores its levels `b..=q` (`2^(q−b+1) − 1` digests) when `b ≤ q`,
//!   nothing when `b > q`;
//! - above the pages, levels `max(b, q + 1)..=h` ("upper levels") store the nodes that have
//!   a present page below them. A level at most [`DENSE_LEVEL_DIGESTS`] wide is stored
//!   densely (absent nodes hold their zero hash), a wider one sparsely;
//! - the vertical path stores `address_height − h` digests.
//!
//! Nodes not stored are zero hashes (nothing present below) or recomputed from raw memory
//! (below level `b`).

use crate::image::{MemoryImage, PAGE_LEVELS};
use crate::layout::MemoryLayout;

/// The widest upper level stored densely, in digests (32 KiB): a tree then costs at most
/// `2 · DENSE_LEVEL_DIGESTS` digests per slot on top of its pages, and a fully present
/// slot's upper levels are plain arrays, as in a dense tree.
pub const DENSE_LEVEL_DIGESTS: u64 = 1024;

/// The level at which a slot of real height `h` is stored from: `k` when `h > k`, else 0
/// (a slot no taller than `k` is stored in full).
pub fn stored_base_level(h: u32, k: u32) -> u32 {
    if h > k {
        k
    } else {
        0
    }
}

/// Offset, in digests from the first, of level `l` in a dense subtree of height `h` stored
/// from level `b` (`b ≤ l ≤ h`): levels are laid out bottom-up, level `l` holding
/// `2^(h−l)` digests.
pub fn level_offset(h: u32, b: u32, l: u32) -> u64 {
    (1u64 << (h - b + 1)) - (1u64 << (h - l + 1))
}

/// The stored shape of one non-empty slot (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotShape {
    /// Real height `h = log2(num_cells / 8)`, in levels.
    pub height: u32,
    /// Stored base level `b`: lower levels are recomputed from raw memory.
    pub base: u32,
    /// Levels of one page's subtree: `q = min(PAGE_LEVELS, h)`.
    pub page_levels: u32,
}

impl SlotShape {
    /// The shape of a slot of height `h` at `omitted_levels = k`.
    pub fn new(h: u32, k: u32) -> Self {
        SlotShape {
            height: h,
            base: stored_base_level(h, k),
            page_levels: h.min(PAGE_LEVELS),
        }
    }

    /// The shape of `slot` of `layout`, or `None` for an empty slot.
    pub fn of(layout: &MemoryLayout, slot: usize, k: u32) -> Option<Self> {
        let h = layout.address_spaces().get(slot)?.height()?;
        Some(SlotShape::new(h, k))
    }

    /// Whether pages store nodes (`b ≤ q`); otherwise the lowest stored level is above them.
    pub fn pages_store_nodes(&self) -> bool {
        self.base <= self.page_levels
    }

    /// Digests each present page stores: `2^(q−b+1) − 1`, or 0 when `b > q`.
    pub fn page_digests(&self) -> u64 {
        if self.pages_store_nodes() {
            (1u64 << (self.page_levels - self.base + 1)) - 1
        } else {
            0
        }
    }

    /// Offset of level `l` (`b ≤ l ≤ q`) among a page's digests.
    pub fn page_level_offset(&self, l: u32) -> u64 {
        level_offset(self.page_levels, self.base, l)
    }

    /// The lowest upper level: `max(b, q + 1)`. Upper levels run from here to `h`; there are
    /// none when the slot is one page.
    pub fn upper_base(&self) -> u32 {
        self.base.max(self.page_levels + 1)
    }

    /// Nodes of level `l`: `2^(h−l)`.
    pub fn width(&self, l: u32) -> u64 {
        1u64 << (self.height - l)
    }

    /// Whether upper level `l` is stored densely ([`DENSE_LEVEL_DIGESTS`]).
    pub fn is_dense(&self, l: u32) -> bool {
        self.width(l) <= DENSE_LEVEL_DIGESTS
    }

    /// Digests stored whatever pages are present: the dense upper levels and the vertical
    /// path up to `address_height`.
    pub fn fixed_digests(&self, address_height: u32) -> u64 {
        let dense: u64 = (self.upper_base()..=self.height)
            .filter(|&l| self.is_dense(l))
            .map(|l| self.width(l))
            .sum();
        dense + u64::from(address_height - self.height)
    }

    /// The most digests one new page adds: its own, plus one node on each sparse upper
    /// level (fewer when a neighbour already shares the node).
    pub fn digests_per_page(&self) -> u64 {
        let sparse = (self.upper_base()..=self.height)
            .filter(|&l| !self.is_dense(l))
            .count() as u64;
        self.page_digests() + sparse
    }

    /// Digests stored exactly, for the present pages `pages` (page numbers, sorted and
    /// distinct): pages, upper levels and vertical path.
    pub fn stored_digests(&self, address_height: u32, pages: &[u64]) -> u64 {
        let mut total =
            pages.len() as u64 * self.page_digests() + self.fixed_digests(address_height);
        let mut nodes = pages.to_vec();
        for l in self.page_levels + 1..=self.height {
            for n in nodes.iter_mut() {
                *n >>= 1;
            }
            nodes.dedup();
            if l >= self.upper_base() && !self.is_dense(l) {
                total += nodes.len() as u64;
            }
        }
        total
    }
}

/// Digests of the dense top tree over `2^address_space_height` slot roots.
pub fn top_digests(layout: &MemoryLayout) -> u64 {
    (1u64 << (layout.address_space_height() + 1)) - 1
}

/// Bytes of digests a tree over `image` stores at `omitted_levels = k`: every slot's
/// [`SlotShape::stored_digests`] for its present pages, plus the top tree, 32 bytes each.
/// For a fully present image this is the dense tree's `2^(h−b+1) − 1 + (address_height − h)`
/// per slot.
pub fn node_bytes(layout: &MemoryLayout, image: &MemoryImage, k: u32) -> u64 {
    let ah = layout.address_height();
    let slots: u64 = (0..layout.address_spaces().len())
        .filter_map(|s| {
            let shape = SlotShape::of(layout, s, k)?;
            let pages: Vec<u64> = image.pages(s as u32).map(|(n, _)| n).collect();
            Some(shape.stored_digests(ah, &pages))
        })
        .sum();
    (slots + top_digests(layout)) * crate::hash::DIGEST_BYTES
}

/// The most node bytes one new page of `slot` adds at `omitted_levels = k`
/// ([`SlotShape::digests_per_page`]), 0 for an empty slot; what limits reserve per page.
pub fn node_bytes_per_page(layout: &MemoryLayout, slot: u32, k: u32) -> u64 {
    SlotShape::of(layout, slot as usize, k).map_or(0, |s| s.digests_per_page())
        * crate::hash::DIGEST_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fully_present_slot_stores_what_the_dense_tree_did() {
        // h = 20, every one of the 2^11 pages present: 2^(21−k) − 1 digests at any k ≤ 9,
        // plus 4 vertical digests under address_height 24.
        let pages: Vec<u64> = (0..1 << 11).collect();
        for k in [0, 3, 9] {
            let s = SlotShape::new(20, k);
            assert_eq!(
                s.stored_digests(24, &pages),
                (1 << (21 - k)) - 1 + 4,
                "k {k}"
            );
        }
        // k = 12 > q: levels 12..=20, all dense (2^8 wide and less).
        assert_eq!(
            SlotShape::new(20, 12).stored_digests(20, &pages),
            (1 << 9) - 1
        );
    }

    #[test]
    fn sparse_levels_store_only_ancestors_of_present_pages() {
        // OpenVM's RAM space: h = 26, q = 9; levels 10..=15 are wider than 1024 (sparse),
        // 16..=26 dense (2047 digests).
        let s = SlotShape::new(26, 3);
        assert_eq!((s.page_digests(), s.upper_base()), (127, 10));
        assert_eq!(s.fixed_digests(26), 2047);
        assert_eq!(s.digests_per_page(), 127 + 6);
        assert_eq!(s.stored_digests(26, &[]), 2047);
        // Pages 0 and 1 share every sparse ancestor; page 2^16 shares none of them.
        assert_eq!(s.stored_digests(26, &[0, 1]), 2 * 127 + 6 + 2047);
        assert_eq!(s.stored_digests(26, &[0, 1 << 16]), 2 * 127 + 12 + 2047);
        // A slot of one page stores just the page and its vertical path.
        let one = SlotShape::new(4, 3);
        assert_eq!((one.page_levels, one.base, one.upper_base()), (4, 3, 5));
        assert_eq!(one.stored_digests(10, &[0]), 3 + 6);
        assert_eq!(one.page_level_offset(4), 2);
    }
}
