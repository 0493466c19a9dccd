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

use rayon::prelude::*;

use super::{compress_all, parents, zero, CpuTree, SlotNodes, SlotUndo, Undo};
use crate::error::Result;
use crate::hash::{leaf_hash_many_canonical, Digest};
use crate::layout::BLOCK_CELLS;
use crate::tree::witness::{from_openings, rows_per_height, WitnessRow};
use crate::tree::{validated_keys, MemoryTree, TouchedBlock};

/// Fills `out` (one row per distinct parent of the touched nodes `indices`, one level's,
/// sorted, `old(j)` giving node `indices[j]`'s digest before the batch) from `pairs[j]`,
/// the new children of the `j`-th parent. The parents' height is `height`, and the heap
/// index of their level's node 0 is `heap_base`. An untouched child did not change, so its
/// new digest is also its old one.
fn emit_rows(
    indices: &[u64],
    old: impl Fn(usize) -> Digest,
    pairs: &[(Digest, Digest)],
    height: u32,
    heap_base: u64,
    out: &mut [WitnessRow],
) {
    debug_assert_eq!(out.len(), pairs.len());
    let mut i = 0;
    for (row, &(left, right)) in out.iter_mut().zip(pairs) {
        let parent = indices.get(i).map_or(0, |c| c >> 1);
        *row = WitnessRow {
            height,
            index: heap_base + parent,
            old: [left, right],
            new: [left, right],
            touched: [false; 2],
        };
        while let Some(&c) = indices.get(i).filter(|&&c| c >> 1 == parent) {
            let side = (c & 1) as usize;
            row.old[side] = old(i);
            row.touched[side] = true;
            i += 1;
        }
    }
    debug_assert_eq!(i, indices.len(), "a parent without its pair");
}

/// Where one stored level's old digests are, in the update's log.
#[derive(Clone, Copy)]
enum Olds<'a> {
    /// Page levels: `(position, old)`.
    Page(&'a [(usize, Digest)]),
    /// Upper levels: `(level, index, old)`, `None` for a node that was not stored (the
    /// level's zero hash).
    Upper(&'a [(usize, u64, Option<Digest>)], Digest),
}

impl Olds<'_> {
    fn get(&self, j: usize) -> Digest {
        match self {
            Olds::Page(log) => log[j].1,
            Olds::Upper(log, zero) => log[j].2.unwrap_or(*zero),
        }
    }
}

/// Below this many rows (or touched nodes in a slot), rows are written on one thread.
const SEQUENTIAL_ROWS: usize = 16 * 1024;

/// Splits the next `n` rows off the front of `rest`.
fn take<'a>(rest: &mut &'a mut [WitnessRow], n: usize) -> &'a mut [WitnessRow] {
    let all = std::mem::take(rest);
    let (head, tail) = all.split_at_mut(n.min(all.len()));
    *rest = tail;
    head
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
        // The whole witness at once, cut into one slice per height that each slot (in
        // order) then the top tree fill from the front: rows come out by height, then index.
        let counts = rows_per_height(&self.layout, &keys);
        let total = counts.iter().sum();
        let mut out = match total < SEQUENTIAL_ROWS {
            true => vec![WitnessRow::BLANK; total],
            false => {
                let mut v = Vec::with_capacity(total);
                v.par_extend(rayon::iter::repeat_n(WitnessRow::BLANK, total));
                v
            }
        };
        let mut heights: Vec<&mut [WitnessRow]> = Vec::with_capacity(counts.len());
        let mut rest = out.as_mut_slice();
        for &n in &counts {
            heights.push(take(&mut rest, n));
        }
        for ((group, log), leaves) in groups().zip(&undo.slots).zip(&old_leaves) {
            if let Some(nodes) = &self.slots[log.slot] {
                self.slot_rows(nodes, group, log, leaves, &mut heights);
            }
        }
        self.top_rows(&undo, &mut heights);
        debug_assert!(heights.iter().all(|h| h.is_empty()), "rows left unfilled");
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

    /// Fills one slot's rows (heights 1..=address_height) at the front of `heights[h]`.
    fn slot_rows(
        &self,
        nodes: &SlotNodes,
        group: &[u64],
        log: &SlotUndo,
        old_leaves: &[Digest],
        heights: &mut [&mut [WitnessRow]],
    ) {
        let slot = log.slot as u32;
        let s = nodes.shape;
        let (b, q, h) = (s.base, s.page_levels, s.height);
        let ah = self.layout.address_height();
        let top = self.layout.address_space_height() + ah;
        // Heap index of the slot's node 0 at level l.
        let base = |l: u32| (1u64 << (top - l)) + ((slot as u64) << (ah - l));
        let mut indices: Vec<u64> = group.iter().map(|k| k & 0xffff_ffff).collect();
        if b > 0 {
            indices = below_base(&indices, b, log, old_leaves, &base, heights);
        }
        // Levels b..=h: the touched nodes (the update wrote them in this order, page levels
        // b..=q then the upper ones, so the log's old digests follow level by level), and
        // their parents' rows from the new children the update kept.
        let mut levels: Vec<(u32, Vec<u64>, Olds)> = Vec::new();
        let (mut page_at, mut upper_at) = (0, 0);
        for l in b..=h {
            let n = indices.len();
            let olds = match l <= q {
                true => {
                    page_at += n;
                    Olds::Page(log.page_nodes.get(page_at - n..page_at).unwrap_or(&[]))
                }
                false => {
                    upper_at += n;
                    let logged = log.upper.get(upper_at - n..upper_at).unwrap_or(&[]);
                    Olds::Upper(logged, *zero(l))
                }
            };
            let up = if l < h { parents(&indices) } else { Vec::new() };
            levels.push((l, std::mem::replace(&mut indices, up), olds));
        }
        let mut tasks = Vec::with_capacity(levels.len());
        for ((l, level, olds), pairs) in levels.iter().zip(&log.pairs) {
            let out = take(&mut heights[*l as usize + 1], pairs.len());
            tasks.push((*l, level, *olds, pairs, out));
        }
        let emit = |(l, level, olds, pairs, out): (u32, &Vec<u64>, Olds, &Vec<_>, &mut [_])| {
            emit_rows(level, |j| olds.get(j), pairs, l + 1, base(l + 1), out)
        };
        // Levels in parallel, unless they are too small to pay for rayon.
        let touched: usize = levels.iter().map(|l| l.1.len()).sum();
        match touched < SEQUENTIAL_ROWS {
            true => tasks.into_iter().for_each(emit),
            false => tasks.into_par_iter().for_each(emit),
        }
        // The vertical path: each node's right child is a zero subtree.
        let mut old = levels.last().map_or(Digest::ZERO, |l| l.2.get(0));
        let mut new = nodes.node(&self.image, slot, h, 0);
        for (j, (&old_up, &new_up)) in log.vertical.iter().zip(&nodes.vertical).enumerate() {
            let l = h + j as u32;
            let z = *zero(l);
            let row = take(&mut heights[l as usize + 1], 1);
            if let Some(row) = row.first_mut() {
                *row = WitnessRow {
                    height: l + 1,
                    index: base(l + 1),
                    old: [old, z],
                    new: [new, z],
                    touched: [true, false],
                };
            }
            (old, new) = (old_up, new_up);
        }
    }

    /// Fills the top tree's rows (heights above address_height), from the touched slots'
    /// roots and the top levels' old digests in the undo log.
    fn top_rows(&self, undo: &Undo, heights: &mut [&mut [WitnessRow]]) {
        let ah = self.layout.address_height();
        let ash = self.layout.address_space_height();
        for t in 1..=ash {
            let Some((indices, old)) = undo.top.get(t as usize - 1) else {
                return;
            };
            let below = &self.top[t as usize - 1];
            let pairs: Vec<(Digest, Digest)> = parents(indices)
                .iter()
                .map(|&p| (below[2 * p as usize], below[2 * p as usize + 1]))
                .collect();
            let out = take(&mut heights[(ah + t) as usize], pairs.len());
            emit_rows(indices, |j| old[j], &pairs, ah + t, 1u64 << (ash - t), out);
        }
    }
}

/// Fills the rows of heights 1..=b for one slot's touched blocks `blocks` (sorted
/// distinct), from the new subtrees the update kept and the old leaves folded up; returns
/// the touched level-`b` indices.
fn below_base(
    blocks: &[u64],
    b: u32,
    log: &SlotUndo,
    old_leaves: &[Digest],
    base: &impl Fn(u32) -> u64,
    heights: &mut [&mut [WitnessRow]],
) -> Vec<u64> {
    let roots: Vec<u64> = {
        let mut r: Vec<u64> = blocks.iter().map(|i| i >> b).collect();
        r.dedup();
        r
    };
    let mut level: Vec<u64> = blocks.to_vec();
    let mut olds: Vec<Digest> = old_leaves.to_vec();
    for t in 0..b {
        let up = b - t;
        let kept = &log.below[t as usize];
        // The parents' new children, side by side in their level-b subtree's window.
        let mut j = 0;
        let above = parents(&level);
        let pairs: Vec<(Digest, Digest)> = above
            .iter()
            .map(|&p| {
                while roots[j] != (2 * p) >> up {
                    j += 1;
                }
                let at = (j << up) + ((2 * p) & ((1u64 << up) - 1)) as usize;
                (kept[at], kept[at + 1])
            })
            .collect();
        let out = take(&mut heights[t as usize + 1], pairs.len());
        emit_rows(&level, |j| olds[j], &pairs, t + 1, base(t + 1), out);
        if t + 1 < b {
            let old_pairs: Vec<(Digest, Digest)> =
                out.iter().map(|r| (r.old[0], r.old[1])).collect();
            olds = compress_all(&old_pairs);
            level = above;
        }
    }
    roots
}
