//! Host-side work lists for the device: the staging buffer that carries them in one upload, the
//! node resolver over the page table and sparse maps, and the plans of a build, an update batch
//! and a set of openings (docs/design.md "The stored tree", Update: the distinct base-level
//! nodes, then the distinct parents level by level, then vertical paths and the top tree),
//! worked out from the sorted touched set and the image's present pages.

use std::collections::HashMap;

use super::ffi::{
    as_bytes, HashTask, OpenTask, PageNode, PageSlot, PairTask, Plain, VerticalTask, WriteTask,
    CELL_DIGEST, HASH_OUT_FOLD, SUBTREE_LEVELS,
};
use super::index::{Geometry, Placement, SlotGeometry, SlotPlace, Upper};
use crate::error::{Error, Result};
use crate::image::{ImageUndo, MemoryImage};
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
/// allocation and one copy carry a whole call's lists to the device.
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

/// A sparse upper level's map: node index → position in the slot's sparse pool.
pub(crate) type SparseLevel = HashMap<u64, u64>;

/// Per slot, per upper level (`upper_base + j`), the sparse map (empty for dense levels and
/// empty slots).
pub(crate) type SparseMaps = Vec<Vec<SparseLevel>>;

/// Gives every sparse-level ancestor of `slot`'s pages `pages` (page numbers) a pool
/// position, in the order met; returns the `(level index j, node index)` entries it added.
pub(crate) fn add_sparse_ancestors(
    g: &SlotGeometry,
    maps: &mut [SparseLevel],
    pages: impl Iterator<Item = u64>,
) -> Vec<(usize, u64)> {
    let s = &g.shape;
    let mut added = Vec::new();
    let mut count: u64 = maps.iter().map(|m| m.len() as u64).sum();
    for page in pages {
        for l in s.upper_base()..=s.height {
            if g.upper(l) != Upper::Sparse {
                continue;
            }
            let j = (l - s.upper_base()) as usize;
            let i = page >> (l - s.page_levels);
            if let std::collections::hash_map::Entry::Vacant(e) = maps[j].entry(i) {
                e.insert(count);
                count += 1;
                added.push((j, i));
            }
        }
    }
    added
}

/// Resolves tree positions to node indices for one placement of the arrays.
pub(crate) struct Resolver<'a> {
    pub geometry: &'a Geometry,
    pub placement: &'a Placement,
    pub sparse: &'a SparseMaps,
    pub image: &'a MemoryImage,
}

/// Which array a launch reads children from and writes parents to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Base {
    /// The tree's node array.
    Nodes,
    /// The call's fold scratch ([`Fold`]).
    Fold,
}

/// One `compress_pairs` launch.
#[derive(Debug)]
pub(crate) struct Round {
    pub children: Base,
    pub parents: Base,
    pub tasks: Vec<PairTask>,
}

/// The base pairs a round may have, in launch order within a step.
const KINDS: [(Base, Base); 3] = [
    (Base::Fold, Base::Fold),
    (Base::Fold, Base::Nodes),
    (Base::Nodes, Base::Nodes),
];

/// Why one launch breaks the planner's rule (docs/design.md "The stored tree"): every
/// task writes its own node, and no task reads a node another task of the launch writes,
/// since a GPU runs a launch's threads in any order. `tasks` gives each task's written and
/// read node indices in the launch's write array; `same_array` says whether the reads come
/// from that array too (otherwise they cannot clash). `None` when the launch is sound.
fn launch_conflict(
    tasks: impl Iterator<Item = (Vec<u64>, Vec<u64>)> + Clone,
    same_array: bool,
) -> Option<String> {
    let mut writer: HashMap<u64, usize> = HashMap::new();
    for (t, (writes, _)) in tasks.clone().enumerate() {
        for w in writes {
            if let Some(other) = writer.insert(w, t) {
                return Some(format!("tasks {other} and {t} both write node {w}"));
            }
        }
    }
    if same_array {
        for (t, (_, reads)) in tasks.enumerate() {
            for r in reads {
                if let Some(&w) = writer.get(&r) {
                    if w != t {
                        return Some(format!("task {t} reads node {r}, which task {w} writes"));
                    }
                }
            }
        }
    }
    None
}

/// Debug builds: panics (naming the launch) when a pair launch breaks the planner's rule
/// (see [`launch_conflict`]).
fn debug_check_pairs(what: &str, tasks: &[PairTask], same_array: bool) {
    if cfg!(debug_assertions) {
        let conflict = launch_conflict(
            tasks
                .iter()
                .map(|t| (vec![t.parent], vec![t.left, t.right])),
            same_array,
        );
        debug_assert!(conflict.is_none(), "planner: {what}: {conflict:?}");
    }
}

/// Debug builds: checks every launch of `rounds` (see [`debug_check_pairs`]).
fn debug_check_rounds(what: &str, rounds: &[Round]) {
    for (r, round) in rounds.iter().enumerate() {
        debug_check_pairs(
            &format!(
                "{what} round {r} ({:?} -> {:?})",
                round.children, round.parents
            ),
            &round.tasks,
            round.children == round.parents,
        );
    }
}

/// Pair tasks collected by step: step `r` of every slot (or opening) goes into one launch per
/// base pair, since different slots never read each other's nodes.
#[derive(Default)]
pub(crate) struct Rounds {
    steps: Vec<[Vec<PairTask>; 3]>,
}

impl Rounds {
    fn push(&mut self, step: usize, kind: (Base, Base), task: PairTask) {
        if self.steps.len() <= step {
            self.steps.resize_with(step + 1, Default::default);
        }
        let k = KINDS.iter().position(|&x| x == kind).unwrap_or(2);
        self.steps[step][k].push(task);
    }

    /// The launches, in order.
    pub fn into_rounds(self) -> Vec<Round> {
        let mut out = Vec::new();
        for step in self.steps {
            for (tasks, (children, parents)) in step.into_iter().zip(KINDS) {
                if !tasks.is_empty() {
                    out.push(Round {
                        children,
                        parents,
                        tasks,
                    });
                }
            }
        }
        out
    }
}

/// A call's fold scratch: `zero[0..=address_height]` (copied from the node array), then page
/// roots hashed from raw memory and the nodes folded from them, for stored levels above the
/// pages when `b > q` and for such openings' siblings; openings' siblings below the page
/// level; and the outputs of subtree launches below the last (subtrees taller than
/// [`SUBTREE_LEVELS`]).
pub(crate) struct Fold {
    /// Digests used so far.
    pub digests: u64,
    /// Subtrees to hash from raw memory before the pair rounds (page roots, openings'
    /// siblings; an update's stored base-level nodes too), staged by [`subtree_launches`].
    pub roots: Vec<SubtreeJob>,
    /// Whether anything reads the scratch.
    pub used: bool,
}

impl Fold {
    fn new(address_height: u32) -> Self {
        Fold {
            digests: u64::from(address_height) + 1,
            roots: Vec::new(),
            used: false,
        }
    }

    fn alloc(&mut self, n: u64) -> u64 {
        self.used = true;
        let at = self.digests;
        self.digests += n;
        at
    }

    /// Fold index of `zero[l]`.
    fn zero(&mut self, l: u32) -> u64 {
        self.used = true;
        u64::from(l)
    }
}

/// One subtree to fold from raw memory: the `2^height` blocks of `cell` at raw byte `raw_byte`
/// into digest `out` of the node array, or of the fold scratch when `to_fold`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SubtreeJob {
    pub out: u64,
    pub to_fold: bool,
    pub raw_byte: u64,
    pub cell: u32,
    pub height: u32,
}

/// One `hash_tasks` launch of the block-level subtree kernel.
#[derive(Debug)]
pub(crate) struct SubtreeLaunch {
    /// Ascending by `first_thread`, tallest first (so each task is aligned to its width).
    pub tasks: Vec<HashTask>,
    /// Threads of the launch: the last task's `first_thread + 2^levels`.
    pub threads: u64,
    /// The tallest task's levels.
    pub levels: u32,
}

/// Bytes of one block of cell code `cell` (8, 16 or 32).
fn block_bytes_of(cell: u32) -> u64 {
    8u64 << cell
}

/// Stages `jobs` into subtree launches of at most [`SUBTREE_LEVELS`] levels each: a job of
/// height `H ≤ SUBTREE_LEVELS` is one task of the first launch; a taller one is
/// `2^(H − SUBTREE_LEVELS)` tasks of `SUBTREE_LEVELS` levels writing into the fold scratch,
/// and the rest of it, `H − SUBTREE_LEVELS` levels over those digests, goes to the next launch
/// the same way. So a height-`H` subtree takes `max(1, ⌈H / SUBTREE_LEVELS⌉)` launches and
/// every thread loads one node and computes at most one compress per level step. Within a
/// launch tasks are ordered tallest first, so each starts at a multiple of its width and none
/// straddles a 256-thread block; small subtrees share blocks.
pub(crate) fn subtree_launches(mut jobs: Vec<SubtreeJob>, fold: &mut Fold) -> Vec<SubtreeLaunch> {
    let mut launches = Vec::new();
    // Sources of later launches are fold digests: `raw_byte` then holds a fold index.
    while !jobs.is_empty() {
        let mut tasks = Vec::with_capacity(jobs.len());
        let mut next = Vec::new();
        for j in jobs {
            let flags = if j.to_fold { HASH_OUT_FOLD } else { 0 };
            if j.height <= SUBTREE_LEVELS {
                tasks.push(HashTask {
                    out_node: j.out,
                    src: j.raw_byte,
                    first_thread: 0,
                    cell: j.cell,
                    levels: j.height as u16,
                    flags,
                });
                continue;
            }
            let parts = 1u64 << (j.height - SUBTREE_LEVELS);
            let first = fold.alloc(parts);
            let step = match j.cell {
                CELL_DIGEST => 1u64 << SUBTREE_LEVELS,
                c => block_bytes_of(c) << SUBTREE_LEVELS,
            };
            for p in 0..parts {
                tasks.push(HashTask {
                    out_node: first + p,
                    src: j.raw_byte + p * step,
                    first_thread: 0,
                    cell: j.cell,
                    levels: SUBTREE_LEVELS as u16,
                    flags: HASH_OUT_FOLD,
                });
            }
            next.push(SubtreeJob {
                raw_byte: first,
                cell: CELL_DIGEST,
                height: j.height - SUBTREE_LEVELS,
                ..j
            });
        }
        tasks.sort_by_key(|t| std::cmp::Reverse(t.levels));
        let mut at = 0u64;
        for t in &mut tasks {
            t.first_thread = at;
            at += 1u64 << t.levels;
        }
        launches.push(SubtreeLaunch {
            levels: tasks.first().map_or(0, |t| u32::from(t.levels)),
            threads: at,
            tasks,
        });
        jobs = next;
    }
    launches
}

/// Where a uniform subtree launch (`build_base`) reads its nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// Raw blocks of `cell` from byte `offset` of the raw array.
    Raw { offset: u64, cell: u32 },
    /// Digests from fold index `at`.
    Fold { at: u64 },
}

/// One `build_base` launch: `count` subtrees of `levels` over consecutive nodes of `src`,
/// written to consecutive digests from `out_at` in `out`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UniformLaunch {
    pub src: Source,
    pub levels: u32,
    pub out: Base,
    pub out_at: u64,
    pub count: u64,
}

/// The launches of `count` height-`height` subtrees over consecutive nodes of `src` into
/// `out` from `out_at`: below the top [`SUBTREE_LEVELS`]-or-fewer levels, launches of
/// `SUBTREE_LEVELS` levels into the fold scratch (the same rule as [`subtree_launches`]).
fn uniform_launches(
    src: Source,
    height: u32,
    out: Base,
    out_at: u64,
    count: u64,
    fold: &mut Fold,
) -> Vec<UniformLaunch> {
    let mut launches = Vec::new();
    let (mut src, mut height) = (src, height);
    while height > SUBTREE_LEVELS {
        height -= SUBTREE_LEVELS;
        let n = count << height;
        let at = fold.alloc(n);
        launches.push(UniformLaunch {
            src,
            levels: SUBTREE_LEVELS,
            out: Base::Fold,
            out_at: at,
            count: n,
        });
        src = Source::Fold { at };
    }
    launches.push(UniformLaunch {
        src,
        levels: height,
        out,
        out_at,
        count,
    });
    launches
}

/// Sorted distinct parents of sorted distinct indices.
fn parents_of(children: &[u64]) -> Vec<u64> {
    let mut up: Vec<u64> = children.iter().map(|i| i >> 1).collect();
    up.dedup();
    up
}

impl Resolver<'_> {
    fn slot(&self, slot: u32) -> Result<(&SlotGeometry, &SlotPlace)> {
        match (
            self.geometry.slots.get(slot as usize),
            self.placement.slots.get(slot as usize),
        ) {
            (Some(Some(g)), Some(Some(p))) => Ok((g, p)),
            _ => Err(internal(format!("slot {slot} has no device nodes"))),
        }
    }

    /// Node index of node `i` of a stored level `l ≥ b` of `slot` (or of the page root,
    /// `l = q`, when `b ≤ q`): where it is stored, or `zero[l]`'s entry when nothing present
    /// lies below it.
    pub fn node(&self, slot: u32, l: u32, i: u64) -> Result<u64> {
        Ok(self
            .stored(slot, l, i)?
            .unwrap_or_else(|| self.geometry.zero(l)))
    }

    /// Node index of a node that must be stored (a parent being written).
    fn written(&self, slot: u32, l: u32, i: u64) -> Result<u64> {
        self.stored(slot, l, i)?
            .ok_or_else(|| internal(format!("slot {slot} level {l} node {i} is not stored")))
    }

    /// Where node `(l, i)` of `slot` is stored, `None` when nothing present lies below it.
    fn stored(&self, slot: u32, l: u32, i: u64) -> Result<Option<u64>> {
        let (g, p) = self.slot(slot)?;
        let s = &g.shape;
        if l <= s.page_levels {
            let up = s.page_levels - l;
            return Ok(self
                .image
                .page_id(slot, i >> up)
                .map(|id| g.page_node(p, l, u64::from(id), i & ((1u64 << up) - 1))));
        }
        Ok(match g.upper(l) {
            Upper::Dense(first) => Some(first + i),
            Upper::Sparse => self.sparse[slot as usize][(l - s.upper_base()) as usize]
                .get(&i)
                .map(|&pos| p.sparse_nodes + pos),
        })
    }

    /// Pair tasks for the distinct ancestors of `dirty` (sorted distinct level-`from` nodes
    /// of `slot`, `from ≥ b`, already written) up to the slot's height, level `from + 1 + r`
    /// at step `step0 + r`.
    fn plan_up(
        &self,
        slot: u32,
        from: u32,
        mut dirty: Vec<u64>,
        step0: usize,
        rounds: &mut Rounds,
    ) -> Result<()> {
        let (g, place) = self.slot(slot)?;
        let q = g.shape.page_levels;
        for l in from + 1..=g.shape.height {
            dirty = parents_of(&dirty);
            let step = step0 + (l - from - 1) as usize;
            // Inside the pages a parent's children share its page: one page-table lookup
            // per page and level (the dirty list is sorted, so a page's parents are
            // consecutive).
            let mut page: Option<(u64, u64)> = None;
            for &p in &dirty {
                let task = if l <= q {
                    let number = p >> (q - l);
                    let id = match page {
                        Some((n, id)) if n == number => id,
                        _ => {
                            let id = self.image.page_id(slot, number).ok_or_else(|| {
                                internal(format!("slot {slot} page {number} is absent"))
                            })?;
                            page = Some((number, u64::from(id)));
                            u64::from(id)
                        }
                    };
                    let local = p & ((1u64 << (q - l)) - 1);
                    let left = g.page_node(place, l - 1, id, 2 * local);
                    PairTask {
                        parent: g.page_node(place, l, id, local),
                        left,
                        right: left + 1,
                    }
                } else {
                    PairTask {
                        parent: self.written(slot, l, p)?,
                        left: self.node(slot, l - 1, 2 * p)?,
                        right: self.node(slot, l - 1, 2 * p + 1)?,
                    }
                };
                rounds.push(step, (Base::Nodes, Base::Nodes), task);
            }
        }
        Ok(())
    }

    /// Hash tasks for the roots of `slot`'s present pages `pages` (`(page number, id)`,
    /// sorted) into the fold scratch; returns `(page number, fold index)`.
    fn fold_roots(
        &self,
        slot: u32,
        pages: &[(u64, u32)],
        fold: &mut Fold,
    ) -> Result<Vec<(u64, u64)>> {
        let (g, p) = self.slot(slot)?;
        let first = fold.alloc(pages.len() as u64);
        Ok(pages
            .iter()
            .enumerate()
            .map(|(j, &(n, id))| {
                fold.roots.push(SubtreeJob {
                    out: first + j as u64,
                    to_fold: true,
                    raw_byte: p.raw + u64::from(id) * g.page_bytes,
                    cell: super::cell_code(g.cell),
                    height: g.shape.page_levels,
                });
                (n, first + j as u64)
            })
            .collect())
    }

    /// The present pages of `slot` under level-`l` node `i` (`l ≥ q`).
    fn pages_under(&self, slot: u32, q: u32, l: u32, i: u64) -> Vec<(u64, u32)> {
        self.image
            .pages_in(slot, i << (l - q)..(i + 1) << (l - q))
            .collect()
    }
}

/// The error for a broken invariant of the planner (never expected; reported instead of a
/// wrong write).
fn internal(what: String) -> Error {
    Error::Unavailable(format!(
        "internal error in the device tree's planner: {what}"
    ))
}

/// Folds `nodes` (sorted distinct `(index, fold index)` at level `from`) up to level `to`
/// in the fold scratch, level `from + 1 + r` at step `step0 + r`; a missing sibling is
/// `zero[l]`. The last level's parents go to the node array at `last(i)` when given, else
/// into the scratch. Returns the level-`to` nodes as `(index, fold or node index)`.
fn fold_levels(
    mut nodes: Vec<(u64, u64)>,
    from: u32,
    to: u32,
    step0: usize,
    last: Option<&dyn Fn(u64) -> Result<u64>>,
    fold: &mut Fold,
    rounds: &mut Rounds,
) -> Result<Vec<(u64, u64)>> {
    for l in from + 1..=to {
        let step = step0 + (l - from - 1) as usize;
        let z = fold.zero(l - 1);
        let mut up = Vec::with_capacity(nodes.len());
        let mut j = 0;
        while j < nodes.len() {
            let (c, at) = nodes[j];
            let (left, right) = if c & 1 == 1 {
                (z, at)
            } else if nodes.get(j + 1).is_some_and(|&(n, _)| n == c + 1) {
                j += 1;
                (at, nodes[j].1)
            } else {
                (at, z)
            };
            let (parent, kind) = match last {
                Some(f) if l == to => (f(c >> 1)?, (Base::Fold, Base::Nodes)),
                _ => (fold.alloc(1), (Base::Fold, Base::Fold)),
            };
            rounds.push(
                step,
                kind,
                PairTask {
                    parent,
                    left,
                    right,
                },
            );
            up.push((c >> 1, parent));
            j += 1;
        }
        nodes = up;
    }
    Ok(nodes)
}

/// The work of a build, beyond the per-slot page launches (which need no task lists).
pub(crate) struct BuildPlan {
    /// `(first node index, count, level)`: dense upper levels to fill with `zero[level]`.
    pub fills: Vec<(u64, u64, u32)>,
    /// Per slot, the `build_base` launch that hashes from its raw pages (`None` without
    /// pages): the first stage of its stored base level (`b ≤ q`) or of its pages' roots
    /// into the scratch (`b > q`). The build queues it per uploaded chunk of pages.
    pub from_raw: Vec<Option<UniformLaunch>>,
    /// The later stages, over the first stages' digests in the scratch, in order.
    pub bases: Vec<UniformLaunch>,
    /// Pair launches: folds, then the upper levels of every slot.
    pub rounds: Vec<Round>,
    /// Every top-tree leaf's vertical task.
    pub vertical: Vec<VerticalTask>,
    /// The fold scratch's size and use.
    pub fold: Fold,
}

impl Resolver<'_> {
    /// Plans the build over every present page.
    pub fn plan_build(&self) -> Result<BuildPlan> {
        let g = self.geometry;
        let mut fold = Fold::new(g.address_height);
        let mut rounds = Rounds::default();
        let mut fills = Vec::new();
        let mut bases = Vec::new();
        let mut from_raw = vec![None; g.slots.len()];
        for (slot, sg) in g.slots.iter().enumerate() {
            let Some(sg) = sg else { continue };
            let slot = slot as u32;
            let s = &sg.shape;
            for l in s.upper_base()..=s.height {
                if let Upper::Dense(first) = sg.upper(l) {
                    fills.push((first, s.width(l), l));
                }
            }
            let pages: Vec<(u64, u32)> = self.image.pages(slot).collect();
            if pages.is_empty() {
                continue;
            }
            let place = self.slot(slot)?.1;
            let raw = Source::Raw {
                offset: place.raw,
                cell: super::cell_code(sg.cell),
            };
            if s.pages_store_nodes() {
                // Level b from raw memory, levels b+1..=q by whole-level launches; above, the
                // page roots' ancestors.
                let (first, count) = sg.page_level(place, s.base);
                let launches = uniform_launches(raw, s.base, Base::Nodes, first, count, &mut fold);
                let mut stages = launches.into_iter();
                from_raw[slot as usize] = stages.next();
                bases.extend(stages);
                let numbers = pages.iter().map(|p| p.0).collect();
                self.plan_up(slot, s.page_levels, numbers, 0, &mut rounds)?;
            } else {
                let first = fold.alloc(pages.len() as u64);
                let count = pages.len() as u64;
                let launches =
                    uniform_launches(raw, s.page_levels, Base::Fold, first, count, &mut fold);
                let mut stages = launches.into_iter();
                from_raw[slot as usize] = stages.next();
                bases.extend(stages);
                let roots = pages
                    .iter()
                    .map(|&(n, id)| (n, first + u64::from(id)))
                    .collect();
                let b = s.base;
                let stored = |i| self.written(slot, b, i);
                let level_b = fold_levels(
                    roots,
                    s.page_levels,
                    b,
                    0,
                    Some(&stored),
                    &mut fold,
                    &mut rounds,
                )?;
                let dirty = level_b.iter().map(|n| n.0).collect();
                self.plan_up(slot, b, dirty, (b - s.page_levels) as usize, &mut rounds)?;
            }
        }
        let vertical = (0..1u64 << g.address_space_height)
            .map(|slot| self.vertical_task(slot))
            .collect::<Result<_>>()?;
        let rounds = rounds.into_rounds();
        debug_check_rounds("build", &rounds);
        Ok(BuildPlan {
            fills,
            from_raw,
            bases,
            rounds,
            vertical,
            fold,
        })
    }

    /// The vertical task of top-tree leaf `slot`: a slot's path, or `zero[address_height]`
    /// for an empty (or missing) slot.
    fn vertical_task(&self, slot: u64) -> Result<VerticalTask> {
        let g = self.geometry;
        Ok(match g.slots.get(slot as usize) {
            Some(Some(sg)) => VerticalTask {
                slot_root: self.node(slot as u32, sg.shape.height, 0)?,
                first_vertical: sg.vertical,
                top_leaf: g.top(0, slot),
                height: sg.shape.height,
                count: g.address_height - sg.shape.height,
            },
            _ => VerticalTask {
                slot_root: g.zero(g.address_height),
                first_vertical: 0,
                top_leaf: g.top(0, slot),
                height: g.address_height,
                count: 0,
            },
        })
    }
}

/// The work of one update batch, every list in launch order.
pub(crate) struct UpdatePlan {
    /// `(first node index, count, level)`: the new pages' levels, filled with `zero[level]`.
    pub fills: Vec<(u64, u64, u32)>,
    /// The touched blocks in pages that existed before the batch (new pages are uploaded
    /// whole from the host image, which already holds the batch).
    pub writes: Vec<WriteTask>,
    /// Their bytes, packed: each block's 8, 16 or 32 bytes at its task's `src_byte`.
    pub write_bytes: Vec<u8>,
    /// Subtree launches: each distinct stored base-level ancestor of a touched block
    /// (`b ≤ q`), once, and the page roots of `b > q` slots (into the scratch).
    pub subtrees: Vec<SubtreeLaunch>,
    /// The page levels of each touched slot with `b ≤ q`, indexed by `page_nodes[_].slot`.
    pub page_slots: Vec<PageSlot>,
    /// The written base-level nodes as page coordinates, sorted by slot and block: the
    /// device derives their ancestors up to the page level from these (`page_steps`
    /// launches), so no pair list is made or uploaded for the levels inside the pages.
    pub page_nodes: Vec<PageNode>,
    /// Launches of the page rounds: the most levels `q − b` of a listed slot.
    pub page_steps: u32,
    /// Pair launches, after the page rounds: folds, then each touched slot's levels above
    /// its pages (above its base when `b > q`).
    pub rounds: Vec<Round>,
    /// The touched slots' vertical paths and top-tree leaves.
    pub vertical: Vec<VerticalTask>,
    /// `top_rounds[r]`: the distinct top-tree nodes at level `r + 1` above touched slots.
    pub top_rounds: Vec<Vec<PairTask>>,
    /// The scratch's size (its jobs are staged into `subtrees`).
    pub fold: Fold,
}

impl Resolver<'_> {
    /// Plans `blocks`, whose sorted `keys` [`crate::tree::validated_keys`] returned, against
    /// the image after the batch's write (`undo` tells which pages it created) and this
    /// resolver's placement (already grown for them).
    pub fn plan_update(
        &self,
        blocks: &[TouchedBlock],
        keys: &[u64],
        undo: &ImageUndo,
    ) -> Result<UpdatePlan> {
        let g = self.geometry;
        let mut plan = UpdatePlan {
            fills: Vec::new(),
            writes: Vec::with_capacity(blocks.len()),
            write_bytes: Vec::new(),
            subtrees: Vec::new(),
            page_slots: Vec::new(),
            page_nodes: Vec::new(),
            page_steps: 0,
            rounds: Vec::new(),
            vertical: Vec::new(),
            top_rounds: Vec::new(),
            fold: Fold::new(g.address_height),
        };
        let mut rounds = Rounds::default();
        let mut touched_slots = Vec::new();
        for group in keys.chunk_by(|a, b| a >> 32 == b >> 32) {
            let slot = (group[0] >> 32) as u32;
            let (sg, place) = self.slot(slot)?;
            touched_slots.push(u64::from(slot));
            let s = &sg.shape;
            let (b, q) = (s.base, s.page_levels);
            let before = undo.pages_before(slot) as u64;
            if s.pages_store_nodes() && place.pages > before {
                for l in b..=q {
                    let (first, _) = sg.page_level(place, l);
                    let per = 1u64 << (q - l);
                    plan.fills
                        .push((first + before * per, (place.pages - before) * per, l));
                }
            }
            let mut dirty: Vec<u64> = group.iter().map(|k| (k & 0xffff_ffff) >> b).collect();
            dirty.dedup();
            if s.pages_store_nodes() {
                let bb = sg.block_bytes();
                let table = plan.page_slots.len() as u32;
                let level_b = sg.page_node(place, b, 0, 0);
                plan.page_slots.push(PageSlot {
                    page_nodes: level_b,
                    pages: place.pages,
                    base: b,
                    top: q,
                });
                plan.page_steps = plan.page_steps.max(q - b);
                for &i in &dirty {
                    let page = i >> (q - b);
                    let id = self.image.page_id(slot, page).ok_or_else(|| {
                        internal(format!("slot {slot} page {page} was written but is absent"))
                    })?;
                    let local = i & ((1u64 << (q - b)) - 1);
                    let coord = (u64::from(id) << (q - b)) + local;
                    plan.fold.roots.push(SubtreeJob {
                        out: level_b + coord,
                        to_fold: false,
                        raw_byte: place.raw + u64::from(id) * sg.page_bytes + (local << b) * bb,
                        cell: super::cell_code(sg.cell),
                        height: b,
                    });
                    plan.page_nodes.push(PageNode {
                        coord,
                        slot: table,
                        pad: 0,
                    });
                }
                // The pages' levels b + 1 ..= q are the device's page rounds; pairs from q.
                let mut pages = dirty;
                for v in &mut pages {
                    *v >>= q - b;
                }
                pages.dedup();
                self.plan_up(slot, q, pages, (q - b) as usize, &mut rounds)?;
            } else {
                let mut pages = Vec::new();
                for &i in &dirty {
                    pages.extend(self.pages_under(slot, q, b, i));
                }
                let roots = self.fold_roots(slot, &pages, &mut plan.fold)?;
                let stored = |i| self.written(slot, b, i);
                let level_b =
                    fold_levels(roots, q, b, 0, Some(&stored), &mut plan.fold, &mut rounds)?;
                let up = level_b.iter().map(|n| n.0).collect();
                self.plan_up(slot, b, up, (b - q) as usize, &mut rounds)?;
            }
            plan.vertical.push(self.vertical_task(u64::from(slot))?);
        }
        for blk in blocks {
            let (sg, place) = self.slot(blk.slot)?;
            let page = blk.block >> sg.shape.page_levels;
            let Some(id) = self.image.page_id(blk.slot, page) else {
                return Err(internal(format!("slot {} page {page} is absent", blk.slot)));
            };
            if u64::from(id) >= undo.pages_before(blk.slot) as u64 {
                continue;
            }
            let local = blk.block & ((1u64 << sg.shape.page_levels) - 1);
            let src_byte = u32::try_from(plan.write_bytes.len()).map_err(|_| {
                internal(format!(
                    "a batch's packed block bytes exceed 4 GiB at {} blocks",
                    plan.writes.len()
                ))
            })?;
            plan.writes.push(WriteTask {
                raw_byte: place.raw + u64::from(id) * sg.page_bytes + local * sg.block_bytes(),
                src_byte,
                cell: super::cell_code(sg.cell),
            });
            let size = sg.cell.bytes();
            for &v in &blk.cells {
                let at = plan.write_bytes.len();
                plan.write_bytes.resize(at + size, 0);
                sg.cell.write(v, &mut plan.write_bytes[at..]);
            }
        }
        plan.subtrees = subtree_launches(std::mem::take(&mut plan.fold.roots), &mut plan.fold);
        plan.rounds = rounds.into_rounds();
        debug_check_rounds("update", &plan.rounds);
        let mut dirty = touched_slots;
        for l in 1..=g.address_space_height {
            let up = parents_of(&dirty);
            plan.top_rounds.push(
                up.iter()
                    .map(|&p| PairTask {
                        parent: g.top(l, p),
                        left: g.top(l - 1, 2 * p),
                        right: g.top(l - 1, 2 * p + 1),
                    })
                    .collect(),
            );
            dirty = up;
        }
        if cfg!(debug_assertions) {
            debug_check_update(g, &plan);
        }
        Ok(plan)
    }
}

/// Debug builds: panics when a subtree launch breaks the planner's rule (see
/// [`launch_conflict`]): outputs (node array or fold scratch) distinct, and no task reads a
/// fold digest another task of the launch writes.
fn debug_check_subtrees(what: &str, launch: &SubtreeLaunch) {
    if cfg!(debug_assertions) {
        // Fold indices are tagged with the top bit to keep the two arrays apart.
        const FOLD: u64 = 1 << 63;
        let conflict = launch_conflict(
            launch.tasks.iter().map(|t| {
                let out = t.out_node
                    | if t.flags & HASH_OUT_FOLD != 0 {
                        FOLD
                    } else {
                        0
                    };
                let reads = match t.cell {
                    CELL_DIGEST => (t.src..t.src + (1u64 << t.levels))
                        .map(|i| i | FOLD)
                        .collect(),
                    _ => Vec::new(),
                };
                (vec![out], reads)
            }),
            true,
        );
        debug_assert!(conflict.is_none(), "planner: {what}: {conflict:?}");
    }
}

/// Debug builds: panics when a launch of an update plan other than its pair rounds breaks
/// the planner's rule (see [`launch_conflict`]): the scatter's blocks, the subtree launches
/// (base hashes and fold roots), the vertical paths (writes: vertical nodes and top leaf; reads: slot root and
/// zero table, all in the node array) and each top-tree level.
fn debug_check_update(g: &Geometry, plan: &UpdatePlan) {
    // The page rounds' rule: at every level, the nodes sharing an ancestor are adjacent, so
    // exactly one of them (the first) computes it.
    for step in 0..plan.page_steps {
        let mut seen = std::collections::HashSet::new();
        let mut last = None;
        for n in &plan.page_nodes {
            let s = &plan.page_slots[n.slot as usize];
            if s.base + 1 + step > s.top {
                continue;
            }
            let ancestor = (n.slot, n.coord >> (step + 1));
            if last != Some(ancestor) {
                debug_assert!(
                    seen.insert(ancestor),
                    "planner: page round {step}: ancestor {ancestor:?} in two runs"
                );
                last = Some(ancestor);
            }
        }
    }
    let writes = launch_conflict(
        plan.writes.iter().map(|w| (vec![w.raw_byte], Vec::new())),
        false,
    );
    debug_assert!(writes.is_none(), "planner: update scatter: {writes:?}");
    for (n, launch) in plan.subtrees.iter().enumerate() {
        debug_check_subtrees(&format!("update subtree launch {n}"), launch);
    }
    let vertical = launch_conflict(
        plan.vertical.iter().map(|v| {
            let span = u64::from(v.count);
            let mut writes: Vec<u64> = (v.first_vertical..v.first_vertical + span).collect();
            writes.push(v.top_leaf);
            let mut reads = vec![v.slot_root];
            reads.extend((v.height..v.height + v.count).map(|l| g.zero(l)));
            (writes, reads)
        }),
        true,
    );
    debug_assert!(vertical.is_none(), "planner: update vertical: {vertical:?}");
    for (l, top) in plan.top_rounds.iter().enumerate() {
        debug_check_pairs(&format!("update top level {}", l + 1), top, true);
    }
}

/// The work of a set of openings.
pub(crate) struct OpeningPlan {
    /// One task per position.
    pub tasks: Vec<OpenTask>,
    /// The node indices the tasks name (fold, then node array), per task in level order.
    pub listed: Vec<u64>,
    /// Subtree launches: the siblings below the page level (in the block's own page) and the
    /// page roots under siblings between the page level and `b`, all into the scratch.
    pub subtrees: Vec<SubtreeLaunch>,
    /// Fold launches for siblings between the page level and `b` (all in the scratch).
    pub rounds: Vec<Round>,
    /// The scratch's size.
    pub fold: Fold,
}

impl Resolver<'_> {
    /// Plans openings of validated `positions`. Each sibling below the stored base level `b`
    /// is hashed into the scratch before the openings launch, per opening (two openings under
    /// the same sibling hash it twice): below the page level as one subtree of the block's
    /// page, above it folded from its present pages.
    pub fn plan_openings(&self, positions: &[(u32, u64)]) -> Result<OpeningPlan> {
        let g = self.geometry;
        let mut fold = Fold::new(g.address_height);
        let mut rounds = Rounds::default();
        let mut tasks = Vec::with_capacity(positions.len());
        let mut listed = Vec::new();
        for &(slot, block) in positions {
            let (sg, place) = self.slot(slot)?;
            let s = &sg.shape;
            let (b, q, h) = (s.base, s.page_levels, s.height);
            let local = block & ((1u64 << q) - 1);
            let first_listed = listed.len() as u64;
            let page = self.image.page_id(slot, block >> q);
            let bb = sg.block_bytes();
            for l in 0..q.min(b) {
                // The sibling subtree inside the block's page, or zero[l] in an absent page.
                let Some(id) = page else {
                    listed.push(fold.zero(l));
                    continue;
                };
                let at = fold.alloc(1);
                fold.roots.push(SubtreeJob {
                    out: at,
                    to_fold: true,
                    raw_byte: place.raw
                        + u64::from(id) * sg.page_bytes
                        + (((local >> l) ^ 1) << l) * bb,
                    cell: super::cell_code(sg.cell),
                    height: l,
                });
                listed.push(at);
            }
            for l in q.min(b)..b {
                let sibling = (block >> l) ^ 1;
                let pages = self.pages_under(slot, q, l, sibling);
                if pages.is_empty() {
                    listed.push(fold.zero(l));
                    continue;
                }
                let roots = self.fold_roots(slot, &pages, &mut fold)?;
                let top = fold_levels(roots, q, l, 0, None, &mut fold, &mut rounds)?;
                listed.push(top.first().map_or(fold.zero(l), |n| n.1));
            }
            for l in b..h {
                listed.push(self.node(slot, l, (block >> l) ^ 1)?);
            }
            tasks.push(OpenTask {
                first_listed,
                slot,
                height: h,
                listed_from: b,
                pad: 0,
            });
        }
        let subtrees = subtree_launches(std::mem::take(&mut fold.roots), &mut fold);
        for (n, launch) in subtrees.iter().enumerate() {
            debug_check_subtrees(&format!("openings subtree launch {n}"), launch);
        }
        let rounds = rounds.into_rounds();
        debug_check_rounds("openings", &rounds);
        Ok(OpeningPlan {
            tasks,
            listed,
            subtrees,
            rounds,
            fold,
        })
    }
}
