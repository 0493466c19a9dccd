//! The production CPU tree: the GPU's layout and update algorithm, on rayon and p3's packed
//! permutation.
//!
//! Each slot of real height `h` stores levels `b..=h` densely, where `b = k` when `h > k`
//! and `b = 0` otherwise (`k = omitted_levels`), plus its vertical path up to
//! `address_height`. Nodes below `b` are recomputed from the `Arc`-held raw memory: one
//! level-`b` node costs `2^b` leaf hashes and `2^b − 1` compressions. The top tree over
//! the `2^address_space_height` slot roots is stored in full.
//!
//! An update validates the batch, writes raw memory, recomputes every *distinct* level-`b`
//! ancestor of the touched blocks once, then every distinct parent level by level, then the
//! vertical paths and the top tree (DESIGN.md "Update").
//!
//! Every overwritten image block and node is logged as it is replaced (the swap that writes
//! a fresh digest leaves the old one in the buffer it came from, so the log costs no extra
//! pass), and a batch that fails part-way is rolled back from the log: image, nodes and
//! root are as before. Only injected faults ([`crate::tree::fault`]) fail there today.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hash::{
    compress, compress_pairs, leaf_hash_many_canonical, permute_many, zero_hashes, Digest,
    DIGEST_BYTES,
};
use crate::image::MemoryImage;
use crate::layout::{MemoryLayout, BLOCK_CELLS};
use crate::tree::{
    check_positions, empty_slot_root, fault, stored_base_level, validated_keys, Backend,
    MemoryTree, MemoryUsage, Opening, TouchedBlock,
};

/// Leaves hashed together by one rayon task when computing level-`b` nodes: 128 KiB of
/// digests, so a task's whole subtree stays in L2.
const LEAVES_PER_TASK: usize = 4096;
/// Parents compressed together by one rayon task in the level-by-level passes.
const PARENTS_PER_TASK: usize = 1024;

/// The stored part of one non-empty slot.
struct SlotNodes {
    /// Real height `log2(num_cells / 8)`.
    height: u32,
    /// Lowest stored level.
    base: u32,
    /// `levels[i]` is level `base + i`, `2^(height − base − i)` digests.
    levels: Vec<Vec<Digest>>,
    /// `vertical[j]` is the node at level `height + 1 + j` on the way to `address_height`.
    vertical: Vec<Digest>,
}

impl SlotNodes {
    fn root(&self) -> Digest {
        self.vertical
            .last()
            .copied()
            .unwrap_or_else(|| self.levels[self.levels.len() - 1][0])
    }

    /// `vertical[j] = compress(node below, zero[height + j])` (DESIGN "vertical path").
    fn recompute_vertical(&mut self) {
        let mut node = self.levels[self.levels.len() - 1][0];
        for (j, v) in self.vertical.iter_mut().enumerate() {
            node = compress(&node, &zero_hashes()[self.height as usize + j]);
            *v = node;
        }
    }

    fn digests(&self) -> u64 {
        (self.levels.iter().map(Vec::capacity).sum::<usize>() + self.vertical.capacity()) as u64
    }
}

/// The production CPU backend.
pub struct CpuTree {
    layout: MemoryLayout,
    omitted_levels: u32,
    image: Arc<MemoryImage>,
    /// One entry per address space; `None` for a slot with 0 cells.
    slots: Vec<Option<SlotNodes>>,
    /// `top[l]` holds level `l` of the top tree: `top[0]` the `2^ash` slot roots, the last
    /// the root.
    top: Vec<Vec<Digest>>,
}

/// Allocates `n` digests, reporting failure as [`Error::ResourceExhausted`].
fn alloc_digests(n: u64) -> Result<Vec<Digest>> {
    let oom = || Error::ResourceExhausted(format!("cannot allocate {n} digests of tree nodes"));
    let n = usize::try_from(n).map_err(|_| oom())?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| oom())?;
    v.resize(n, Digest::ZERO);
    Ok(v)
}

/// Computes `out[i]` = the level-`b` node with index `node(i)` of `slot`, from raw memory:
/// leaf hashes of its `2^b` blocks, then `b` rounds of pair compression. Nodes are laid
/// side by side so each round is one `compress_pairs` over every node of a task.
fn hash_from_raw(
    image: &MemoryImage,
    slot: u32,
    b: u32,
    node: impl Fn(usize) -> u64 + Sync,
    out: &mut [Digest],
) {
    let cell = image.cell_types()[slot as usize];
    let raw = image.slot_bytes(slot);
    let block_bytes = BLOCK_CELLS * cell.bytes();
    let mask = (1u64 << b) - 1;
    let per_task = (LEAVES_PER_TASK >> b).max(1);
    out.par_chunks_mut(per_task).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(cur, next), (t, out)| {
            let first = t * per_task;
            let fill = |j: usize, cells: &mut [u32; BLOCK_CELLS]| {
                let block = (node(first + (j >> b)) << b) | (j as u64 & mask);
                let at = block as usize * block_bytes;
                *cells = cell.read_block(&raw[at..at + block_bytes]);
            };
            if b == 0 {
                leaf_hash_many_canonical(out, fill);
                return;
            }
            cur.resize(out.len() << b, Digest::ZERO);
            leaf_hash_many_canonical(cur, fill);
            for _ in 1..b {
                next.resize(cur.len() / 2, Digest::ZERO);
                compress_pairs(cur, next);
                std::mem::swap(cur, next);
            }
            compress_pairs(cur, out);
        },
    );
}

/// One level's overwritten nodes: their indices (sorted, distinct) and old digests.
type LevelUndo = (Vec<u64>, Vec<Digest>);

/// Recomputes, for each distinct parent `p` of the sorted distinct `dirty` indices,
/// `parents[p] = compress(children[2p], children[2p+1])`. Returns the parents, sorted and
/// distinct, and the digests they held before.
fn update_parents(children: &[Digest], parents: &mut [Digest], dirty: &[u64]) -> LevelUndo {
    let mut up: Vec<u64> = dirty.iter().map(|i| i >> 1).collect();
    up.dedup();
    let mut fresh = vec![Digest::ZERO; up.len()];
    fresh
        .par_chunks_mut(PARENTS_PER_TASK)
        .zip(up.par_chunks(PARENTS_PER_TASK))
        .for_each(|(out, ps)| {
            permute_many(out, |i, s| {
                let c = 2 * ps[i] as usize;
                s[..8].copy_from_slice(&children[c].0);
                s[8..].copy_from_slice(&children[c + 1].0);
            })
        });
    // Swapping leaves the old digests in `fresh`: the undo log costs no extra pass.
    for (&p, d) in up.iter().zip(&mut fresh) {
        std::mem::swap(&mut parents[p as usize], d);
    }
    (up, fresh)
}

/// Fills `levels[1..]` from `levels[0]`, one parallel pass per level.
fn build_upper_levels(levels: &mut [Vec<Digest>]) {
    for l in 1..levels.len() {
        let (lower, upper) = levels.split_at_mut(l);
        let children = &lower[l - 1];
        upper[0]
            .par_chunks_mut(PARENTS_PER_TASK)
            .enumerate()
            .for_each(|(t, out)| {
                let c = 2 * t * PARENTS_PER_TASK;
                compress_pairs(&children[c..c + 2 * out.len()], out);
            });
    }
}

/// Runs [`update_parents`] from level 1 to the top of `levels`. `undo` holds level 0's
/// entry (its dirty indices and old digests) on entry; each level's is pushed after it, so
/// `undo[i]` is level `i`. A fault point follows each level; `what` names the levels in its
/// error.
fn update_upper_levels(
    levels: &mut [Vec<Digest>],
    undo: &mut Vec<LevelUndo>,
    what: &dyn Fn(usize) -> String,
) -> Result<()> {
    for l in 1..levels.len() {
        let (lower, upper) = levels.split_at_mut(l);
        let dirty = undo.last().map_or(&[][..], |(d, _)| d.as_slice());
        let level = update_parents(&lower[l - 1], &mut upper[0], dirty);
        undo.push(level);
        fault::point(|| what(l))?;
    }
    Ok(())
}

/// Writes logged digests back into `levels` (`undo[i]` is level `i`).
fn restore_levels(levels: &mut [Vec<Digest>], undo: Vec<LevelUndo>) {
    for (level, (indices, old)) in levels.iter_mut().zip(undo) {
        for (i, d) in indices.into_iter().zip(old) {
            level[i as usize] = d;
        }
    }
}

/// The rest of one slot's update once its base level is recomputed (and logged as
/// `undo[0]`): the levels above it, then the vertical path, with a fault point after each.
fn update_slot(nodes: &mut SlotNodes, slot: u32, undo: &mut Vec<LevelUndo>) -> Result<()> {
    let base = nodes.base as usize;
    fault::point(|| format!("slot {slot} level {base}"))?;
    update_upper_levels(&mut nodes.levels, undo, &|l| {
        format!("slot {slot} level {}", base + l)
    })?;
    nodes.recompute_vertical();
    fault::point(|| format!("slot {slot} vertical path"))
}

/// What one slot's part of an update overwrote.
struct SlotUndo {
    slot: usize,
    /// `levels[i]` is the slot's stored level `base + i`.
    levels: Vec<LevelUndo>,
    /// The vertical path before the update.
    vertical: Vec<Digest>,
}

/// Everything an update overwrote, so a batch that fails part-way can be undone whole.
#[derive(Default)]
struct Undo {
    /// `(slot, block, old cells)` of each block written to the image.
    image: Vec<(u32, u64, [u32; BLOCK_CELLS])>,
    slots: Vec<SlotUndo>,
    /// `top[l]` is level `l` of the top tree (level 0: the slot roots).
    top: Vec<LevelUndo>,
}

impl CpuTree {
    /// Builds the tree over `image` with `omitted_levels = k` (validated by
    /// [`crate::tree::build`]).
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] if node storage cannot be allocated.
    pub fn build(layout: MemoryLayout, image: Arc<MemoryImage>, k: u32) -> Result<Self> {
        let ah = layout.address_height();
        let mut slots = Vec::with_capacity(layout.address_spaces().len());
        for (s, space) in layout.address_spaces().iter().enumerate() {
            let Some(height) = space.height() else {
                slots.push(None);
                continue;
            };
            let base = stored_base_level(height, k);
            let mut levels = Vec::with_capacity((height - base + 1) as usize);
            for l in base..=height {
                levels.push(alloc_digests(1u64 << (height - l))?);
            }
            hash_from_raw(&image, s as u32, base, |i| i as u64, &mut levels[0]);
            build_upper_levels(&mut levels);
            let mut nodes = SlotNodes {
                height,
                base,
                levels,
                vertical: vec![Digest::ZERO; (ah - height) as usize],
            };
            nodes.recompute_vertical();
            slots.push(Some(nodes));
        }
        let mut tree = CpuTree {
            top: Vec::new(),
            layout,
            omitted_levels: k,
            image,
            slots,
        };
        tree.top = tree.build_top();
        Ok(tree)
    }

    /// Applies a validated batch (`keys` from [`validated_keys`]), logging in `undo` every
    /// block and node it overwrites before the next fault point. Only an injected fault
    /// ([`fault::point`]) fails here; the caller then rolls back from `undo`.
    fn apply(&mut self, blocks: &[TouchedBlock], keys: &[u64], undo: &mut Undo) -> Result<()> {
        let image = Arc::make_mut(&mut self.image);
        undo.image.reserve_exact(blocks.len());
        for b in blocks {
            let old = image.block_cells(b.slot, b.block);
            undo.image.push((b.slot, b.block, old));
            image.write_block(b.slot, b.block, &b.cells);
        }
        fault::point(|| "the raw image write".into())?;
        let mut touched_slots = Vec::new();
        for group in keys.chunk_by(|a, b| a >> 32 == b >> 32) {
            let slot = (group[0] >> 32) as u32;
            touched_slots.push(u64::from(slot));
            let Some(nodes) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            let base = nodes.base;
            let mut dirty: Vec<u64> = group.iter().map(|k| (k & 0xffff_ffff) >> base).collect();
            dirty.dedup();
            let mut fresh = vec![Digest::ZERO; dirty.len()];
            hash_from_raw(&self.image, slot, base, |i| dirty[i], &mut fresh);
            for (&i, d) in dirty.iter().zip(&mut fresh) {
                std::mem::swap(&mut nodes.levels[0][i as usize], d);
            }
            let mut log = SlotUndo {
                slot: slot as usize,
                levels: vec![(dirty, fresh)],
                vertical: nodes.vertical.clone(),
            };
            let r = update_slot(nodes, slot, &mut log.levels);
            undo.slots.push(log);
            r?;
        }
        let mut roots = Vec::with_capacity(touched_slots.len());
        for &s in &touched_slots {
            let root = self.slot_root(s as usize);
            roots.push(std::mem::replace(&mut self.top[0][s as usize], root));
        }
        undo.top.push((touched_slots, roots));
        fault::point(|| "top level 0".into())?;
        update_upper_levels(&mut self.top, &mut undo.top, &|l| format!("top level {l}"))
    }

    /// Undoes a partly applied batch from its log: the image, every node and the root are
    /// as before the batch.
    fn roll_back(&mut self, undo: Undo) {
        let image = Arc::make_mut(&mut self.image);
        for (slot, block, cells) in undo.image.iter().rev() {
            image.write_block(*slot, *block, cells);
        }
        for s in undo.slots {
            if let Some(nodes) = self.slots[s.slot].as_mut() {
                restore_levels(&mut nodes.levels, s.levels);
                nodes.vertical = s.vertical;
            }
        }
        restore_levels(&mut self.top, undo.top);
    }

    fn slot_root(&self, slot: usize) -> Digest {
        match self.slots.get(slot) {
            Some(Some(nodes)) => nodes.root(),
            _ => empty_slot_root(&self.layout),
        }
    }

    fn build_top(&self) -> Vec<Vec<Digest>> {
        let ash = self.layout.address_space_height();
        let mut top = vec![(0..1usize << ash)
            .map(|s| self.slot_root(s))
            .collect::<Vec<_>>()];
        for l in 1..=ash {
            top.push(vec![Digest::ZERO; 1 << (ash - l)]);
        }
        build_upper_levels(&mut top);
        top
    }

    /// Level-0..b siblings of `block`: recomputes the level-`b` node's subtree from raw
    /// memory and reads the sibling at each level.
    fn omitted_siblings(&self, slot: u32, block: u64, b: u32, out: &mut Vec<Digest>) {
        let first = (block >> b) << b;
        let mut cur = vec![Digest::ZERO; 1 << b];
        hash_from_raw(&self.image, slot, 0, |i| first + i as u64, &mut cur);
        for l in 0..b {
            out.push(cur[(((block >> l) ^ 1) & ((1 << (b - l)) - 1)) as usize]);
            let mut next = vec![Digest::ZERO; cur.len() / 2];
            compress_pairs(&cur, &mut next);
            cur = next;
        }
    }

    fn opening(&self, slot: u32, block: u64) -> Opening {
        let mut siblings = Vec::with_capacity(self.layout.opening_len());
        // Positions are checked, so the slot is non-empty.
        if let Some(nodes) = &self.slots[slot as usize] {
            self.omitted_siblings(slot, block, nodes.base, &mut siblings);
            for l in nodes.base..nodes.height {
                siblings.push(nodes.levels[(l - nodes.base) as usize][((block >> l) ^ 1) as usize]);
            }
            siblings.extend_from_slice(
                &zero_hashes()[nodes.height as usize..self.layout.address_height() as usize],
            );
        }
        for (l, level) in self.top.iter().enumerate().take(self.top.len() - 1) {
            siblings.push(level[((slot as usize) >> l) ^ 1]);
        }
        Opening {
            slot,
            block,
            cells: self.image.block_cells(slot, block),
            siblings,
        }
    }
}

impl MemoryTree for CpuTree {
    fn backend(&self) -> Backend {
        Backend::Cpu
    }

    fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    fn omitted_levels(&self) -> u32 {
        self.omitted_levels
    }

    fn root(&self) -> Digest {
        self.top[self.top.len() - 1][0]
    }

    fn image(&self) -> &Arc<MemoryImage> {
        &self.image
    }

    fn update(&mut self, blocks: &[TouchedBlock]) -> Result<Digest> {
        let keys = validated_keys(&self.layout, blocks)?;
        if blocks.is_empty() {
            return Ok(self.root());
        }
        let mut undo = Undo::default();
        match self.apply(blocks, &keys, &mut undo) {
            Ok(()) => Ok(self.root()),
            Err(e) => {
                self.roll_back(undo);
                Err(e)
            }
        }
    }

    fn openings(&self, positions: &[(u32, u64)]) -> Result<Vec<Opening>> {
        check_positions(&self.layout, positions)?;
        Ok(positions
            .par_iter()
            .map(|&(slot, block)| self.opening(slot, block))
            .collect())
    }

    fn memory_usage(&self) -> MemoryUsage {
        let slot_digests: u64 = self.slots.iter().flatten().map(SlotNodes::digests).sum();
        let top_digests: u64 = self.top.iter().map(|l| l.capacity() as u64).sum();
        MemoryUsage {
            host_node_bytes: (slot_digests + top_digests) * DIGEST_BYTES,
            host_raw_bytes: self.image.total_bytes(),
            ..MemoryUsage::default()
        }
    }
}
