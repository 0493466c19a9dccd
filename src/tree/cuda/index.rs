//! The host's copy of `cuda/include/memcommit/tree_index.h` and the geometry of a tree's two
//! device arrays. Tests compare these functions with the header's (`probe`).
//!
//! **Node array** (digests, 32 bytes each), in order:
//! 1. the *fixed part*, whatever pages are present: per non-empty slot its vertical path and
//!    its dense upper levels ([`crate::tree::shape::DENSE_LEVEL_DIGESTS`]); the top tree;
//!    the zero table `zero[0..=address_height]`;
//! 2. per non-empty slot, its *page levels* `b..=q` for the `P` present pages, level-major:
//!    level `l` holds `P · 2^(q−l)` digests and page id `i`'s nodes start at `i · 2^(q−l)`,
//!    so one launch per level builds every page of a slot, and the pages an update creates
//!    (the last ids) occupy the tail of each level;
//! 3. per non-empty slot, the *sparse pool*: the nodes of its sparse upper levels, in the
//!    order they were created; the host maps `(level, index)` to pool positions.
//!
//! **Raw array**: per non-empty slot, its present pages back to back in id order (the
//! image's page buffer, uploaded as it is). The device page of `(slot, page number)` is the
//! image's [`crate::image::PageId`]: the image's page table is the device's page table.
//!
//! Both arrays are sized exactly for the pages present ([`Placement`]); a batch that creates
//! pages moves to bigger arrays (see `tree.rs`).

use crate::error::{Error, Result};
use crate::layout::{CellType, MemoryLayout, BLOCK_CELLS};
use crate::tree::SlotShape;

/// Offset, in digests per unit, of level `l` in a level-major stack of levels `b..=h` where
/// level `l'` holds `2^(h−l')` digests per unit (`b ≤ l ≤ h`). A page pool of `P` pages of
/// height `q` starts level `l` at `P · level_offset(q, b, l)`.
pub fn level_offset(h: u32, b: u32, l: u32) -> u64 {
    (1u64 << (h - b + 1)) - (1u64 << (h - l + 1))
}

/// Offset, in digests from the top tree's first digest, of top-tree level `l`.
pub fn top_level_offset(ash: u32, l: u32) -> u64 {
    (1u64 << (ash + 1)) - (1u64 << (ash - l + 1))
}

/// Digests of the top tree over `2^ash` slot roots: `2^(ash+1) − 1`.
pub fn top_digests(ash: u32) -> u64 {
    (1u64 << (ash + 1)) - 1
}

/// How one upper level of a slot is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Upper {
    /// A dense array in the fixed part starting at this node index (absent nodes hold the
    /// level's zero hash).
    Dense(u64),
    /// Nodes in the slot's sparse pool, through the host's map.
    Sparse,
}

/// Where the fixed part of one non-empty slot lives, and its shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotGeometry {
    /// Heights and levels.
    pub shape: SlotShape,
    /// Cell type.
    pub cell: CellType,
    /// Bytes of one page: `2^q` blocks.
    pub page_bytes: u64,
    /// Node index of the vertical node at level `h + 1` (`address_height − h` of them).
    pub vertical: u64,
    /// `upper[j]` is level `upper_base + j`, up to `h`.
    pub upper: Vec<Upper>,
}

impl SlotGeometry {
    /// How upper level `l` (`upper_base ≤ l ≤ h`) is stored.
    pub fn upper(&self, l: u32) -> Upper {
        self.upper[(l - self.shape.upper_base()) as usize]
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> u64 {
        (BLOCK_CELLS * self.cell.bytes()) as u64
    }

    /// Node index of level `l`'s node `local` (`< 2^(q−l)`) in page `id`, `b ≤ l ≤ q`.
    pub fn page_node(&self, place: &SlotPlace, l: u32, id: u64, local: u64) -> u64 {
        let s = &self.shape;
        place.page_nodes
            + place.pages * level_offset(s.page_levels, s.base, l)
            + (id << (s.page_levels - l))
            + local
    }

    /// The level-`l` region of the page levels: first node index and digests
    /// (`P · 2^(q−l)`), `b ≤ l ≤ q`.
    pub fn page_level(&self, place: &SlotPlace, l: u32) -> (u64, u64) {
        (
            self.page_node(place, l, 0, 0),
            place.pages << (self.shape.page_levels - l),
        )
    }
}

/// The fixed part of a tree's node array for one layout and `omitted_levels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// One entry per address space; `None` for an empty slot.
    pub slots: Vec<Option<SlotGeometry>>,
    /// Index of the top tree's first digest.
    pub top_offset: u64,
    /// Index of `zero[0]`.
    pub zero_offset: u64,
    /// Digests of the fixed part; the page levels start here.
    pub fixed_digests: u64,
    /// Height of every slot's subtree.
    pub address_height: u32,
    /// Height of the top tree.
    pub address_space_height: u32,
}

/// Where one slot's growable parts lie, for its present pages and sparse nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SlotPlace {
    /// Present pages `P` (device pages `0..P`, the image's page ids).
    pub pages: u64,
    /// Nodes in the sparse pool.
    pub sparse: u64,
    /// Node index of the page levels' first digest.
    pub page_nodes: u64,
    /// Node index of the sparse pool's first digest.
    pub sparse_nodes: u64,
    /// Byte offset of page 0 in the raw array.
    pub raw: u64,
}

/// The growable parts of both arrays for given page and sparse-node counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    /// One entry per address space; `None` for an empty slot.
    pub slots: Vec<Option<SlotPlace>>,
    /// Digests in the node array.
    pub node_digests: u64,
    /// Bytes in the raw array.
    pub raw_bytes: u64,
}

impl Geometry {
    /// The fixed part for `layout` at `omitted_levels = k`.
    pub fn new(layout: &MemoryLayout, k: u32) -> Self {
        let ah = layout.address_height();
        let ash = layout.address_space_height();
        let mut next = 0u64;
        let slots = (0..layout.address_spaces().len())
            .map(|slot| {
                let shape = SlotShape::of(layout, slot, k)?;
                let cell = layout.address_spaces()[slot].cell;
                let vertical = next;
                next += u64::from(ah - shape.height);
                let upper = (shape.upper_base()..=shape.height)
                    .map(|l| {
                        if shape.is_dense(l) {
                            let first = next;
                            next += shape.width(l);
                            Upper::Dense(first)
                        } else {
                            Upper::Sparse
                        }
                    })
                    .collect();
                Some(SlotGeometry {
                    shape,
                    cell,
                    page_bytes: ((BLOCK_CELLS * cell.bytes()) as u64) << shape.page_levels,
                    vertical,
                    upper,
                })
            })
            .collect();
        let top_offset = next;
        let zero_offset = top_offset + top_digests(ash);
        Geometry {
            slots,
            top_offset,
            zero_offset,
            fixed_digests: zero_offset + u64::from(ah) + 1,
            address_height: ah,
            address_space_height: ash,
        }
    }

    /// The placement for `(present pages, sparse nodes)` of each slot (in slot order; empty
    /// slots' entries are ignored).
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] if a size does not fit 64 bits.
    pub fn place(&self, sizes: impl Iterator<Item = (u64, u64)>) -> Result<Placement> {
        let too_big = || Error::ResourceExhausted("device tree size overflows 64 bits".into());
        let (mut nodes, mut raw) = (self.fixed_digests, 0u64);
        let mut slots = Vec::with_capacity(self.slots.len());
        for (g, (pages, sparse)) in self.slots.iter().zip(sizes) {
            let Some(g) = g else {
                slots.push(None);
                continue;
            };
            let page_nodes = nodes;
            let sparse_nodes = pages
                .checked_mul(g.shape.page_digests())
                .and_then(|n| n.checked_add(page_nodes))
                .ok_or_else(too_big)?;
            nodes = sparse_nodes.checked_add(sparse).ok_or_else(too_big)?;
            slots.push(Some(SlotPlace {
                pages,
                sparse,
                page_nodes,
                sparse_nodes,
                raw,
            }));
            raw = pages
                .checked_mul(g.page_bytes)
                .and_then(|n| n.checked_add(raw))
                .ok_or_else(too_big)?;
        }
        // Node bytes must fit too.
        nodes
            .checked_mul(crate::hash::DIGEST_BYTES)
            .ok_or_else(too_big)?;
        Ok(Placement {
            slots,
            node_digests: nodes,
            raw_bytes: raw,
        })
    }

    /// Node index of top-tree level `l`'s node `i`.
    pub fn top(&self, l: u32, i: u64) -> u64 {
        self.top_offset + top_level_offset(self.address_space_height, l) + i
    }

    /// Node index of `zero[h]`.
    pub fn zero(&self, h: u32) -> u64 {
        self.zero_offset + u64::from(h)
    }

    /// Digests of an opening's siblings: `address_height + address_space_height`.
    pub fn opening_len(&self) -> u64 {
        u64::from(self.address_height + self.address_space_height)
    }
}

/// One contiguous copy between two arrays: `(destination, source, length)`, in the array's
/// units (digests or bytes).
pub(crate) type Move = (u64, u64, u64);

/// What moving from `old` to `new` (the same geometry, every slot at least as big) copies:
/// node-array moves in digests and raw-array moves in bytes, each list merged where both
/// sides are contiguous, empty moves left out.
pub(crate) fn moves(
    geometry: &Geometry,
    old: &Placement,
    new: &Placement,
) -> (Vec<Move>, Vec<Move>) {
    let mut nodes = vec![(0, 0, geometry.fixed_digests)];
    let mut raw = Vec::new();
    for ((g, o), n) in geometry.slots.iter().zip(&old.slots).zip(&new.slots) {
        let (Some(g), Some(o), Some(n)) = (g, o, n) else {
            continue;
        };
        if g.shape.pages_store_nodes() {
            for l in g.shape.base..=g.shape.page_levels {
                let (src, len) = g.page_level(o, l);
                nodes.push((g.page_level(n, l).0, src, len));
            }
        }
        nodes.push((n.sparse_nodes, o.sparse_nodes, o.sparse));
        raw.push((n.raw, o.raw, o.pages * g.page_bytes));
    }
    (merge(nodes), merge(raw))
}

/// Joins consecutive moves that continue each other on both sides and drops empty ones.
fn merge(moves: Vec<Move>) -> Vec<Move> {
    let mut out: Vec<Move> = Vec::with_capacity(moves.len());
    for (dst, src, len) in moves.into_iter().filter(|m| m.2 > 0) {
        match out.last_mut() {
            Some(last) if last.0 + last.2 == dst && last.1 + last.2 == src => last.2 += len,
            _ => out.push((dst, src, len)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{AddressSpace, LayoutSpec};

    /// OpenVM's RAM slot alone: h = 26, q = 9, at k = 3.
    fn ram() -> Geometry {
        let layout = MemoryLayout::new(LayoutSpec {
            address_spaces: vec![AddressSpace {
                cell: CellType::U8,
                num_cells: 1 << 29,
            }],
            address_space_height: None,
            address_height: None,
        })
        .unwrap();
        Geometry::new(&layout, 3)
    }

    #[test]
    fn the_fixed_part_holds_dense_levels_top_and_zeros_only() {
        let g = ram();
        let s = g.slots[0].as_ref().unwrap();
        // No vertical path (h = address_height); levels 10..=15 sparse; 16..=26 dense, 2047
        // digests from index 0; the 1-digest top tree; 27 zero hashes.
        assert_eq!(s.vertical, 0);
        assert_eq!(s.upper(15), Upper::Sparse);
        assert_eq!(s.upper(16), Upper::Dense(0));
        assert_eq!(s.upper(17), Upper::Dense(1024));
        assert_eq!(s.upper(26), Upper::Dense(2046));
        assert_eq!(
            (g.top_offset, g.zero_offset, g.fixed_digests),
            (2047, 2048, 2075)
        );
        assert_eq!(s.page_bytes, 4096);
    }

    #[test]
    fn pages_are_level_major_and_growth_moves_each_level() {
        let g = ram();
        let s = g.slots[0].as_ref().unwrap();
        let old = g.place([(2, 5)].into_iter()).unwrap();
        let new = g.place([(3, 6)].into_iter()).unwrap();
        let (o, n) = (old.slots[0].unwrap(), new.slots[0].unwrap());
        // 127 digests per page (levels 3..=9: 64 + 32 + … + 1), then the pool.
        assert_eq!((o.page_nodes, o.sparse_nodes), (2075, 2075 + 254));
        assert_eq!(old.node_digests, 2075 + 254 + 5);
        assert_eq!(new.node_digests, 2075 + 381 + 6);
        assert_eq!((old.raw_bytes, new.raw_bytes), (8192, 12288));
        // Level 4 of page 1: after level 3 (2 · 64) at 32 per page.
        assert_eq!(s.page_node(&o, 4, 1, 5), 2075 + 128 + 32 + 5);
        assert_eq!(s.page_level(&n, 9), (2075 + 3 * 126, 3));
        let (nodes, raw) = moves(&g, &old, &new);
        // The fixed part and level 3 are contiguous on both sides; levels 4..=9 each move.
        assert_eq!(nodes[0], (0, 0, 2075 + 128));
        assert_eq!(nodes[1], (2075 + 192, 2075 + 128, 64));
        assert_eq!(nodes.len(), 1 + 6 + 1);
        assert_eq!(nodes[7], (2075 + 381, 2075 + 254, 5));
        assert_eq!(raw, vec![(0, 0, 8192)]);
    }
}
