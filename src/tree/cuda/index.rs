//! The host's copy of `cuda/include/memcommit/tree_index.h` and the device buffer geometry
//! built from it. Tests compare these functions with the header's (`probe`).
//!
//! Node storage is one flat device array of digests: each non-empty slot's levels `b..=h`
//! then its vertical path, in slot order; then the top tree, levels `0..=ash`; then the zero
//! hashes `zero[0..=address_height]`. Raw memory is one device buffer holding every slot's
//! bytes, each slot starting 16-byte aligned.

use crate::error::{Error, Result};
use crate::layout::{CellType, MemoryLayout};
use crate::tree::stored_base_level;

/// Offset, in digests from a slot's first digest, of its stored level `l` (`b ≤ l ≤ h`).
pub fn level_offset(h: u32, b: u32, l: u32) -> u64 {
    (1u64 << (h - b + 1)) - (1u64 << (h - l + 1))
}

/// Offset, in digests from a slot's first digest, of its vertical node at level `h + 1 + j`.
pub fn vertical_offset(h: u32, b: u32, j: u32) -> u64 {
    (1u64 << (h - b + 1)) - 1 + u64::from(j)
}

/// Digests stored for a non-empty slot: `2^(h−b+1) − 1` at levels `b..=h` plus
/// `address_height − h` on the vertical path (a dense slot: every page present).
pub fn slot_digests(h: u32, b: u32, address_height: u32) -> u64 {
    (1u64 << (h - b + 1)) - 1 + u64::from(address_height - h)
}

/// Offset, in digests from the top tree's first digest, of top-tree level `l`.
pub fn top_level_offset(ash: u32, l: u32) -> u64 {
    (1u64 << (ash + 1)) - (1u64 << (ash - l + 1))
}

/// Where one non-empty slot lives on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotGeometry {
    /// Real height `h = log2(num_cells / 8)`.
    pub height: u32,
    /// Stored base level `b`.
    pub base: u32,
    /// Cell type.
    pub cell: CellType,
    /// Index of the slot's first digest in the node array.
    pub node_offset: u64,
    /// Byte offset of the slot's raw memory in the raw buffer (16-byte aligned).
    pub raw_offset: u64,
}

impl SlotGeometry {
    /// Node index of stored level `l`'s node `i`.
    pub fn node(&self, l: u32, i: u64) -> u64 {
        self.node_offset + level_offset(self.height, self.base, l) + i
    }

    /// Node index of the vertical node at level `h + 1 + j`.
    pub fn vertical(&self, j: u32) -> u64 {
        self.node_offset + vertical_offset(self.height, self.base, j)
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> u64 {
        8 * self.cell.bytes() as u64
    }
}

/// The device buffers' shapes for one layout and `omitted_levels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// One entry per address space; `None` for an empty slot.
    pub slots: Vec<Option<SlotGeometry>>,
    /// Index of the top tree's first digest.
    pub top_offset: u64,
    /// Index of `zero[0]`.
    pub zero_offset: u64,
    /// Digests in the node array.
    pub total_digests: u64,
    /// Bytes in the raw buffer.
    pub raw_bytes: u64,
    /// Height of every slot's subtree.
    pub address_height: u32,
    /// Height of the top tree.
    pub address_space_height: u32,
}

impl Geometry {
    /// The geometry of `layout` at `omitted_levels = k`.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] if a size does not fit 64 bits.
    pub fn new(layout: &MemoryLayout, k: u32) -> Result<Self> {
        let too_big = || Error::ResourceExhausted("device tree size overflows 64 bits".into());
        let ah = layout.address_height();
        let ash = layout.address_space_height();
        let (mut nodes, mut raw) = (0u64, 0u64);
        let mut slots = Vec::with_capacity(layout.address_spaces().len());
        for space in layout.address_spaces() {
            let Some(height) = space.height() else {
                slots.push(None);
                continue;
            };
            let base = stored_base_level(height, k);
            slots.push(Some(SlotGeometry {
                height,
                base,
                cell: space.cell,
                node_offset: nodes,
                raw_offset: raw,
            }));
            nodes = nodes
                .checked_add(slot_digests(height, base, ah))
                .ok_or_else(too_big)?;
            raw = raw
                .checked_add(space.raw_bytes())
                .and_then(|r| r.checked_next_multiple_of(16))
                .ok_or_else(too_big)?;
        }
        let top_offset = nodes;
        let zero_offset = top_offset + (1u64 << (ash + 1)) - 1;
        Ok(Geometry {
            slots,
            top_offset,
            zero_offset,
            total_digests: zero_offset + u64::from(ah) + 1,
            raw_bytes: raw,
            address_height: ah,
            address_space_height: ash,
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
