//! The CPU tree's own update witness (docs/design.md, "Update witness"), taken from what
//! the update already has in hand instead of from openings:
//! - old digests of stored nodes (levels `b` and up, the vertical path, the top tree) from
//!   the update's undo log, which holds every node it replaced;
//! - new digests and untouched siblings from the tree after the batch;
//! - below the base level `b`, the new nodes of each recomputed subtree, which the update
//!   keeps while hashing ([`SlotUndo::below`]), and the old ones folded up from the old
//!   leaves of the touched blocks (`n` leaf hashes and at most `n` compressions per level
//!   below `b`): the only extra hashing, and none at `k = 0`.
//!
//! A slot whose base level lies above its page subtrees (`k` > [`crate::image::PAGE_LEVELS`])
//! takes the generic path, [`crate::tree::witness::from_openings`].

use super::{compress_all, zero, CpuTree, SlotNodes, SlotUndo, Undo};
use crate::error::Result;
use crate::hash::{leaf_hash_many_canonical, Digest};
use crate::layout::BLOCK_CELLS;
use crate::tree::witness::{from_openings, WitnessRow};
use crate::tree::{validated_keys, MemoryTree, TouchedBlock};

/// A touched node of one level: a touched block or a node with one below it.
#[derive(Clone, Copy)]
struct Touched {
    index: u64,
    old: Digest,
    new: Digest,
}

/// Appends to `out` one row per distinct parent of `children` (one level's touched nodes,
/// sorted by index): the parents' height is `height`, and the heap index of the level's
/// node 0 is `heap_base`. `sibling(j, c)` gives the untouched child `c`, whose touched
/// sibling is `children[j]`; the batch did not change it.
fn emit_rows(
    children: &[Touched],
    height: u32,
    heap_base: u64,
    sibling: impl Fn(usize, u64) -> Digest,
    out: &mut Vec<WitnessRow>,
) {
    let mut j = 0;
    while j < children.len() {
        let c = children[j];
        let row = |old: [Digest; 2], new: [Digest; 2], touched: [bool; 2]| WitnessRow {
            height,
            index: heap_base + (c.index >> 1),
            old,
            new,
            touched,
        };
        out.push(if c.index & 1 == 1 {
            let s = sibling(j, c.index ^ 1);
            row([s, c.old], [s, c.new], [false, true])
        } else if let Some(r) = children.get(j + 1).filter(|r| r.index == c.index + 1) {
            j += 1;
            row([c.old, r.old], [c.new, r.new], [true, true])
        } else {
            let s = sibling(j, c.index ^ 1);
            row([c.old, s], [c.new, s], [true, false])
        });
        j += 1;
    }
}

/// Sorted distinct indices, one level up.
fn halve(indices: &[u64]) -> Vec<u64> {
    let mut up: Vec<u64> = indices.iter().map(|i| i >> 1).collect();
    up.dedup();
    up
}

impl CpuTree {
    /// [`MemoryTree::update_with_witness`] for the CPU tree (module docs).
    pub(super) fn update_witnessed(
        &mut self,
        blocks: &[TouchedBlock],
    ) -> Result<(Digest, Vec<WitnessRow>)> {
        let keys = validated_keys(&self.layout, blocks)?;
        if blocks.is_empty() {
            return Ok((self.root(), Vec::new()));
        }
        let slot_of = |g: &[u64]| (g[0] >> 32) as usize;
        let groups = || keys.chunk_by(|a, b| a >> 32 == b >> 32);
        if groups().any(|g| {
            self.slots[slot_of(g)]
                .as_ref()
                .is_some_and(|n| !n.shape.pages_store_nodes())
        }) {
            return from_openings(self, blocks);
        }
        // The old leaves of slots stored from above level 0, before the write.
        let old_leaves: Vec<Vec<Digest>> = groups()
            .map(|g| self.old_leaves(slot_of(g) as u32, g))
            .collect();
        let mut undo = Undo::default();
        if let Err(e) = self.apply(blocks, &keys, &mut undo, true) {
            self.roll_back(undo);
            return Err(e);
        }
        let h = self.layout.address_space_height() + self.layout.address_height();
        let mut rows: Vec<Vec<WitnessRow>> = vec![Vec::new(); h as usize + 1];
        let mut roots = Vec::new();
        for ((group, log), leaves) in groups().zip(&undo.slots).zip(&old_leaves) {
            if let Some(nodes) = &self.slots[log.slot] {
                roots.push(self.slot_rows(nodes, group, log, leaves, &mut rows));
            }
        }
        self.top_rows(&undo, &roots, &mut rows);
        let mut out = Vec::with_capacity(rows.iter().map(Vec::len).sum());
        for level in rows {
            out.extend(level);
        }
        Ok((self.root(), out))
    }

    /// Leaf hashes of the old cells of `group`'s blocks (sorted keys of `slot`), when the
    /// slot is stored from above level 0; empty otherwise (its old leaves are logged).
    fn old_leaves(&self, slot: u32, group: &[u64]) -> Vec<Digest> {
        let stored_from_leaves = self.slots[slot as usize]
            .as_ref()
            .is_none_or(|n| n.shape.base == 0);
        if stored_from_leaves {
            return Vec::new();
        }
        let mut out = vec![Digest::ZERO; group.len()];
        leaf_hash_many_canonical(&mut out, |j, cells: &mut [u32; BLOCK_CELLS]| {
            *cells = self.image.block_cells(slot, group[j] & 0xffff_ffff);
        });
        out
    }

    /// Appends one slot's rows (heights 1..=address_height) to `rows[height]` and returns
    /// its root before and after the batch.
    fn slot_rows(
        &self,
        nodes: &SlotNodes,
        group: &[u64],
        log: &SlotUndo,
        old_leaves: &[Digest],
        rows: &mut [Vec<WitnessRow>],
    ) -> Touched {
        let slot = log.slot as u32;
        let s = nodes.shape;
        let (b, q) = (s.base, s.page_levels);
        let ah = self.layout.address_height();
        let top = self.layout.address_space_height() + ah;
        // Heap index of the slot's node 0 at level l.
        let base = |l: u32| (1u64 << (top - l)) + ((slot as u64) << (ah - l));
        let mut indices: Vec<u64> = group.iter().map(|k| k & 0xffff_ffff).collect();
        let mut level: Vec<Touched> = Vec::new();
        if b > 0 {
            level = below_base(&indices, b, log, old_leaves, &base, rows);
            indices = level.iter().map(|t| t.index).collect();
        } else {
            indices.dedup();
        }
        // Levels b..=q from the page log, in the order the update wrote them.
        let mut logged = log.page_nodes.iter();
        let mut positions: Vec<usize> = Vec::new();
        for l in b..=q {
            positions.clear();
            level.clear();
            for (&index, &(pos, old)) in indices.iter().zip(logged.by_ref()) {
                positions.push(pos);
                level.push(Touched {
                    index,
                    old,
                    new: nodes.pages[pos],
                });
            }
            if l == s.height {
                break;
            }
            let sibling = |j: usize, c: u64| match l < q {
                // A sibling below the page root shares its page.
                true if c & 1 == 1 => nodes.pages[positions[j] + 1],
                true => nodes.pages[positions[j] - 1],
                false => nodes.node(&self.image, slot, l, c),
            };
            emit_rows(
                &level,
                l + 1,
                base(l + 1),
                sibling,
                &mut rows[l as usize + 1],
            );
            indices = halve(&indices);
        }
        // The upper levels q+1..=h from their log.
        let mut logged = log.upper.iter();
        for l in q + 1..=s.height {
            level.clear();
            for (&index, &(j, i, old)) in indices.iter().zip(logged.by_ref()) {
                level.push(Touched {
                    index,
                    old: old.unwrap_or(*zero(l)),
                    new: nodes.upper[j].get(i, zero(l)),
                });
            }
            if l < s.height {
                let sibling = |_: usize, c: u64| nodes.node(&self.image, slot, l, c);
                emit_rows(
                    &level,
                    l + 1,
                    base(l + 1),
                    sibling,
                    &mut rows[l as usize + 1],
                );
                indices = halve(&indices);
            }
        }
        // The vertical path: each node's right child is a zero subtree.
        let mut node = level[0];
        for (j, (&old, &new)) in log.vertical.iter().zip(&nodes.vertical).enumerate() {
            let l = s.height + j as u32;
            let z = *zero(l);
            rows[l as usize + 1].push(WitnessRow {
                height: l + 1,
                index: base(l + 1),
                old: [node.old, z],
                new: [node.new, z],
                touched: [true, false],
            });
            node = Touched { index: 0, old, new };
        }
        node.index = slot as u64;
        node
    }

    /// Appends the top tree's rows (heights above address_height), given the touched slots'
    /// roots before and after the batch, in slot order.
    fn top_rows(&self, undo: &Undo, roots: &[Touched], rows: &mut [Vec<WitnessRow>]) {
        let ah = self.layout.address_height();
        let ash = self.layout.address_space_height();
        let mut level = roots.to_vec();
        for t in 1..=ash {
            let below = &self.top[t as usize - 1];
            let sibling = |_: usize, c: u64| below[c as usize];
            emit_rows(
                &level,
                ah + t,
                1u64 << (ash - t),
                sibling,
                &mut rows[(ah + t) as usize],
            );
            let Some((indices, old)) = undo.top.get(t as usize) else {
                break;
            };
            let now = &self.top[t as usize];
            level = indices
                .iter()
                .zip(old)
                .map(|(&i, &old)| Touched {
                    index: i,
                    old,
                    new: now[i as usize],
                })
                .collect();
        }
    }
}

/// Rows of heights 1..=b for one slot's touched blocks `blocks` (sorted distinct), from
/// the new subtrees the update kept and the old leaves; returns the touched level-`b`
/// nodes with their digests taken from nowhere yet (indices only are used).
fn below_base(
    blocks: &[u64],
    b: u32,
    log: &SlotUndo,
    old_leaves: &[Digest],
    base: &impl Fn(u32) -> u64,
    rows: &mut [Vec<WitnessRow>],
) -> Vec<Touched> {
    let mut roots: Vec<u64> = blocks.iter().map(|i| i >> b).collect();
    roots.dedup();
    // Level t's node c after the batch: in its level-b subtree's window of below[t].
    let kept = |t: u32, c: u64| {
        let up = b - t;
        let j = roots.partition_point(|&r| r < c >> up);
        log.below[t as usize][(j << up) + (c & ((1u64 << up) - 1)) as usize]
    };
    let mut level: Vec<Touched> = blocks
        .iter()
        .zip(old_leaves)
        .map(|(&index, &old)| Touched {
            index,
            old,
            new: kept(0, index),
        })
        .collect();
    for t in 0..b {
        let out = &mut rows[t as usize + 1];
        let first = out.len();
        emit_rows(&level, t + 1, base(t + 1), |_, c| kept(t, c), out);
        let made = &out[first..];
        let up = t + 1;
        level = if up < b {
            let pairs: Vec<(Digest, Digest)> = made.iter().map(|r| (r.old[0], r.old[1])).collect();
            made.iter()
                .zip(compress_all(&pairs))
                .map(|(r, old)| {
                    let index = r.index - base(up);
                    Touched {
                        index,
                        old,
                        new: kept(up, index),
                    }
                })
                .collect()
        } else {
            roots
                .iter()
                .map(|&index| Touched {
                    index,
                    old: Digest::ZERO,
                    new: Digest::ZERO,
                })
                .collect()
        };
    }
    level
}
