//! `CudaTree`: the device tree on any [`Device`], mirroring the CPU tree's layout and
//! update algorithm (see [`crate::tree::cpu`]) with every hash computed by the kernels.

use std::sync::Arc;

use super::device::{Device, DevicePtr};
use super::ffi::{as_bytes_mut, OpenTask, VerticalTask};
use super::index::{Geometry, SlotGeometry};
use super::plan::{Section, Staging, UpdatePlan};
use super::words::digest_from_words;
use crate::error::{Error, Result};
use crate::hash::{Digest, DIGEST_BYTES};
use crate::image::MemoryImage;
use crate::layout::MemoryLayout;
use crate::tree::{
    check_image, check_omitted_levels, check_positions, validated_keys, Backend, MemoryTree,
    MemoryUsage, Opening, TouchedBlock,
};

/// A device allocation owned by a tree or a call; freed by its owner.
#[derive(Clone, Copy, Debug)]
struct Buffer {
    ptr: DevicePtr,
    bytes: u64,
}

/// A call's temporary device buffer, freed when the guard drops (after the call's sync).
struct Scratch<'d, D: Device> {
    device: &'d D,
    buffer: Buffer,
}

impl<'d, D: Device> Scratch<'d, D> {
    fn new(device: &'d D, bytes: u64) -> Result<Self> {
        let ptr = device.alloc(bytes.max(16))?;
        Ok(Scratch {
            device,
            buffer: Buffer { ptr, bytes },
        })
    }

    /// Allocates and uploads `staging`; the caller keeps `staging` alive until its sync.
    fn upload(device: &'d D, staging: &Staging) -> Result<Self> {
        let scratch = Scratch::new(device, staging.bytes().len() as u64)?;
        // SAFETY: the allocation holds the bytes; the caller keeps `staging` alive and
        // unchanged until it synchronises (its doc).
        unsafe { device.copy_to_device(scratch.buffer.ptr, staging.bytes())? };
        Ok(scratch)
    }

    /// The address of `section` inside this buffer.
    fn at(&self, section: Section) -> DevicePtr {
        self.buffer.ptr.offset(section.offset)
    }
}

impl<D: Device> Drop for Scratch<'_, D> {
    fn drop(&mut self) {
        // SAFETY: allocated by `Scratch::new` on this device and dropped only here.
        unsafe { self.device.free(self.buffer.ptr) };
    }
}

/// The device tree. Nodes live in one flat device array (each slot's stored levels and
/// vertical path, then the top tree, then the zero hashes; see [`super::index`]); raw memory
/// is the host's `Arc<MemoryImage>`, mirrored in one device buffer.
///
/// Ownership: the tree keeps raw memory (and every host buffer it copies from) alive until
/// its stream has synchronised, which every call does before returning, on errors too.
///
/// A failed batch leaves the tree unchanged when validation or a staging allocation fails;
/// a device failure after the first launch marks the tree lost, and every later update or
/// opening returns [`Error::Unavailable`].
pub struct CudaTree<D: Device> {
    device: D,
    layout: MemoryLayout,
    omitted_levels: u32,
    image: Arc<MemoryImage>,
    geometry: Geometry,
    nodes: Option<Buffer>,
    raw: Option<Buffer>,
    root: Digest,
    lost: Option<String>,
}

impl<D: Device> Drop for CudaTree<D> {
    fn drop(&mut self) {
        for b in [self.nodes.take(), self.raw.take()].into_iter().flatten() {
            // SAFETY: allocated by `build` on this device and never used again.
            unsafe { self.device.free(b.ptr) };
        }
    }
}

impl<D: Device> CudaTree<D> {
    /// Builds the tree on `device` over `image` with `omitted_levels = k`: uploads raw memory,
    /// then hashes every slot from raw memory to its base level (one thread per base-level
    /// node), its stored levels one launch each, the vertical paths and the top tree, and
    /// synchronises once.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `k > MAX_OMITTED_LEVELS` or an image that does not
    /// match `layout`; [`Error::ResourceExhausted`] when device memory runs out;
    /// [`Error::Unavailable`] for a device failure.
    pub fn build(device: D, layout: MemoryLayout, image: Arc<MemoryImage>, k: u32) -> Result<Self> {
        check_omitted_levels(k)?;
        check_image(&layout, &image)?;
        let geometry = Geometry::new(&layout, k)?;
        let mut tree = CudaTree {
            device,
            layout,
            omitted_levels: k,
            image,
            geometry,
            nodes: None,
            raw: None,
            root: Digest::ZERO,
            lost: None,
        };
        let node_bytes = tree
            .geometry
            .total_digests
            .checked_mul(DIGEST_BYTES)
            .ok_or_else(|| Error::ResourceExhausted("node array overflows 64 bits".into()))?;
        tree.nodes = Some(Buffer {
            ptr: tree.device.alloc(node_bytes)?,
            bytes: node_bytes,
        });
        let raw_bytes = tree.geometry.raw_bytes;
        tree.raw = Some(Buffer {
            ptr: tree.device.alloc(raw_bytes.max(16))?,
            bytes: raw_bytes,
        });
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

    fn check_live(&self) -> Result<()> {
        match &self.lost {
            None => Ok(()),
            Some(why) => Err(Error::Unavailable(format!(
                "device tree lost after an earlier device failure: {why}"
            ))),
        }
    }

    /// Reads the root back; this waits for the stream (the call's one host sync).
    fn read_root(&self) -> Result<Digest> {
        let mut words = [0u32; 8];
        let at = self
            .nodes_ptr()
            .digest(self.geometry.top(self.geometry.address_space_height, 0));
        // SAFETY: the root lies in the node array.
        unsafe { self.device.copy_to_host(as_bytes_mut(&mut words), at)? };
        Ok(digest_from_words(&words))
    }

    /// Dense build of one slot: base level from raw memory, then one launch per level.
    fn build_slot(&self, g: &SlotGeometry) -> Result<()> {
        let nodes = self.nodes_ptr();
        let code = super::cell_code(g.cell);
        // SAFETY: the geometry sizes the node array and raw buffer for every slot: level l
        // holds 2^(h-l) digests and the raw slot 2^h blocks.
        unsafe {
            self.device.build_base(
                self.raw_ptr().offset(g.raw_offset),
                code,
                g.base,
                nodes.digest(g.node(g.base, 0)),
                1u64 << (g.height - g.base),
            )?;
            for l in g.base + 1..=g.height {
                self.device.compress_level(
                    nodes.digest(g.node(l - 1, 0)),
                    nodes.digest(g.node(l, 0)),
                    1u64 << (g.height - l),
                )?;
            }
        }
        Ok(())
    }

    fn build_on_device(&self) -> Result<Digest> {
        let g = &self.geometry;
        // Every top-tree leaf: a slot's vertical path, or zero[address_height] when empty.
        let vertical: Vec<VerticalTask> = (0..1u64 << g.address_space_height)
            .map(|s| match g.slots.get(s as usize) {
                Some(Some(slot)) => VerticalTask {
                    slot_root: slot.node(slot.height, 0),
                    first_vertical: slot.vertical(0),
                    top_leaf: g.top(0, s),
                    height: slot.height,
                    count: g.address_height - slot.height,
                },
                _ => VerticalTask {
                    slot_root: g.zero(g.address_height),
                    first_vertical: 0,
                    top_leaf: g.top(0, s),
                    height: g.address_height,
                    count: 0,
                },
            })
            .collect();
        let mut staging = Staging::default();
        let tasks = staging.push(&vertical);
        // Every host-to-device copy is queued before the first launch: a copy from pageable
        // memory may wait for the stream, which would add a host sync after the launches.
        let scratch = Scratch::upload(&self.device, &staging)?;
        let queued = self.settle(self.build_launches(&scratch, tasks));
        drop(staging);
        queued
    }

    /// The raw-memory uploads and every build launch, ending with the root's read-back.
    fn build_launches(&self, scratch: &Scratch<'_, D>, tasks: Section) -> Result<Digest> {
        let g = &self.geometry;
        let nodes = self.nodes_ptr();
        let zero = nodes.digest(g.zero(0));
        for (s, slot) in g.slots.iter().enumerate() {
            if let Some(slot) = slot {
                let page_bytes = self.image.page_bytes(s as u32);
                for (n, id) in self.image.pages(s as u32) {
                    // SAFETY: the page lies inside the slot's raw region; `self.image` stays
                    // alive until `read_root` below (or `settle`) has synchronised.
                    unsafe {
                        self.device.copy_to_device(
                            self.raw_ptr().offset(slot.raw_offset + n * page_bytes),
                            self.image.page(s as u32, id),
                        )?
                    };
                }
            }
        }
        // SAFETY: the zero table holds address_height + 1 digests.
        unsafe { self.device.zero_hashes(zero, g.address_height + 1)? };
        for slot in g.slots.iter().flatten() {
            self.build_slot(slot)?;
        }
        // SAFETY: task indices come from the geometry; the staging bytes outlive the sync in
        // `read_root` (or in `settle`, on an error).
        unsafe {
            self.device
                .vertical(nodes, zero, scratch.at(tasks), tasks.count)?;
            for l in 1..=g.address_space_height {
                self.device.compress_level(
                    nodes.digest(g.top(l - 1, 0)),
                    nodes.digest(g.top(l, 0)),
                    1u64 << (g.address_space_height - l),
                )?;
            }
        }
        self.read_root()
    }

    /// Runs a planned batch on the device and reads the new root (one host sync).
    fn run_update(&self, plan: &UpdatePlan) -> Result<Digest> {
        let mut staging = Staging::default();
        let writes = staging.push(&plan.writes);
        let hashes = staging.push(&plan.hashes);
        let rounds: Vec<Section> = plan.rounds.iter().map(|r| staging.push(r)).collect();
        let vertical = staging.push(&plan.vertical);
        let top: Vec<Section> = plan.top_rounds.iter().map(|r| staging.push(r)).collect();
        let scratch = Scratch::upload(&self.device, &staging)?;
        let (nodes, raw) = (self.nodes_ptr(), self.raw_ptr());
        let zero = nodes.digest(self.geometry.zero(0));
        // SAFETY: every task's indices and offsets come from the geometry of these buffers;
        // the plan's lists are distinct per level; `staging` outlives the sync in
        // `read_root` (or in `settle`, on an error).
        let launched = unsafe {
            self.device
                .scatter(raw, scratch.at(writes), writes.count)
                .and_then(|()| {
                    self.device
                        .hash_tasks(raw, scratch.at(hashes), hashes.count, nodes)
                })
                .and_then(|()| {
                    rounds.iter().try_for_each(|&r| {
                        self.device.compress_pairs(nodes, scratch.at(r), r.count)
                    })
                })
                .and_then(|()| {
                    self.device
                        .vertical(nodes, zero, scratch.at(vertical), vertical.count)
                })
                .and_then(|()| {
                    top.iter().try_for_each(|&r| {
                        self.device.compress_pairs(nodes, scratch.at(r), r.count)
                    })
                })
        };
        let root = self.settle(launched.and_then(|()| self.read_root()));
        // Only now, after the sync, may the host copy of the lists go.
        drop(staging);
        root
    }

    /// Passes `result` on; on an error, first waits for the stream (ignoring a second
    /// failure), so queued copies are done before their host buffers are dropped.
    fn settle<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            let _ = self.device.synchronize();
        }
        result
    }

    fn opening_tasks(&self, positions: &[(u32, u64)]) -> Vec<OpenTask> {
        positions
            .iter()
            .filter_map(|&(slot, block)| {
                let g = self.geometry.slots.get(slot as usize)?.as_ref()?;
                Some(OpenTask {
                    raw_slot_byte: g.raw_offset,
                    slot_node: g.node_offset,
                    block,
                    slot,
                    cell: super::cell_code(g.cell),
                    height: g.height,
                    base: g.base,
                })
            })
            .collect()
    }
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
        let plan = UpdatePlan::new(&self.geometry, blocks, &keys);
        match self.run_update(&plan) {
            Ok(root) => {
                // The device has the batch; bring the host's raw memory level with it.
                Arc::make_mut(&mut self.image)
                    .write_blocks(blocks.iter().map(|b| (b.slot, b.block, &b.cells)))?;
                self.root = root;
                Ok(root)
            }
            // Out of memory for the staging buffer: nothing was launched.
            Err(e @ Error::ResourceExhausted(_)) => Err(e),
            Err(e) => {
                self.lost = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn openings(&self, positions: &[(u32, u64)]) -> Result<Vec<Opening>> {
        self.check_live()?;
        check_positions(&self.layout, positions)?;
        let per = self.geometry.opening_len() as usize;
        let tasks = self.opening_tasks(positions);
        let mut words = vec![0u32; tasks.len() * per * 8];
        if !words.is_empty() {
            let mut staging = Staging::default();
            let section = staging.push(&tasks);
            let scratch = Scratch::upload(&self.device, &staging)?;
            let out = Scratch::new(&self.device, (words.len() * 4) as u64)?;
            let nodes = self.nodes_ptr();
            // SAFETY: `out` holds count · opening_len digests; task fields come from the
            // geometry; `staging` outlives the sync in `copy_to_host` (or in `settle`).
            let read = unsafe {
                self.device
                    .openings(
                        self.raw_ptr(),
                        nodes,
                        nodes.digest(self.geometry.zero(0)),
                        scratch.at(section),
                        section.count,
                        self.geometry.top_offset,
                        self.geometry.address_height,
                        self.geometry.address_space_height,
                        out.buffer.ptr,
                    )
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

    fn memory_usage(&self) -> MemoryUsage {
        MemoryUsage {
            host_node_bytes: 0,
            host_raw_bytes: self.image.total_bytes(),
            device_node_bytes: self.nodes.map_or(0, |b| b.bytes),
            device_raw_bytes: self.raw.map_or(0, |b| b.bytes),
        }
    }
}
