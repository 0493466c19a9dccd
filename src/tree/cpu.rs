//! The production CPU tree: the GPU's layout and update algorithm, on rayon and p3's packed
//! permutation, over the image's present pages ([`crate::image`], [`super::shape`]).
//!
//! Each slot stores, per present page, its levels `b..=q` in one page-major array (keyed by
//! the image's [`PageId`]s); above the pages, the upper levels `max(b, q+1)..=h`, each a
//! dense array when at most [`super::shape::DENSE_LEVEL_DIGESTS`] wide and otherwise a map
//! holding only nodes with a present page below; and its vertical path. Nodes below `b`
//! are recomputed from the `Arc`-held raw memory; an absent page is `zero[q]`. The top tree
//! over the `2^address_space_height` slot roots is stored in full.
//!
//! An update validates the batch, writes raw memory (creating the pages it touches),
//! recomputes every *distinct* level-`b` ancestor of the touched blocks once, then every
//! distinct parent level by level, then the vertical paths and the top tree (docs/design.md
//! "The stored tree", Update).
//!
//! Every overwritten image block, created page and node is logged as it is replaced (the
//! swap that writes a fresh digest leaves the old one in the buffer it came from, so the log
//! costs no extra pass), and a batch that fails part-way is rolled back from the log: image,
//! pages, nodes and root are as before. Only injected faults ([`crate::tree::fault`]) and
//! page allocation fail there today.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;

mod witness;

use crate::error::{Error, Result};
use crate::hash::{
    compress, compress_pairs, leaf_hash_many_canonical, permute_many, zero_hashes, Digest,
    DIGEST_BYTES, LANES,
};
use crate::image::{ImageUndo, MemoryImage, PageId};
use crate::layout::{CellType, MemoryLayout, BLOCK_CELLS};
use crate::tree::shape::SlotShape;
use crate::tree::{
    check_positions, empty_slot_root, fault, validated_keys, Backend, MemoryTree, MemoryUsage,
    Opening, TouchedBlock,
};

/// Leaves hashed together by one rayon task when computing nodes from raw memory: 128 KiB
/// of digests, so a task's whole subtree stays in L2.
const LEAVES_PER_TASK: usize = 4096;
/// Parents compressed together by one rayon task in the level-by-level passes.
const PARENTS_PER_TASK: usize = 1024;

/// `zero[l]`, the root of an all-zero subtree of height `l`.
fn zero(l: u32) -> &'static Digest {
    &zero_hashes()[l as usize]
}

/// Allocates `n` copies of `fill`, reporting failure as [`Error::ResourceExhausted`].
fn alloc_digests(n: u64, fill: Digest) -> Result<Vec<Digest>> {
    let oom = || Error::ResourceExhausted(format!("cannot allocate {n} digests of tree nodes"));
    let n = usize::try_from(n).map_err(|_| oom())?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| oom())?;
    v.resize(n, fill);
    Ok(v)
}

/// One upper level of a slot: dense when narrow, else only the nodes with a present page
/// below them (the others are the level's zero hash).
enum Level {
    Dense(Vec<Digest>),
    Sparse(HashMap<u64, Digest>),
}

impl Level {
    fn new(shape: &SlotShape, l: u32) -> Level {
        if shape.is_dense(l) {
            Level::Dense(vec![*zero(l); shape.width(l) as usize])
        } else {
            Level::Sparse(HashMap::new())
        }
    }

    #[inline]
    fn get(&self, i: u64, zero: &Digest) -> Digest {
        match self {
            Level::Dense(v) => v[i as usize],
            Level::Sparse(m) => m.get(&i).copied().unwrap_or(*zero),
        }
    }

    /// Stores `d` at `i`; returns what was there (`None`: the node was not stored).
    #[inline]
    fn set(&mut self, i: u64, d: Digest) -> Option<Digest> {
        match self {
            Level::Dense(v) => Some(std::mem::replace(&mut v[i as usize], d)),
            Level::Sparse(m) => m.insert(i, d),
        }
    }

    /// Puts back what [`Level::set`] returned.
    fn restore(&mut self, i: u64, old: Option<Digest>) {
        match (self, old) {
            (Level::Dense(v), Some(d)) => v[i as usize] = d,
            (Level::Sparse(m), Some(d)) => {
                m.insert(i, d);
            }
            (Level::Sparse(m), None) => {
                m.remove(&i);
            }
            (Level::Dense(_), None) => {}
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Level::Dense(v) => v.capacity(),
            Level::Sparse(m) => m.capacity(),
        }
    }

    fn shrink_to(&mut self, capacity: usize) {
        match self {
            Level::Dense(v) => v.shrink_to(capacity),
            Level::Sparse(m) => m.shrink_to(capacity),
        }
    }

    /// Bytes allocated (a map entry holds its u64 key beside the digest).
    fn bytes(&self) -> u64 {
        match self {
            Level::Dense(v) => v.capacity() as u64 * DIGEST_BYTES,
            Level::Sparse(m) => m.capacity() as u64 * (DIGEST_BYTES + 8),
        }
    }
}

/// The stored part of one non-empty slot.
struct SlotNodes {
    shape: SlotShape,
    /// Page-major: page `id`'s levels `b..=q` at `id · page_digests`, level `l` at
    /// [`SlotShape::page_level_offset`]. Empty when `b > q`.
    pages: Vec<Digest>,
    /// `upper[j]` is level `upper_base + j`, up to `h`.
    upper: Vec<Level>,
    /// `vertical[j]` is the node at level `h + 1 + j` on the way to `address_height`.
    vertical: Vec<Digest>,
    /// Present pages of the slot when the tree last looked: more in the image means the
    /// batch creates pages.
    known_pages: usize,
}

/// What one slot's part of an update overwrote.
#[derive(Default)]
struct SlotUndo {
    slot: usize,
    /// Length of `pages` before the batch (pages it created are cut off again).
    pages_len: usize,
    /// When the batch creates pages in this slot: the capacity of `pages` and of each
    /// sparse upper level before it, given back on a roll-back.
    capacities: Option<(usize, Vec<usize>)>,
    /// `known_pages` before the batch.
    known_pages: usize,
    /// `(position in pages, old digest)`, in the order written.
    page_nodes: Vec<(usize, Digest)>,
    /// `(upper level index, node index, old)`, in the order written.
    upper: Vec<(usize, u64, Option<Digest>)>,
    /// The vertical path before the update.
    vertical: Vec<Digest>,
    /// For the witness only: `below[t]` (`t < b`) holds level `t` of every recomputed
    /// level-`b` subtree after the batch, side by side in key order.
    below: Vec<Vec<Digest>>,
    /// For the witness only: `pairs[j]` holds the new children of every recomputed node of
    /// level `b + 1 + j`, in index order, as the update read them to compress them.
    pairs: Vec<Vec<(Digest, Digest)>>,
}

/// One level's overwritten nodes: their indices (sorted, distinct) and old digests.
type LevelUndo = (Vec<u64>, Vec<Digest>);

/// Everything an update overwrote, so a batch that fails part-way can be undone whole.
#[derive(Default)]
struct Undo {
    image: Option<ImageUndo>,
    slots: Vec<SlotUndo>,
    /// `top[l]` is level `l` of the top tree (level 0: the slot roots).
    top: Vec<LevelUndo>,
}

/// `out[i]` = the root of the height-`levels` subtree over the `2^levels` blocks of `cell`
/// cells whose raw bytes start at `src(i)`, for one task's nodes: leaf hashes, then `levels`
/// rounds of pair compression with the nodes side by side, so each round is one
/// `compress_pairs`. `scratch` is reused between calls. When `keep` is not empty, `keep[t]`
/// (`t < levels`, `out.len() << (levels − t)` digests) receives the subtrees' level `t`,
/// side by side (the witness's nodes below the stored base level).
fn hash_subtrees_seq<'a>(
    cell: CellType,
    levels: u32,
    src: &(impl Fn(usize) -> &'a [u8] + Sync),
    first: usize,
    out: &mut [Digest],
    (cur, next): &mut (Vec<Digest>, Vec<Digest>),
    keep: &mut [&mut [Digest]],
) {
    let bb = BLOCK_CELLS * cell.bytes();
    let mask = (1usize << levels) - 1;
    let fill = |j: usize, cells: &mut [u32; BLOCK_CELLS]| {
        let at = (j & mask) * bb;
        *cells = cell.read_block(&src(first + (j >> levels))[at..at + bb]);
    };
    if levels == 0 {
        leaf_hash_many_canonical(out, fill);
        return;
    }
    cur.resize(out.len() << levels, Digest::ZERO);
    leaf_hash_many_canonical(cur, fill);
    if let Some(k) = keep.first_mut() {
        k.copy_from_slice(cur);
    }
    for t in 1..levels as usize {
        next.resize(cur.len() / 2, Digest::ZERO);
        compress_pairs(cur, next);
        std::mem::swap(cur, next);
        if let Some(k) = keep.get_mut(t) {
            k.copy_from_slice(cur);
        }
    }
    compress_pairs(cur, out);
}

/// [`hash_subtrees_seq`] over all of `out`, split into rayon tasks of about
/// [`LEAVES_PER_TASK`] leaves; `keep` as there (empty: nothing kept).
fn hash_subtrees<'a>(
    cell: CellType,
    levels: u32,
    src: &(impl Fn(usize) -> &'a [u8] + Sync),
    out: &mut [Digest],
    keep: &mut [Vec<Digest>],
) {
    let per_task = (LEAVES_PER_TASK >> levels).max(1);
    let mut keep: Vec<&mut [Digest]> = keep.iter_mut().map(|k| k.as_mut_slice()).collect();
    if out.len() <= per_task {
        let scratch = &mut (Vec::new(), Vec::new());
        hash_subtrees_seq(cell, levels, src, 0, out, scratch, &mut keep);
        return;
    }
    // Each task's window of every kept level, next to its window of `out`.
    let mut windows: Vec<Vec<&mut [Digest]>> = Vec::new();
    for (t, k) in keep.into_iter().enumerate() {
        for (task, w) in k.chunks_mut(per_task << (levels as usize - t)).enumerate() {
            match windows.get_mut(task) {
                Some(ws) => ws.push(w),
                None => windows.push(vec![w]),
            }
        }
    }
    windows.resize_with(out.len().div_ceil(per_task), Vec::new);
    out.par_chunks_mut(per_task)
        .zip(windows)
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |scratch, (t, (out, mut keep))| {
                hash_subtrees_seq(cell, levels, src, t * per_task, out, scratch, &mut keep)
            },
        );
}

/// Sets `out` to `n` compressions, `out[j] = compress(children(j))`, in parallel tasks of
/// [`PARENTS_PER_TASK`] (a single task runs inline: small batches skip rayon).
fn compress_into(
    out: &mut Vec<Digest>,
    n: usize,
    children: impl Fn(usize) -> (Digest, Digest) + Sync,
) {
    out.clear();
    out.resize(n, Digest::ZERO);
    let task = |t: usize, out: &mut [Digest]| {
        permute_many(out, |i, s| {
            let (l, r) = children(t * PARENTS_PER_TASK + i);
            s[..8].copy_from_slice(&l.0);
            s[8..].copy_from_slice(&r.0);
        })
    };
    if n <= PARENTS_PER_TASK {
        task(0, out);
    } else {
        out.par_chunks_mut(PARENTS_PER_TASK)
            .enumerate()
            .for_each(|(t, out)| task(t, out));
    }
}

/// [`compress_into`]; with `keep`, each parent's children are also recorded, as the
/// permutation's input is filled, into a new entry of `keep` (the witness's new children,
/// read once as the update reads them anyway).
fn compress_level(
    out: &mut Vec<Digest>,
    n: usize,
    keep: Option<&mut Vec<Vec<(Digest, Digest)>>>,
    children: impl Fn(usize) -> (Digest, Digest) + Sync,
) {
    let Some(keep) = keep else {
        return compress_into(out, n, children);
    };
    out.clear();
    out.resize(n, Digest::ZERO);
    let blank = (Digest::ZERO, Digest::ZERO);
    let mut pairs = match n <= PARENTS_PER_TASK {
        true => vec![blank; n],
        false => {
            let mut v = Vec::with_capacity(n);
            v.par_extend(rayon::iter::repeat_n(blank, n));
            v
        }
    };
    let task = |t: usize, out: &mut [Digest], pairs: &mut [(Digest, Digest)]| {
        // One task owns its window of `pairs`; the permutation's fill is a shared closure.
        let pairs = std::cell::Cell::from_mut(pairs).as_slice_of_cells();
        permute_many(out, |i, s| {
            let (l, r) = children(t * PARENTS_PER_TASK + i);
            pairs[i].set((l, r));
            s[..8].copy_from_slice(&l.0);
            s[8..].copy_from_slice(&r.0);
        })
    };
    if n <= PARENTS_PER_TASK {
        task(0, out, &mut pairs);
    } else {
        out.par_chunks_mut(PARENTS_PER_TASK)
            .zip(pairs.par_chunks_mut(PARENTS_PER_TASK))
            .enumerate()
            .for_each(|(t, (out, pairs))| task(t, out, pairs));
    }
    keep.push(pairs);
}

/// Compresses `pairs` of `(left, right)` digests.
fn compress_all(pairs: &[(Digest, Digest)]) -> Vec<Digest> {
    let mut out = Vec::new();
    compress_into(&mut out, pairs.len(), |j| pairs[j]);
    out
}

/// One level up a sparse set of nodes: the sorted, distinct `(index, digest)` children at
/// level `l − 1` become their distinct parents, a missing sibling counting as `zero[l − 1]`.
fn fold_level(children: &[(u64, Digest)], l: u32) -> Vec<(u64, Digest)> {
    let z = *zero(l - 1);
    let mut parents = Vec::with_capacity(children.len());
    let mut pairs = Vec::with_capacity(children.len());
    let mut i = 0;
    while i < children.len() {
        let (c, d) = children[i];
        let (p, pair) = if c & 1 == 1 {
            (c >> 1, (z, d))
        } else if children.get(i + 1).is_some_and(|&(n, _)| n == c + 1) {
            i += 1;
            (c >> 1, (d, children[i].1))
        } else {
            (c >> 1, (d, z))
        };
        parents.push(p);
        pairs.push(pair);
        i += 1;
    }
    parents.into_iter().zip(compress_all(&pairs)).collect()
}

/// Roots (level `q`) of present pages `pages` (`(page number, id)`) of `slot`, from raw
/// memory, as `(page number, digest)`.
fn page_roots_from_raw(
    image: &MemoryImage,
    slot: u32,
    q: u32,
    pages: &[(u64, PageId)],
) -> Vec<(u64, Digest)> {
    let cell = image.cell_types()[slot as usize];
    let mut roots = vec![Digest::ZERO; pages.len()];
    hash_subtrees(
        cell,
        q,
        &|i| image.page(slot, pages[i].1),
        &mut roots,
        &mut [],
    );
    pages.iter().map(|p| p.0).zip(roots).collect()
}

/// The level-`l` nodes (`l ≥ q`) over the present pages `pages` (sorted, each node's pages
/// together), from raw memory: page roots folded up with zero hashes. Only nodes with a
/// present page below appear.
fn nodes_from_pages(
    image: &MemoryImage,
    slot: u32,
    q: u32,
    l: u32,
    pages: &[(u64, PageId)],
) -> Vec<(u64, Digest)> {
    let mut nodes = page_roots_from_raw(image, slot, q, pages);
    for level in q + 1..=l {
        nodes = fold_level(&nodes, level);
    }
    nodes
}

impl SlotNodes {
    fn page_digests(&self) -> usize {
        self.shape.page_digests() as usize
    }

    /// Position in `pages` of level `l`'s node `i` (`b ≤ l ≤ q`) in page `id`.
    #[inline]
    fn page_pos(&self, id: PageId, l: u32, i: u64) -> usize {
        let local = i & ((1u64 << (self.shape.page_levels - l)) - 1);
        id as usize * self.page_digests() + (self.shape.page_level_offset(l) + local) as usize
    }

    /// A stored level's node `(l, i)` (`l ≥ b`, and not strictly between `q` and `b`): from
    /// its page, its upper level, or the zero hash when nothing present lies below.
    fn node(&self, image: &MemoryImage, slot: u32, l: u32, i: u64) -> Digest {
        let s = &self.shape;
        if l <= s.page_levels {
            match image.page_id(slot, i >> (s.page_levels - l)) {
                Some(id) => self.pages[self.page_pos(id, l, i)],
                None => *zero(l),
            }
        } else {
            self.upper[(l - s.upper_base()) as usize].get(i, zero(l))
        }
    }

    /// The slot's root in the top tree: the top of its vertical path, or of its subtree
    /// when that is `address_height` tall.
    fn root(&self, image: &MemoryImage, slot: u32) -> Digest {
        match self.vertical.last() {
            Some(&d) => d,
            None => self.node(image, slot, self.shape.height, 0),
        }
    }

    /// `vertical[j] = compress(node below, zero[height + j])` (docs/design.md Part 1, "Memory
    /// layout and tree shape").
    fn recompute_vertical(&mut self, image: &MemoryImage, slot: u32) {
        let mut node = self.node(image, slot, self.shape.height, 0);
        for (j, v) in self.vertical.iter_mut().enumerate() {
            node = compress(&node, zero(self.shape.height + j as u32));
            *v = node;
        }
    }

    /// Builds the slot over `image`'s present pages of `slot`.
    fn build(image: &MemoryImage, slot: u32, shape: SlotShape, ah: u32) -> Result<Self> {
        let pages: Vec<(u64, PageId)> = image.pages(slot).collect();
        let q = shape.page_levels;
        let mut nodes = SlotNodes {
            shape,
            pages: Vec::new(),
            upper: (shape.upper_base()..=shape.height)
                .map(|l| Level::new(&shape, l))
                .collect(),
            vertical: vec![Digest::ZERO; (ah - shape.height) as usize],
            known_pages: pages.len(),
        };
        let roots = if shape.pages_store_nodes() {
            let stride = nodes.page_digests();
            nodes.pages = alloc_digests((pages.len() * stride) as u64, Digest::ZERO)?;
            let cell = image.cell_types()[slot as usize];
            nodes
                .pages
                .par_chunks_mut(stride * LANES)
                .enumerate()
                .for_each_init(
                    || (Vec::new(), Vec::new()),
                    |scratch, (g, out)| {
                        let raw = |p: usize| image.page(slot, (g * LANES + p) as PageId);
                        build_pages(cell, &shape, &raw, out, scratch)
                    },
                );
            pages
                .iter()
                .map(|&(n, id)| (n, nodes.pages[(id as usize + 1) * stride - 1]))
                .collect()
        } else {
            page_roots_from_raw(image, slot, q, &pages)
        };
        let mut level = roots;
        for l in q + 1..=shape.height {
            level = fold_level(&level, l);
            if l >= shape.upper_base() {
                let upper = &mut nodes.upper[(l - shape.upper_base()) as usize];
                for &(i, d) in &level {
                    upper.set(i, d);
                }
            }
        }
        nodes.recompute_vertical(image, slot);
        Ok(nodes)
    }

    /// Gives pages the image created since the last call their node arrays, each level
    /// filled with its zero hash (every block of a new page is zero but those the batch
    /// writes, whose ancestors the update recomputes).
    fn add_pages(&mut self, image: &MemoryImage, slot: u32) -> Result<()> {
        let stride = self.page_digests();
        let have = self.pages.len() / stride.max(1);
        let want = image.present_pages(slot);
        if stride == 0 || want <= have {
            return Ok(());
        }
        let s = self.shape;
        let mut fresh = Vec::with_capacity(stride);
        for l in s.base..=s.page_levels {
            fresh.extend(std::iter::repeat_n(*zero(l), 1 << (s.page_levels - l)));
        }
        self.pages
            .try_reserve((want - have) * stride)
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "cannot allocate tree nodes for {} new pages",
                    want - have
                ))
            })?;
        for _ in have..want {
            self.pages.extend_from_slice(&fresh);
        }
        Ok(())
    }

    /// Updates the slot for its sorted, distinct touched block keys `group` (the image
    /// already holds the new cells), logging in `log` every node it overwrites before the
    /// next fault point. With `witness`, `log.below` also keeps the new nodes below the
    /// base level of every recomputed subtree (pages must store nodes).
    fn update(
        &mut self,
        image: &MemoryImage,
        slot: u32,
        group: &[u64],
        log: &mut SlotUndo,
        witness: bool,
    ) -> Result<()> {
        let s = self.shape;
        let (b, q) = (s.base, s.page_levels);
        log.pages_len = self.pages.len();
        log.known_pages = self.known_pages;
        if image.present_pages(slot) > self.known_pages {
            log.capacities = Some((
                self.pages.capacity(),
                self.upper.iter().map(Level::capacity).collect(),
            ));
            self.known_pages = image.present_pages(slot);
        }
        self.add_pages(image, slot)?;
        let mut dirty: Vec<u64> = group.iter().map(|k| (k & 0xffff_ffff) >> b).collect();
        dirty.dedup();
        // One buffer for every level's fresh digests: no allocation per level.
        let mut fresh = Vec::with_capacity(dirty.len());
        let mut level = b;
        if s.pages_store_nodes() {
            // Level b from raw memory, then up to q inside the pages.
            let mut ids: Vec<PageId> = page_ids(image, slot, &dirty, q - b);
            let cell = image.cell_types()[slot as usize];
            let bb = BLOCK_CELLS * cell.bytes();
            let local = |i: u64| (i & ((1u64 << (q - b)) - 1)) as usize;
            fresh.resize(dirty.len(), Digest::ZERO);
            if witness {
                log.below = (0..b)
                    .map(|t| vec![Digest::ZERO; dirty.len() << (b - t)])
                    .collect();
            }
            hash_subtrees(
                cell,
                b,
                &|j| &image.page(slot, ids[j])[(local(dirty[j]) << b) * bb..],
                &mut fresh,
                &mut log.below,
            );
            self.swap_page_nodes(&ids, b, &dirty, &mut fresh, log);
            fault::point(|| format!("slot {slot} level {b}"))?;
            for l in b + 1..=q {
                parents_in_pages(&mut dirty, &mut ids);
                let pages = &self.pages;
                let at = |j: usize| self.page_pos(ids[j], l - 1, 2 * dirty[j]);
                let keep = witness.then_some(&mut log.pairs);
                compress_level(&mut fresh, dirty.len(), keep, |j| {
                    (pages[at(j)], pages[at(j) + 1])
                });
                self.swap_page_nodes(&ids, l, &dirty, &mut fresh, log);
                fault::point(|| format!("slot {slot} level {l}"))?;
            }
            level = q;
        } else {
            // Level b > q: each distinct ancestor's present pages, from raw memory.
            let mut pages = Vec::new();
            for &i in &dirty {
                pages.extend(image.pages_in(slot, i << (b - q)..(i + 1) << (b - q)));
            }
            let nodes = nodes_from_pages(image, slot, q, b, &pages);
            fresh.extend(nodes.iter().map(|n| n.1));
            self.set_upper(b, &dirty, &fresh, log);
            fault::point(|| format!("slot {slot} level {b}"))?;
        }
        for l in level + 1..=s.height {
            halve_dedup(&mut dirty);
            let this = &*self;
            let keep = witness.then_some(&mut log.pairs);
            compress_level(&mut fresh, dirty.len(), keep, |j| {
                (
                    this.node(image, slot, l - 1, 2 * dirty[j]),
                    this.node(image, slot, l - 1, 2 * dirty[j] + 1),
                )
            });
            self.set_upper(l, &dirty, &fresh, log);
            fault::point(|| format!("slot {slot} level {l}"))?;
        }
        log.vertical = self.vertical.clone();
        self.recompute_vertical(image, slot);
        fault::point(|| format!("slot {slot} vertical path"))
    }

    /// Writes fresh level-`l` page nodes `(ids[j], index[j])`, logging the old digests.
    fn swap_page_nodes(
        &mut self,
        ids: &[PageId],
        l: u32,
        index: &[u64],
        fresh: &mut [Digest],
        log: &mut SlotUndo,
    ) {
        log.page_nodes.reserve(fresh.len());
        for ((&id, &i), d) in ids.iter().zip(index).zip(fresh) {
            let pos = self.page_pos(id, l, i);
            std::mem::swap(&mut self.pages[pos], d);
            log.page_nodes.push((pos, *d));
        }
    }

    /// Writes upper-level `l` nodes `index[j] = fresh[j]`, logging what they replace.
    fn set_upper(&mut self, l: u32, index: &[u64], fresh: &[Digest], log: &mut SlotUndo) {
        let j = (l - self.shape.upper_base()) as usize;
        log.upper.reserve(index.len());
        for (&i, &d) in index.iter().zip(fresh) {
            let old = self.upper[j].set(i, d);
            log.upper.push((j, i, old));
        }
    }

    /// Puts back everything `log` recorded.
    fn roll_back(&mut self, log: SlotUndo) {
        for (pos, d) in log.page_nodes.into_iter().rev() {
            if pos < log.pages_len {
                self.pages[pos] = d;
            }
        }
        self.pages.truncate(log.pages_len);
        for (j, i, old) in log.upper.into_iter().rev() {
            self.upper[j].restore(i, old);
        }
        if let Some((pages, upper)) = log.capacities {
            self.pages.shrink_to(pages);
            for (level, cap) in self.upper.iter_mut().zip(upper) {
                level.shrink_to(cap);
            }
        }
        if !log.vertical.is_empty() {
            self.vertical = log.vertical;
        }
        self.known_pages = log.known_pages;
    }

    fn bytes(&self) -> u64 {
        (self.pages.capacity() + self.vertical.capacity()) as u64 * DIGEST_BYTES
            + self.upper.iter().map(Level::bytes).sum::<u64>()
    }
}

/// Builds the levels `b..=q` of up to [`LANES`] present pages, `out` holding their node
/// arrays back to back and `raw(p)` the bytes of the `p`-th. A level with at least
/// [`LANES`] nodes per page is computed inside each page; a narrower one (a page's top three
/// levels) across the pages together, so every packed permutation has its lanes full.
fn build_pages<'a>(
    cell: CellType,
    s: &SlotShape,
    raw: &(impl Fn(usize) -> &'a [u8] + Sync),
    out: &mut [Digest],
    scratch: &mut (Vec<Digest>, Vec<Digest>),
) {
    let (b, q) = (s.base, s.page_levels);
    let stride = s.page_digests() as usize;
    let pages = out.len() / stride;
    let bb = BLOCK_CELLS * cell.bytes();
    let at = |l: u32| s.page_level_offset(l) as usize;
    let mut across = Vec::new();
    for l in b..=q {
        let per = 1usize << (q - l);
        if per >= LANES {
            for (p, page) in out.chunks_mut(stride).enumerate() {
                let (below, level) = page.split_at_mut(at(l));
                let level = &mut level[..per];
                if l == b {
                    let src = raw(p);
                    hash_subtrees_seq(
                        cell,
                        b,
                        &|i| &src[(i << b) * bb..],
                        0,
                        level,
                        scratch,
                        &mut [],
                    );
                } else {
                    compress_pairs(&below[at(l - 1)..at(l - 1) + 2 * per], level);
                }
            }
            continue;
        }
        // Narrow: the level of every page at once, then back into each page.
        across.clear();
        across.resize(pages * per, Digest::ZERO);
        if l == b {
            let src = |i: usize| &raw(i / per)[((i % per) << b) * bb..];
            hash_subtrees_seq(cell, b, &src, 0, &mut across, scratch, &mut []);
        } else {
            let c = at(l - 1);
            let out = &*out;
            permute_many(&mut across, |i, st| {
                let child = (i / per) * stride + c + 2 * (i % per);
                st[..8].copy_from_slice(&out[child].0);
                st[8..].copy_from_slice(&out[child + 1].0);
            });
        }
        for (page, level) in out.chunks_mut(stride).zip(across.chunks(per)) {
            page[at(l)..at(l) + per].copy_from_slice(level);
        }
    }
}

/// Sorted distinct parents of sorted distinct indices.
fn parents(children: &[u64]) -> Vec<u64> {
    let mut up = children.to_vec();
    halve_dedup(&mut up);
    up
}

/// Replaces sorted distinct indices by their sorted distinct parents, in place.
fn halve_dedup(nodes: &mut Vec<u64>) {
    for i in nodes.iter_mut() {
        *i >>= 1;
    }
    nodes.dedup();
}

/// The page ids of sorted nodes `nodes` of a level `levels_to_page` below the page level:
/// one table lookup per page.
fn page_ids(image: &MemoryImage, slot: u32, nodes: &[u64], levels_to_page: u32) -> Vec<PageId> {
    let mut ids = Vec::with_capacity(nodes.len());
    let mut last: Option<(u64, PageId)> = None;
    for &i in nodes {
        let page = i >> levels_to_page;
        let id = match last {
            Some((p, id)) if p == page => id,
            // The batch wrote into every page it touches, so the page is present.
            _ => image.page_id(slot, page).unwrap_or(PageId::MAX),
        };
        last = Some((page, id));
        ids.push(id);
    }
    ids
}

/// Replaces sorted distinct in-page nodes `(ids[j], nodes[j])` by their distinct parents
/// (a parent lies in its children's page), in place.
fn parents_in_pages(nodes: &mut Vec<u64>, ids: &mut Vec<PageId>) {
    let mut n = 0;
    for j in 0..nodes.len() {
        let up = nodes[j] >> 1;
        if n == 0 || nodes[n - 1] != up {
            nodes[n] = up;
            ids[n] = ids[j];
            n += 1;
        }
    }
    nodes.truncate(n);
    ids.truncate(n);
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

/// Recomputes, for each distinct parent `p` of the sorted distinct `dirty` indices,
/// `parents[p] = compress(children[2p], children[2p+1])`. Returns the parents, sorted and
/// distinct, and the digests they held before.
fn update_parents(children: &[Digest], parent_level: &mut [Digest], dirty: &[u64]) -> LevelUndo {
    let up = parents(dirty);
    let mut fresh = Vec::new();
    compress_into(&mut fresh, up.len(), |j| {
        let c = 2 * up[j] as usize;
        (children[c], children[c + 1])
    });
    // Swapping leaves the old digests in `fresh`: the undo log costs no extra pass.
    for (&p, d) in up.iter().zip(&mut fresh) {
        std::mem::swap(&mut parent_level[p as usize], d);
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

impl CpuTree {
    /// Builds the tree over `image`'s present pages with `omitted_levels = k` (validated by
    /// [`crate::tree::build`]).
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] if node storage cannot be allocated.
    pub fn build(layout: MemoryLayout, image: Arc<MemoryImage>, k: u32) -> Result<Self> {
        let ah = layout.address_height();
        let slots = (0..layout.address_spaces().len())
            .map(|s| {
                SlotShape::of(&layout, s, k)
                    .map(|shape| SlotNodes::build(&image, s as u32, shape, ah))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
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
    /// block, page and node it overwrites before the next fault point. Only page allocation
    /// and an injected fault ([`fault::point`]) fail here; the caller then rolls back from
    /// `undo`.
    fn apply(
        &mut self,
        blocks: &[TouchedBlock],
        keys: &[u64],
        undo: &mut Undo,
        witness: bool,
    ) -> Result<()> {
        let image = Arc::make_mut(&mut self.image);
        undo.image = Some(image.write_blocks(blocks.iter().map(|b| (b.slot, b.block, &b.cells)))?);
        fault::point(|| "the raw image write".into())?;
        let mut touched_slots = Vec::new();
        for group in keys.chunk_by(|a, b| a >> 32 == b >> 32) {
            let slot = (group[0] >> 32) as u32;
            touched_slots.push(u64::from(slot));
            let Some(nodes) = self.slots[slot as usize].as_mut() else {
                continue;
            };
            let mut log = SlotUndo {
                slot: slot as usize,
                ..SlotUndo::default()
            };
            let r = nodes.update(&self.image, slot, group, &mut log, witness);
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
        for l in 1..self.top.len() {
            let (lower, upper) = self.top.split_at_mut(l);
            let dirty = undo.top.last().map_or(&[][..], |(d, _)| d.as_slice());
            let level = update_parents(&lower[l - 1], &mut upper[0], dirty);
            undo.top.push(level);
            fault::point(|| format!("top level {l}"))?;
        }
        Ok(())
    }

    /// Undoes a partly applied batch from its log: the image, its pages, every node and
    /// the root are as before the batch.
    fn roll_back(&mut self, undo: Undo) {
        for s in undo.slots.into_iter().rev() {
            if let Some(nodes) = self.slots[s.slot].as_mut() {
                nodes.roll_back(s);
            }
        }
        for (level, (indices, old)) in self.top.iter_mut().zip(undo.top) {
            for (i, d) in indices.into_iter().zip(old) {
                level[i as usize] = d;
            }
        }
        if let Some(image_undo) = undo.image {
            Arc::make_mut(&mut self.image).undo(image_undo);
        }
    }

    fn slot_root(&self, slot: usize) -> Digest {
        match self.slots.get(slot) {
            Some(Some(nodes)) => nodes.root(&self.image, slot as u32),
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

    /// The level-`l` node `i` of `slot` for `l ≤ b`, from raw memory: hashed from its page
    /// (`l ≤ q`; zero hash when absent) or folded from the page roots below it (`l > q`).
    fn raw_node(&self, slot: u32, s: &SlotShape, l: u32, i: u64) -> Digest {
        let q = s.page_levels;
        if l > q {
            let pages: Vec<_> = self
                .image
                .pages_in(slot, i << (l - q)..(i + 1) << (l - q))
                .collect();
            return nodes_from_pages(&self.image, slot, q, l, &pages)
                .first()
                .map_or(*zero(l), |n| n.1);
        }
        let Some(id) = self.image.page_id(slot, i >> (q - l)) else {
            return *zero(l);
        };
        let cell = self.image.cell_types()[slot as usize];
        let at = ((i & ((1u64 << (q - l)) - 1)) << l) as usize * BLOCK_CELLS * cell.bytes();
        let mut out = [Digest::ZERO];
        let page = self.image.page(slot, id);
        hash_subtrees_seq(
            cell,
            l,
            &|_| &page[at..],
            0,
            &mut out,
            &mut (Vec::new(), Vec::new()),
            &mut [],
        );
        out[0]
    }

    /// Siblings of `block` below the stored base level `b`: levels below `min(b, q)` from
    /// the block's level-`min(b, q)` ancestor, hashed once from its page; levels `q..b`
    /// (when `b > q`) each from raw memory.
    fn omitted_siblings(&self, slot: u32, s: &SlotShape, block: u64, out: &mut Vec<Digest>) {
        let low = s.base.min(s.page_levels);
        match self.image.page_id(slot, block >> s.page_levels) {
            None => out.extend_from_slice(&zero_hashes()[..low as usize]),
            Some(id) => {
                let cell = self.image.cell_types()[slot as usize];
                let bb = BLOCK_CELLS * cell.bytes();
                let page = self.image.page(slot, id);
                let first = (block >> low) << low;
                let at = (first & ((1u64 << s.page_levels) - 1)) as usize * bb;
                let mut cur = vec![Digest::ZERO; 1 << low];
                leaf_hash_many_canonical(&mut cur, |j, cells| {
                    *cells = cell.read_block(&page[at + j * bb..][..bb]);
                });
                for l in 0..low {
                    out.push(cur[(((block >> l) ^ 1) & ((1 << (low - l)) - 1)) as usize]);
                    let mut next = vec![Digest::ZERO; cur.len() / 2];
                    compress_pairs(&cur, &mut next);
                    cur = next;
                }
            }
        }
        for l in low..s.base {
            out.push(self.raw_node(slot, s, l, (block >> l) ^ 1));
        }
    }

    fn opening(&self, slot: u32, block: u64) -> Opening {
        let mut siblings = Vec::with_capacity(self.layout.opening_len());
        // Positions are checked, so the slot is non-empty.
        if let Some(nodes) = &self.slots[slot as usize] {
            let s = &nodes.shape;
            self.omitted_siblings(slot, s, block, &mut siblings);
            for l in s.base..s.height {
                siblings.push(nodes.node(&self.image, slot, l, (block >> l) ^ 1));
            }
            siblings.extend_from_slice(
                &zero_hashes()[s.height as usize..self.layout.address_height() as usize],
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
        match self.apply(blocks, &keys, &mut undo, false) {
            Ok(()) => Ok(self.root()),
            Err(e) => {
                self.roll_back(undo);
                Err(e)
            }
        }
    }

    fn update_with_witness(
        &mut self,
        blocks: &[TouchedBlock],
    ) -> Result<(Digest, Vec<crate::tree::WitnessRow>)> {
        self.update_witnessed(blocks)
    }

    fn openings(&self, positions: &[(u32, u64)]) -> Result<Vec<Opening>> {
        check_positions(&self.layout, positions)?;
        Ok(positions
            .par_iter()
            .map(|&(slot, block)| self.opening(slot, block))
            .collect())
    }

    fn memory_usage(&self) -> MemoryUsage {
        let slot_bytes: u64 = self.slots.iter().flatten().map(SlotNodes::bytes).sum();
        let top_digests: u64 = self.top.iter().map(|l| l.capacity() as u64).sum();
        MemoryUsage {
            host_node_bytes: slot_bytes + top_digests * DIGEST_BYTES,
            host_raw_bytes: self.image.total_bytes(),
            ..MemoryUsage::default()
        }
    }
}
