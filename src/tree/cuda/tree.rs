//! `CudaTree`: the device tree on any [`Device`], over the image's present pages, mirroring
//! the CPU tree's stored shape and update algorithm (see [`crate::tree::cpu`] and
//! [`crate::tree::shape`]) with every hash computed by the kernels.
//!
//! Device memory is two exactly sized arrays (see [`super::index`]): the node array (the
//! fixed part, then each slot's page levels and sparse pool) and the raw array (each slot's
//! present pages). Device page = the image's page id, so the image's page table is the
//! device's page table; the host also keeps, per sparse level, the map from node index to
//! pool position. A batch that creates pages moves the tree to bigger arrays inside the
//! batch: allocate, copy the old contents device-to-device on the same stream, upload the
//! new pages, fill their levels with zero hashes, then update as usual; the old arrays are
//! freed after the batch's one host synchronisation.

use std::sync::Arc;

use super::device::{Device, DevicePtr, FusedArgs};
use super::ffi::{
    as_bytes_mut, Phase, PHASE_PAGE_ROUND, PHASE_PAIRS_FOLD, PHASE_PAIRS_FOLD_TO_NODES,
    PHASE_PAIRS_NODES, PHASE_VERTICAL,
};
use super::index::{moves, Geometry, Placement};
use super::plan::{
    add_sparse_ancestors, Base, BuildPlan, Fold, Resolver, Round, Section, Source, SparseLevel,
    SparseMaps, Staging, SubtreeLaunch, UniformLaunch, UpdatePlan,
};
use super::words::digest_from_words;
use crate::error::{Error, Result};
use crate::hash::{Digest, DIGEST_BYTES};
use crate::image::{ImageUndo, MemoryImage};
use crate::layout::MemoryLayout;
use crate::tree::{
    check_image, check_omitted_levels, check_positions, validated_keys, Backend, MemoryTree,
    MemoryUsage, Opening, TouchedBlock,
};

/// A device allocation owned by a tree; freed by its owner.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    ptr: DevicePtr,
    bytes: u64,
}

/// A device allocation freed when the guard drops (after the call's sync), unless kept.
struct Allocation<'d, D: Device> {
    device: &'d D,
    buffer: Buffer,
    armed: bool,
}

impl<'d, D: Device> Allocation<'d, D> {
    /// Allocates `bytes` (at least 16, so an empty list still has an address).
    fn new(device: &'d D, bytes: u64) -> Result<Self> {
        let ptr = device.alloc(bytes.max(16))?;
        Ok(Allocation {
            device,
            buffer: Buffer { ptr, bytes },
            armed: true,
        })
    }

    /// The address of `section` inside this buffer.
    fn at(&self, section: Section) -> DevicePtr {
        self.buffer.ptr.offset(section.offset)
    }

    /// Hands the allocation to a new owner instead of freeing it.
    fn keep(mut self) -> Buffer {
        self.armed = false;
        self.buffer
    }
}

/// Bytes of one chunk of a slot's page upload at build: about an eighth of the slot's pages
/// (so copies and hashing overlap even for small images), at most 8 MiB (one pinned staging
/// buffer of `CudaDevice`), always whole pages.
fn build_chunk_bytes(total: u64, page_bytes: u64) -> u64 {
    let target = (total / 8).clamp(page_bytes, 8 << 20);
    (target / page_bytes).max(1) * page_bytes
}

/// The fold scratch `fold` asks for (`fold.digests` digests), when the plan uses one.
fn fold_scratch<'d, D: Device>(device: &'d D, fold: &Fold) -> Result<Option<Allocation<'d, D>>> {
    fold.used
        .then(|| Allocation::new(device, fold.digests * DIGEST_BYTES))
        .transpose()
}

/// The address of an optional allocation, `or` without one.
fn ptr_or<D: Device>(a: &Option<Allocation<'_, D>>, or: DevicePtr) -> DevicePtr {
    a.as_ref().map_or(or, |a| a.buffer.ptr)
}

impl<D: Device> Drop for Allocation<'_, D> {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: allocated by `Allocation::new` on this device and not kept, so nothing
            // else frees it; frees are ordered after the work queued on it.
            unsafe { self.device.free(self.buffer.ptr) };
        }
    }
}

/// How a batch failed: before anything was queued (the tree is as it was) or after (the
/// device state is unknown and the tree is lost).
enum Failure {
    Unchanged(Error),
    Lost(Error),
}

/// The arrays one update writes: the tree's own, or bigger ones the batch moves to.
#[derive(Clone, Copy)]
struct Targets {
    nodes: DevicePtr,
    raw: DevicePtr,
    old_nodes: DevicePtr,
    old_raw: DevicePtr,
    staging: DevicePtr,
    fold: DevicePtr,
}

/// The device tree (module docs).
///
/// Ownership: the tree keeps raw memory (and every host buffer it copies from) alive until
/// its stream has synchronised, which every call does before returning, on errors too.
/// Every device allocation a call needs (outputs included) is made before its first upload,
/// so no early return can leave a copy queued from a host buffer about to be dropped (the
/// emulator's deferred copies check this in `tests/cuda_emulated_faults.rs`).
///
/// A failed batch leaves the tree, its image and its pages unchanged when validation, the
/// host page allocation or a device allocation fails (nothing was queued); a device failure
/// after that marks the tree lost (every later update or opening returns
/// [`Error::Unavailable`]) and still restores the host image, so the image never holds a
/// batch the root does not.
pub struct CudaTree<D: Device> {
    device: D,
    layout: MemoryLayout,
    omitted_levels: u32,
    image: Arc<MemoryImage>,
    geometry: Geometry,
    /// Where each slot's pages and sparse pool lie in the arrays the tree holds.
    placement: Placement,
    /// Per slot and upper level: sparse node index → pool position.
    sparse: SparseMaps,
    nodes: Option<Buffer>,
    raw: Option<Buffer>,
    root: Digest,
    lost: Option<String>,
}

impl<D: Device> Drop for CudaTree<D> {
    fn drop(&mut self) {
        for b in [self.nodes.take(), self.raw.take()].into_iter().flatten() {
            // SAFETY: allocated by this tree on this device and never used again.
            unsafe { self.device.free(b.ptr) };
        }
    }
}

/// `(present pages, sparse nodes)` of each slot.
fn sizes<'a>(
    image: &'a MemoryImage,
    sparse: &'a SparseMaps,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    sparse.iter().enumerate().map(|(slot, levels)| {
        (
            image.present_pages(slot as u32) as u64,
            levels.iter().map(|m| m.len() as u64).sum(),
        )
    })
}

impl<D: Device> CudaTree<D> {
    /// Builds the tree on `device` over `image`'s present pages with `omitted_levels = k`:
    /// uploads each slot's page buffer, hashes its pages' levels with one launch per level
    /// (or, when `b > q`, their roots into a scratch and folds them to level `b`), then the
    /// ancestors of the present pages level by level, the vertical paths and the top tree,
    /// and synchronises once.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `k > MAX_OMITTED_LEVELS` or an image that does not
    /// match `layout`; [`Error::ResourceExhausted`] when device memory runs out;
    /// [`Error::Unavailable`] for a device failure.
    pub fn build(device: D, layout: MemoryLayout, image: Arc<MemoryImage>, k: u32) -> Result<Self> {
        check_omitted_levels(k)?;
        check_image(&layout, &image)?;
        let geometry = Geometry::new(&layout, k);
        let mut sparse: SparseMaps = geometry
            .slots
            .iter()
            .map(|g| {
                g.as_ref()
                    .map_or(Vec::new(), |g| vec![SparseLevel::new(); g.upper.len()])
            })
            .collect();
        for (slot, g) in geometry.slots.iter().enumerate() {
            if let Some(g) = g {
                let pages = image.pages(slot as u32).map(|p| p.0);
                add_sparse_ancestors(g, &mut sparse[slot], pages);
            }
        }
        let placement = geometry.place(sizes(&image, &sparse))?;
        let mut tree = CudaTree {
            device,
            layout,
            omitted_levels: k,
            image,
            geometry,
            placement,
            sparse,
            nodes: None,
            raw: None,
            root: Digest::ZERO,
            lost: None,
        };
        let node_bytes = tree.placement.node_digests * DIGEST_BYTES;
        tree.nodes = Some(Buffer {
            ptr: tree.device.alloc(node_bytes)?,
            bytes: node_bytes,
        });
        let raw_bytes = tree.placement.raw_bytes;
        if raw_bytes > 0 {
            tree.raw = Some(Buffer {
                ptr: tree.device.alloc(raw_bytes)?,
                bytes: raw_bytes,
            });
        }
        tree.root = tree.build_on_device()?;
        Ok(tree)
    }

    /// The device this tree runs on.
    pub fn device(&self) -> &D {
        &self.device
    }

    fn nodes_ptr(&self) -> DevicePtr {
        self.nodes.map_or(DevicePtr(0), |b| b.ptr)
    }

    fn raw_ptr(&self) -> DevicePtr {
        self.raw.map_or(DevicePtr(0), |b| b.ptr)
    }

    fn resolver<'a>(&'a self, placement: &'a Placement) -> Resolver<'a> {
        Resolver {
            geometry: &self.geometry,
            placement,
            sparse: &self.sparse,
            image: &self.image,
        }
    }

    fn check_live(&self) -> Result<()> {
        match &self.lost {
            None => Ok(()),
            Some(why) => Err(Error::Unavailable(format!(
                "device tree lost after an earlier device failure: {why}"
            ))),
        }
    }

    /// Reads the root from the node array at `nodes`; this waits for the stream (the call's
    /// one host sync).
    fn read_root(&self, nodes: DevicePtr) -> Result<Digest> {
        let mut words = [0u32; 8];
        let at = nodes.digest(self.geometry.top(self.geometry.address_space_height, 0));
        // SAFETY: the root lies in the node array.
        unsafe { self.device.copy_to_host(as_bytes_mut(&mut words), at)? };
        Ok(digest_from_words(&words))
    }

    /// Launches `rounds` (their task lists at `sections` of the staging buffer).
    ///
    /// # Safety
    /// The tasks' indices lie in the arrays at `nodes` and `fold`; the staging buffer holds
    /// the sections.
    unsafe fn launch_rounds(
        &self,
        rounds: &[(Section, Base, Base)],
        staging: DevicePtr,
        nodes: DevicePtr,
        fold: DevicePtr,
    ) -> Result<()> {
        let base = |b: Base| if b == Base::Nodes { nodes } else { fold };
        for &(section, children, parents) in rounds {
            // SAFETY: as the caller guarantees.
            unsafe {
                self.device.compress_pairs(
                    base(children),
                    base(parents),
                    staging.offset(section.offset),
                    section.count,
                )?
            };
        }
        Ok(())
    }

    fn build_on_device(&self) -> Result<Digest> {
        let plan = self.resolver(&self.placement).plan_build()?;
        let mut staging = Staging::default();
        let vertical = staging.push(&plan.vertical);
        let rounds = push_rounds(&mut staging, &plan.rounds);
        let scratch = Allocation::new(&self.device, staging.bytes().len() as u64)?;
        let fold = fold_scratch(&self.device, &plan.fold)?;
        let fold_ptr = ptr_or(&fold, DevicePtr(0));
        let queued = self
            .settle(self.build_launches(&plan, &staging, &scratch, vertical, &rounds, fold_ptr));
        // Only now, after the sync, may the host copy of the lists go.
        drop(staging);
        queued
    }

    /// The uploads and every build launch, ending with the root's read-back.
    fn build_launches(
        &self,
        plan: &BuildPlan,
        staging: &Staging,
        scratch: &Allocation<'_, D>,
        vertical: Section,
        rounds: &[(Section, Base, Base)],
        fold: DevicePtr,
    ) -> Result<Digest> {
        let g = &self.geometry;
        let (nodes, raw) = (self.nodes_ptr(), self.raw_ptr());
        let zero = nodes.digest(g.zero(0));
        // SAFETY: the scratch holds the staging bytes, which (like `self.image`) outlive the
        // sync in `read_root` (or in `settle`, on an error); every index and count below comes
        // from the geometry and placement that sized the node and raw arrays, each slot's page
        // buffer fits its raw region, and the fold scratch holds `plan.fold.digests`.
        unsafe {
            self.device
                .copy_to_device(scratch.buffer.ptr, staging.bytes())?;
            self.device.zero_hashes(zero, g.address_height + 1)?;
            for &(first, count, l) in &plan.fills {
                self.device
                    .fill_digests(nodes.digest(first), zero.digest(u64::from(l)), count)?;
            }
            if fold != DevicePtr(0) {
                self.copy_zeros_to_fold(nodes, fold)?;
            }
            // Each slot's pages go up in chunks of whole pages, and the launches that hash
            // from raw memory are queued per chunk right after its copy, so hashing overlaps
            // the rest of the upload; the launches over their outputs follow.
            for (slot, place) in self.placement.slots.iter().enumerate() {
                let (Some(place), Some(sg)) = (place, &g.slots[slot]) else {
                    continue;
                };
                let pages = self.image.page_buffer(slot as u32);
                if pages.is_empty() {
                    continue;
                }
                let (q, page_bytes) = (sg.shape.page_levels, sg.page_bytes);
                let chunk = build_chunk_bytes(pages.len() as u64, page_bytes);
                let from_raw = plan.from_raw.get(slot).copied().flatten();
                let mut per_chunk = |offset: u64, len: u64| -> Result<()> {
                    let Some(UniformLaunch {
                        src: Source::Raw { cell, .. },
                        levels,
                        out,
                        out_at,
                        ..
                    }) = from_raw
                    else {
                        return Ok(());
                    };
                    // Subtrees of `levels ≤ q` levels tile each page.
                    let per_page = 1u64 << (q - levels);
                    let (first, count) = (offset / page_bytes, len / page_bytes);
                    let out = if out == Base::Nodes { nodes } else { fold };
                    self.device.build_base(
                        raw.offset(place.raw + offset),
                        cell,
                        levels,
                        out.digest(out_at + first * per_page),
                        count * per_page,
                    )
                };
                self.device
                    .upload_chunked(raw.offset(place.raw), pages, chunk, &mut per_chunk)?;
            }
            self.launch_uniform(&plan.bases, raw, nodes, fold)?;
            for (slot, sg) in g.slots.iter().enumerate() {
                let (Some(sg), Some(place)) = (sg, &self.placement.slots[slot]) else {
                    continue;
                };
                let s = &sg.shape;
                if place.pages == 0 || !s.pages_store_nodes() {
                    continue;
                }
                for l in s.base + 1..=s.page_levels {
                    let (children, _) = sg.page_level(place, l - 1);
                    let (parents, count) = sg.page_level(place, l);
                    self.device.compress_level(
                        nodes.digest(children),
                        nodes.digest(parents),
                        count,
                    )?;
                }
            }
            self.launch_rounds(rounds, scratch.buffer.ptr, nodes, fold)?;
            self.device
                .vertical(nodes, zero, scratch.at(vertical), vertical.count)?;
            for l in 1..=g.address_space_height {
                self.device.compress_level(
                    nodes.digest(g.top(l - 1, 0)),
                    nodes.digest(g.top(l, 0)),
                    1u64 << (g.address_space_height - l),
                )?;
            }
        }
        self.read_root(nodes)
    }

    /// Launches the uniform subtree launches `launches` (`build_base`), in order.
    ///
    /// # Safety
    /// Their sources and outputs lie in the arrays at `raw`, `nodes` and `fold`.
    unsafe fn launch_uniform(
        &self,
        launches: &[UniformLaunch],
        raw: DevicePtr,
        nodes: DevicePtr,
        fold: DevicePtr,
    ) -> Result<()> {
        for u in launches {
            let (src, cell) = match u.src {
                Source::Raw { offset, cell } => (raw.offset(offset), cell),
                Source::Fold { at } => (fold.digest(at), super::ffi::CELL_DIGEST),
            };
            let out = if u.out == Base::Nodes { nodes } else { fold };
            // SAFETY: as the caller guarantees.
            unsafe {
                self.device
                    .build_base(src, cell, u.levels, out.digest(u.out_at), u.count)?
            };
        }
        Ok(())
    }

    /// Launches the subtree launches `launches` (their task lists at `sections` of the
    /// staging buffer at `staging`), in order.
    ///
    /// # Safety
    /// The tasks' sources and outputs lie in the arrays at `raw`, `nodes` and `fold`.
    unsafe fn launch_subtrees(
        &self,
        launches: &[(Section, u64, u32)],
        staging: DevicePtr,
        raw: DevicePtr,
        nodes: DevicePtr,
        fold: DevicePtr,
    ) -> Result<()> {
        for &(section, threads, levels) in launches {
            // SAFETY: as the caller guarantees.
            unsafe {
                self.device.hash_tasks(
                    raw,
                    fold,
                    nodes,
                    staging.offset(section.offset),
                    section.count,
                    threads,
                    levels,
                )?
            };
        }
        Ok(())
    }

    /// Copies the zero table into the first `address_height + 1` digests of a fold scratch.
    ///
    /// # Safety
    /// `nodes` is the node array, after the zero table was written; `fold` holds at least
    /// `address_height + 1` digests.
    unsafe fn copy_zeros_to_fold(&self, nodes: DevicePtr, fold: DevicePtr) -> Result<()> {
        let g = &self.geometry;
        // SAFETY: as the caller guarantees.
        unsafe {
            self.device.copy_device_to_device(
                fold,
                nodes.digest(g.zero(0)),
                (u64::from(g.address_height) + 1) * DIGEST_BYTES,
            )
        }
    }

    /// Plans and runs one validated batch whose host image write `undo` describes (the
    /// sparse maps already hold the new pages' ancestors) and returns the new root, with the
    /// tree on the arrays the batch ended on.
    fn apply(
        &mut self,
        blocks: &[TouchedBlock],
        keys: &[u64],
        undo: &ImageUndo,
    ) -> Result<Digest, Failure> {
        let place = self
            .geometry
            .place(sizes(&self.image, &self.sparse))
            .map_err(Failure::Unchanged)?;
        let plan = self
            .resolver(&place)
            .plan_update(blocks, keys, undo)
            .map_err(Failure::Unchanged)?;
        let mut staging = Staging::default();
        let sections = UpdateSections::push(&mut staging, &plan);
        // Every allocation comes before anything is queued, so running out of memory here
        // leaves the tree as it was.
        let device = &self.device;
        let grow_nodes = place.node_digests != self.placement.node_digests;
        let grow_raw = place.raw_bytes != self.placement.raw_bytes;
        let allocate = || -> Result<_> {
            let nodes = match grow_nodes {
                true => Some(Allocation::new(device, place.node_digests * DIGEST_BYTES)?),
                false => None,
            };
            let raw = match grow_raw {
                true => Some(Allocation::new(device, place.raw_bytes)?),
                false => None,
            };
            let scratch = Allocation::new(device, staging.bytes().len() as u64)?;
            let fold = fold_scratch(device, &plan.fold)?;
            Ok((nodes, raw, scratch, fold))
        };
        let (new_nodes, new_raw, scratch, fold) = allocate().map_err(Failure::Unchanged)?;
        let targets = Targets {
            nodes: ptr_or(&new_nodes, self.nodes_ptr()),
            raw: ptr_or(&new_raw, self.raw_ptr()),
            old_nodes: self.nodes_ptr(),
            old_raw: self.raw_ptr(),
            staging: scratch.buffer.ptr,
            fold: ptr_or(&fold, DevicePtr(0)),
        };
        let queued =
            self.settle(self.update_launches(&plan, &staging, &sections, &place, undo, targets));
        // Only now, after the sync, may the host copy of the lists go.
        drop(staging);
        let root = queued.map_err(Failure::Lost)?;
        // Synchronised: the old arrays are no longer read; move to the new ones.
        for (new, old) in [(new_nodes, &mut self.nodes), (new_raw, &mut self.raw)] {
            if let Some(new) = new {
                if let Some(old) = old.replace(new.keep()) {
                    // SAFETY: the tree's previous array, replaced and never used again.
                    unsafe { device.free(old.ptr) };
                }
            }
        }
        drop(scratch);
        drop(fold);
        self.placement = place;
        Ok(root)
    }

    /// The uploads, moves and launches of one planned batch, ending with the root's
    /// read-back (the batch's one host sync).
    fn update_launches(
        &self,
        plan: &UpdatePlan,
        staging: &Staging,
        sections: &UpdateSections,
        place: &Placement,
        undo: &ImageUndo,
        t: Targets,
    ) -> Result<Digest> {
        let g = &self.geometry;
        let zero = t.nodes.digest(g.zero(0));
        // Host-to-device copies first (see `build_launches`): the lists, then the pages the
        // batch created, whole from the host image (which already holds the batch).
        // SAFETY: the staging allocation holds the staging bytes; a new page's bytes fit its
        // slot's raw region in the (new) raw array; both sources outlive the sync in
        // `read_root` (or in `settle`).
        unsafe {
            self.device.copy_to_device(t.staging, staging.bytes())?;
            for (slot, p) in place.slots.iter().enumerate() {
                let (Some(p), Some(sg)) = (p, &g.slots[slot]) else {
                    continue;
                };
                let before = undo.pages_before(slot as u32) as u64;
                if p.pages > before {
                    let bytes =
                        &self.image.page_buffer(slot as u32)[(before * sg.page_bytes) as usize..];
                    self.device
                        .copy_to_device(t.raw.offset(p.raw + before * sg.page_bytes), bytes)?;
                }
            }
        }
        // SAFETY: every move, index and count comes from the old and new placements that sized
        // the arrays (moves stay inside both, old and new arrays are distinct allocations);
        // task lists lie in the staging allocation; the fold scratch holds
        // `plan.fold.digests`.
        unsafe {
            if t.nodes != t.old_nodes || t.raw != t.old_raw {
                let (node_moves, raw_moves) = moves(g, &self.placement, place);
                if t.nodes != t.old_nodes {
                    for (dst, src, len) in node_moves {
                        self.device.copy_device_to_device(
                            t.nodes.digest(dst),
                            t.old_nodes.digest(src),
                            len * DIGEST_BYTES,
                        )?;
                    }
                }
                if t.raw != t.old_raw {
                    for (dst, src, len) in raw_moves {
                        self.device.copy_device_to_device(
                            t.raw.offset(dst),
                            t.old_raw.offset(src),
                            len,
                        )?;
                    }
                }
            }
            if t.fold != DevicePtr(0) {
                self.copy_zeros_to_fold(t.nodes, t.fold)?;
            }
            for &(first, count, l) in &plan.fills {
                self.device.fill_digests(
                    t.nodes.digest(first),
                    zero.digest(u64::from(l)),
                    count,
                )?;
            }
            let s = sections;
            self.device.scatter(
                t.raw,
                t.staging.offset(s.writes.offset),
                t.staging.offset(s.write_bytes.offset),
                s.writes.count,
            )?;
            self.launch_subtrees(&s.subtrees, t.staging, t.raw, t.nodes, t.fold)?;
            for &op in &s.separate {
                self.run_upper(op, s, t, zero)?;
            }
            if s.phases.count > 0 {
                self.device.fused(&FusedArgs {
                    phases: t.staging.offset(s.phases.offset),
                    phase_count: s.phases.count as u32,
                    nodes: t.nodes,
                    fold: t.fold,
                    zero,
                    staging: t.staging,
                    page_slots: t.staging.offset(s.page_slots.offset),
                    page_nodes: t.staging.offset(s.page_nodes.offset),
                })?;
            }
        }
        self.read_root(t.nodes)
    }

    /// Launches one op of an update's upper part on its own.
    ///
    /// # Safety
    /// As in `update_launches`: the op's tasks lie in the staging allocation and index the
    /// arrays of `t`.
    unsafe fn run_upper(
        &self,
        op: UpperOp,
        s: &UpdateSections,
        t: Targets,
        zero: DevicePtr,
    ) -> Result<()> {
        // SAFETY: as the caller guarantees.
        unsafe {
            match op {
                UpperOp::PageRound(step) => self.device.page_round(
                    t.nodes,
                    t.staging.offset(s.page_slots.offset),
                    t.staging.offset(s.page_nodes.offset),
                    s.page_nodes.count,
                    step,
                ),
                UpperOp::Pairs(section, children, parents) => {
                    self.launch_rounds(&[(section, children, parents)], t.staging, t.nodes, t.fold)
                }
                UpperOp::Vertical(section) => self.device.vertical(
                    t.nodes,
                    zero,
                    t.staging.offset(section.offset),
                    section.count,
                ),
            }
        }
    }

    /// Passes `result` on; on an error, first waits for the stream (ignoring a second
    /// failure), so queued copies are done before their host buffers are dropped.
    fn settle<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            let _ = self.device.synchronize();
        }
        result
    }

    /// Bytes of the host's sparse maps (a `u64` key and a `u64` pool position per entry).
    fn map_bytes(&self) -> u64 {
        self.sparse
            .iter()
            .flatten()
            .map(|m| m.capacity() as u64 * 16)
            .sum()
    }
}

/// Tasks of a phase above which it gets a launch of its own rather than a place in the fused
/// tail (whose one block of 512 threads takes two passes at this size).
const FUSED_MAX_TASKS: u64 = 1024;

/// One launch of an update above its base level, before the narrow ones are fused.
#[derive(Clone, Copy, Debug)]
enum UpperOp {
    /// A page round's step over the page list.
    PageRound(u32),
    /// Pair tasks: their section, the children's and the parents' array.
    Pairs(Section, Base, Base),
    /// Vertical tasks.
    Vertical(Section),
}

/// The fused kernel's phase kind for `op`, `None` for one it does not run (pairs from the
/// node array into the fold scratch, which no update makes).
fn phase_kind(op: &UpperOp) -> Option<u32> {
    Some(match *op {
        UpperOp::PageRound(_) => PHASE_PAGE_ROUND,
        UpperOp::Pairs(_, Base::Nodes, Base::Nodes) => PHASE_PAIRS_NODES,
        UpperOp::Pairs(_, Base::Fold, Base::Fold) => PHASE_PAIRS_FOLD,
        UpperOp::Pairs(_, Base::Fold, Base::Nodes) => PHASE_PAIRS_FOLD_TO_NODES,
        UpperOp::Pairs(_, Base::Nodes, Base::Fold) => return None,
        UpperOp::Vertical(_) => PHASE_VERTICAL,
    })
}

/// Where an update's lists lie in its staging buffer, and how its upper part launches.
struct UpdateSections {
    writes: Section,
    write_bytes: Section,
    subtrees: Vec<(Section, u64, u32)>,
    page_slots: Section,
    page_nodes: Section,
    /// The upper part's wide launches, in order, each on its own.
    separate: Vec<UpperOp>,
    /// The narrow rest, as the phases of one fused launch (none when fewer than two).
    phases: Section,
}

impl UpdateSections {
    fn push(staging: &mut Staging, plan: &UpdatePlan) -> Self {
        let writes = staging.push(&plan.writes);
        let write_bytes = staging.push(&plan.write_bytes);
        let subtrees = push_subtrees(staging, &plan.subtrees);
        let page_slots = staging.push(&plan.page_slots);
        let page_nodes = staging.push(&plan.page_nodes);
        // In dependency order: page rounds, pair rounds, vertical paths, top-tree levels.
        let mut ops: Vec<UpperOp> = (0..plan.page_steps).map(UpperOp::PageRound).collect();
        ops.extend(
            push_rounds(staging, &plan.rounds)
                .into_iter()
                .map(|(section, c, p)| UpperOp::Pairs(section, c, p)),
        );
        ops.push(UpperOp::Vertical(staging.push(&plan.vertical)));
        for r in &plan.top_rounds {
            ops.push(UpperOp::Pairs(staging.push(r), Base::Nodes, Base::Nodes));
        }
        let tasks = |op: &UpperOp| match op {
            UpperOp::PageRound(_) => page_nodes.count,
            UpperOp::Pairs(s, ..) | UpperOp::Vertical(s) => s.count,
        };
        ops.retain(|op| tasks(op) > 0);
        // The longest narrow suffix is fused: the levels near the root, where a launch's
        // fixed cost outweighs its few permutations.
        let split = ops
            .iter()
            .rposition(|op| tasks(op) > FUSED_MAX_TASKS || phase_kind(op).is_none())
            .map_or(0, |i| i + 1);
        let (separate, narrow) = if ops.len() - split >= 2 {
            (ops[..split].to_vec(), &ops[split..])
        } else {
            (ops, &[][..])
        };
        let phases: Vec<Phase> = narrow
            .iter()
            .map(|op| {
                let (section, step) = match *op {
                    UpperOp::PageRound(step) => (page_nodes, step),
                    UpperOp::Pairs(section, ..) | UpperOp::Vertical(section) => (section, 0),
                };
                Phase {
                    tasks_byte: section.offset,
                    count: tasks(op),
                    kind: phase_kind(op).unwrap_or(PHASE_PAIRS_NODES),
                    step,
                }
            })
            .collect();
        UpdateSections {
            writes,
            write_bytes,
            subtrees,
            page_slots,
            page_nodes,
            separate,
            phases: staging.push(&phases),
        }
    }
}

/// Stages every subtree launch's tasks; returns each launch's section, threads and levels.
fn push_subtrees(staging: &mut Staging, launches: &[SubtreeLaunch]) -> Vec<(Section, u64, u32)> {
    launches
        .iter()
        .map(|l| (staging.push(&l.tasks), l.threads, l.levels))
        .collect()
}

/// Stages every round's tasks; returns each round's section and bases.
fn push_rounds(staging: &mut Staging, rounds: &[Round]) -> Vec<(Section, Base, Base)> {
    rounds
        .iter()
        .map(|r| (staging.push(&r.tasks), r.children, r.parents))
        .collect()
}

impl<D: Device> MemoryTree for CudaTree<D> {
    fn backend(&self) -> Backend {
        Backend::Cuda
    }

    fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    fn omitted_levels(&self) -> u32 {
        self.omitted_levels
    }

    fn root(&self) -> Digest {
        self.root
    }

    fn image(&self) -> &Arc<MemoryImage> {
        &self.image
    }

    fn update(&mut self, blocks: &[TouchedBlock]) -> Result<Digest> {
        self.check_live()?;
        let keys = validated_keys(&self.layout, blocks)?;
        if blocks.is_empty() {
            return Ok(self.root);
        }
        // The host image is written first: it assigns the new pages their ids, which are
        // their device pages, so the plan can address them. Any failure below undoes it, so
        // the image never holds a batch the root does not.
        let undo = Arc::make_mut(&mut self.image)
            .write_blocks(blocks.iter().map(|b| (b.slot, b.block, &b.cells)))?;
        let mut added = Vec::new();
        for (slot, g) in self.geometry.slots.iter().enumerate() {
            if let Some(g) = g {
                let before = undo.pages_before(slot as u32);
                let new = (before..self.image.present_pages(slot as u32))
                    .map(|id| self.image.page_number(slot as u32, id as u32));
                for (j, i) in add_sparse_ancestors(g, &mut self.sparse[slot], new) {
                    added.push((slot, j, i));
                }
            }
        }
        let failure = match self.apply(blocks, &keys, &undo) {
            Ok(root) => {
                self.root = root;
                return Ok(root);
            }
            Err(f) => f,
        };
        for (slot, j, i) in added {
            self.sparse[slot][j].remove(&i);
        }
        Arc::make_mut(&mut self.image).undo(undo);
        match failure {
            Failure::Unchanged(e) => Err(e),
            Failure::Lost(e) => {
                self.lost = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn openings(&self, positions: &[(u32, u64)]) -> Result<Vec<Opening>> {
        self.check_live()?;
        check_positions(&self.layout, positions)?;
        let per = self.geometry.opening_len() as usize;
        let mut words = vec![0u32; positions.len() * per * 8];
        if !words.is_empty() {
            let plan = self.resolver(&self.placement).plan_openings(positions)?;
            let mut staging = Staging::default();
            let tasks = staging.push(&plan.tasks);
            let listed = staging.push(&plan.listed);
            let subtrees = push_subtrees(&mut staging, &plan.subtrees);
            let rounds = push_rounds(&mut staging, &plan.rounds);
            let scratch = Allocation::new(&self.device, staging.bytes().len() as u64)?;
            let fold = fold_scratch(&self.device, &plan.fold)?;
            let fold_ptr = ptr_or(&fold, DevicePtr(0));
            let out = Allocation::new(&self.device, (words.len() * 4) as u64)?;
            let (nodes, raw) = (self.nodes_ptr(), self.raw_ptr());
            let g = &self.geometry;
            // SAFETY: `out` holds count · opening_len digests; the fold scratch holds
            // `plan.fold.digests`; task fields come from the geometry and placement of these
            // arrays; `staging` outlives the sync in `copy_to_host` (or in `settle`).
            let read = unsafe {
                self.device
                    .copy_to_device(scratch.buffer.ptr, staging.bytes())
                    .and_then(|()| match fold_ptr {
                        DevicePtr(0) => Ok(()),
                        f => self.copy_zeros_to_fold(nodes, f),
                    })
                    .and_then(|()| {
                        self.launch_subtrees(&subtrees, scratch.buffer.ptr, raw, nodes, fold_ptr)
                    })
                    .and_then(|()| self.launch_rounds(&rounds, scratch.buffer.ptr, nodes, fold_ptr))
                    .and_then(|()| {
                        self.device.openings(
                            nodes,
                            fold_ptr,
                            nodes.digest(g.zero(0)),
                            scratch.at(tasks),
                            scratch.at(listed),
                            tasks.count,
                            g.top_offset,
                            g.address_height,
                            g.address_space_height,
                            out.buffer.ptr,
                        )
                    })
                    .and_then(|()| {
                        self.device
                            .copy_to_host(as_bytes_mut(&mut words), out.buffer.ptr)
                    })
            };
            self.settle(read)?;
            drop(staging);
        }
        Ok(positions
            .iter()
            .enumerate()
            .map(|(i, &(slot, block))| Opening {
                slot,
                block,
                cells: self.image.block_cells(slot, block),
                siblings: (0..per)
                    .map(|j| digest_from_words(&words[(i * per + j) * 8..][..8]))
                    .collect(),
            })
            .collect())
    }

    /// Device bytes are the two arrays as allocated; host node bytes are the sparse maps
    /// (indices, not digests); host raw bytes the image.
    fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage {
            host_node_bytes: self.map_bytes(),
            host_raw_bytes: self.image.total_bytes(),
            device_node_bytes: self.nodes.map_or(0, |b| b.bytes),
            device_raw_bytes: self.raw.map_or(0, |b| b.bytes),
        }
    }
}
