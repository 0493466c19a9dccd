//! The CPU reference tree: small and obviously correct, and what every other backend is
//! tested against. It treats the whole memory as one sparse binary tree of height
//! `address_space_height + address_height` whose leaf `(slot << address_height) | block`
//! is block `block` of `slot`; absent nodes are zero hashes. No omitted levels, no
//! batching, no parallelism. Its build reads the blocks of the image's present pages only
//! (absent pages are zero), so it too costs what was written, not what is declared.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Result;
use crate::hash::{compress, leaf_hash, zero_hashes, Digest, DIGEST_BYTES};
use crate::image::MemoryImage;
use crate::layout::MemoryLayout;
use crate::tree::witness::WitnessRow;
use crate::tree::{
    check_positions, validate_batch, Backend, MemoryTree, MemoryUsage, Opening, TouchedBlock,
};

/// The sparse reference tree. `omitted_levels` is recorded but changes nothing here.
pub struct ReferenceTree {
    layout: MemoryLayout,
    omitted_levels: u32,
    image: Arc<MemoryImage>,
    /// `(level, index) → digest` for every node computed from a non-zero leaf.
    nodes: HashMap<(u32, u64), Digest>,
}

impl ReferenceTree {
    /// Builds from `image` (which must match `layout`; see [`crate::tree::build`]).
    pub fn build(layout: MemoryLayout, image: Arc<MemoryImage>, omitted_levels: u32) -> Self {
        let mut tree = ReferenceTree {
            layout,
            omitted_levels,
            image,
            nodes: HashMap::new(),
        };
        // Level 0: every block that is not all zero (only present pages can hold one); then
        // each level from the one below.
        let mut level: Vec<u64> = Vec::new();
        for slot in 0..tree.layout.address_spaces().len() as u32 {
            let page_blocks = 1u64 << tree.image.page_levels(slot);
            let pages: Vec<u64> = tree.image.pages(slot).map(|(n, _)| n).collect();
            for block in pages
                .iter()
                .flat_map(|n| n * page_blocks..(n + 1) * page_blocks)
            {
                let cells = tree.image.block_cells(slot, block);
                if cells != [0; 8] {
                    let index = tree.leaf_index(slot, block);
                    tree.nodes
                        .insert((0, index), leaf_hash(&tree.image.block_fields(slot, block)));
                    level.push(index);
                }
            }
        }
        for h in 0..tree.height() {
            let mut parents: Vec<u64> = level.iter().map(|i| i >> 1).collect();
            parents.dedup();
            for &p in &parents {
                let d = compress(&tree.node(h, 2 * p), &tree.node(h, 2 * p + 1));
                tree.nodes.insert((h + 1, p), d);
            }
            level = parents;
        }
        tree
    }

    fn height(&self) -> u32 {
        self.layout.address_space_height() + self.layout.address_height()
    }

    fn leaf_index(&self, slot: u32, block: u64) -> u64 {
        ((slot as u64) << self.layout.address_height()) | block
    }

    fn node(&self, level: u32, index: u64) -> Digest {
        self.nodes
            .get(&(level, index))
            .copied()
            .unwrap_or(zero_hashes()[level as usize])
    }
}

impl MemoryTree for ReferenceTree {
    fn backend(&self) -> Backend {
        Backend::Reference
    }

    fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    fn omitted_levels(&self) -> u32 {
        self.omitted_levels
    }

    fn root(&self) -> Digest {
        self.node(self.height(), 0)
    }

    fn image(&self) -> &Arc<MemoryImage> {
        &self.image
    }

    fn update(&mut self, blocks: &[TouchedBlock]) -> Result<Digest> {
        validate_batch(&self.layout, blocks)?;
        Arc::make_mut(&mut self.image)
            .write_blocks(blocks.iter().map(|b| (b.slot, b.block, &b.cells)))?;
        // One leaf-to-root path per touched block, each on its own.
        for b in blocks {
            let mut index = self.leaf_index(b.slot, b.block);
            let leaf = leaf_hash(&self.image.block_fields(b.slot, b.block));
            self.nodes.insert((0, index), leaf);
            for h in 0..self.height() {
                index >>= 1;
                let d = compress(&self.node(h, 2 * index), &self.node(h, 2 * index + 1));
                self.nodes.insert((h + 1, index), d);
            }
        }
        Ok(self.root())
    }

    /// The oracle the other backends' witnesses are tested against, built directly: the
    /// touched nodes of every height, their children read before the batch and again after
    /// it.
    fn update_with_witness(
        &mut self,
        blocks: &[TouchedBlock],
    ) -> Result<(Digest, Vec<WitnessRow>)> {
        validate_batch(&self.layout, blocks)?;
        let h = self.height();
        // touched[l]: the level-l positions with a touched block below, ascending.
        let mut touched: Vec<Vec<u64>> = Vec::with_capacity(h as usize + 1);
        let mut level: Vec<u64> = blocks
            .iter()
            .map(|b| self.leaf_index(b.slot, b.block))
            .collect();
        level.sort_unstable();
        for _ in 0..=h {
            let up: Vec<u64> = level.iter().map(|i| i >> 1).collect();
            touched.push(level);
            level = up;
            level.dedup();
        }
        let children = |t: &Self, l: u32, p: u64| [t.node(l - 1, 2 * p), t.node(l - 1, 2 * p + 1)];
        let mut rows: Vec<WitnessRow> = Vec::new();
        for l in 1..=h {
            let below = &touched[l as usize - 1];
            for &p in &touched[l as usize] {
                rows.push(WitnessRow {
                    height: l,
                    index: (1u64 << (h - l)) + p,
                    old: children(self, l, p),
                    new: [Digest::ZERO; 2],
                    touched: [
                        below.binary_search(&(2 * p)).is_ok(),
                        below.binary_search(&(2 * p + 1)).is_ok(),
                    ],
                });
            }
        }
        let root = self.update(blocks)?;
        for r in &mut rows {
            r.new = children(self, r.height, r.index - (1u64 << (h - r.height)));
        }
        Ok((root, rows))
    }

    fn openings(&self, positions: &[(u32, u64)]) -> Result<Vec<Opening>> {
        check_positions(&self.layout, positions)?;
        Ok(positions
            .iter()
            .map(|&(slot, block)| {
                let index = self.leaf_index(slot, block);
                Opening {
                    slot,
                    block,
                    cells: self.image.block_cells(slot, block),
                    siblings: (0..self.height())
                        .map(|h| self.node(h, (index >> h) ^ 1))
                        .collect(),
                }
            })
            .collect())
    }

    fn memory_usage(&self) -> MemoryUsage {
        // A hash-map entry holds the key (12 bytes, padded to 16) beside the digest.
        MemoryUsage {
            host_node_bytes: self.nodes.capacity() as u64 * (DIGEST_BYTES + 16),
            host_raw_bytes: self.image.total_bytes(),
            ..MemoryUsage::default()
        }
    }
}
