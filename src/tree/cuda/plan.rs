//! Host-side work lists for the device: the staging buffer that carries them in one upload,
//! and the update plan (docs/design.md "Update": the distinct base-level nodes, then the distinct
//! parents level by level, then vertical paths and the top tree), worked out from the sorted
//! touched set.

use super::ffi::{as_bytes, HashTask, PairTask, Plain, VerticalTask, WriteTask};
use super::index::Geometry;
use crate::tree::TouchedBlock;

/// One array inside a [`Staging`] buffer: byte offset and element count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Section {
    /// Byte offset from the start of the staging buffer (16-byte aligned).
    pub offset: u64,
    /// Elements.
    pub count: u64,
}

/// Arrays of task structs packed into one byte buffer, each 16-byte aligned, so one
/// allocation and one copy carry a whole batch's lists to the device.
#[derive(Default)]
pub(crate) struct Staging {
    bytes: Vec<u8>,
}

impl Staging {
    /// Appends `items`, returning where they went.
    pub fn push<T: Plain>(&mut self, items: &[T]) -> Section {
        let offset = self.bytes.len().next_multiple_of(16);
        self.bytes.resize(offset, 0);
        self.bytes.extend_from_slice(as_bytes(items));
        Section {
            offset: offset as u64,
            count: items.len() as u64,
        }
    }

    /// The packed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The work of one update batch, every list in launch order.
#[derive(Debug, Default)]
pub(crate) struct UpdatePlan {
    /// The touched blocks' new cells, for the raw-memory scatter.
    pub writes: Vec<WriteTask>,
    /// Each distinct stored base-level ancestor of a touched block, once.
    pub hashes: Vec<HashTask>,
    /// `rounds[r]`: the distinct parents at level `b + 1 + r` of every touched slot.
    pub rounds: Vec<Vec<PairTask>>,
    /// The touched slots' vertical paths and top-tree leaves.
    pub vertical: Vec<VerticalTask>,
    /// `top_rounds[r]`: the distinct top-tree nodes at level `r + 1` above touched slots.
    pub top_rounds: Vec<Vec<PairTask>>,
}

/// Sorted distinct parents of sorted distinct `children` indices.
fn parents_of(children: &[u64]) -> Vec<u64> {
    let mut up: Vec<u64> = children.iter().map(|i| i >> 1).collect();
    up.dedup();
    up
}

impl UpdatePlan {
    /// Plans `blocks`, whose sorted `keys` [`crate::tree::validated_keys`] returned for the
    /// layout of `geometry` (so every slot is non-empty and every block in range and
    /// distinct).
    pub fn new(geometry: &Geometry, blocks: &[TouchedBlock], keys: &[u64]) -> Self {
        let mut plan = UpdatePlan::default();
        let mut touched_slots = Vec::new();
        for group in keys.chunk_by(|a, b| a >> 32 == b >> 32) {
            let slot = (group[0] >> 32) as u32;
            let Some(Some(g)) = geometry.slots.get(slot as usize) else {
                continue;
            };
            touched_slots.push(u64::from(slot));
            let mut dirty: Vec<u64> = group.iter().map(|k| (k & 0xffff_ffff) >> g.base).collect();
            dirty.dedup();
            plan.hashes.extend(dirty.iter().map(|&i| HashTask {
                out_node: g.node(g.base, i),
                raw_byte: g.raw_offset + (i << g.base) * g.block_bytes(),
                cell: super::cell_code(g.cell),
                levels: g.base,
            }));
            for l in g.base + 1..=g.height {
                let up = parents_of(&dirty);
                let round = (l - g.base - 1) as usize;
                if plan.rounds.len() <= round {
                    plan.rounds.push(Vec::new());
                }
                plan.rounds[round].extend(up.iter().map(|&p| PairTask {
                    parent: g.node(l, p),
                    left: g.node(l - 1, 2 * p),
                }));
                dirty = up;
            }
            plan.vertical.push(VerticalTask {
                slot_root: g.node(g.height, 0),
                first_vertical: g.vertical(0),
                top_leaf: geometry.top(0, u64::from(slot)),
                height: g.height,
                count: geometry.address_height - g.height,
            });
        }
        for b in blocks {
            if let Some(Some(g)) = geometry.slots.get(b.slot as usize) {
                plan.writes.push(WriteTask {
                    raw_byte: g.raw_offset + b.block * g.block_bytes(),
                    cell: super::cell_code(g.cell),
                    pad: 0,
                    cells: b.cells,
                });
            }
        }
        let mut dirty = touched_slots;
        for l in 1..=geometry.address_space_height {
            let up = parents_of(&dirty);
            plan.top_rounds.push(
                up.iter()
                    .map(|&p| PairTask {
                        parent: geometry.top(l, p),
                        left: geometry.top(l - 1, 2 * p),
                    })
                    .collect(),
            );
            dirty = up;
        }
        plan
    }
}
