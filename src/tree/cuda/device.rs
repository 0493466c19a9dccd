//! The `Device` trait: what [`super::CudaTree`] needs from a device — byte buffers, copies,
//! one method per kernel launch (the shapes of `cuda/include/memcommit/launchers.h`) and a
//! stream synchronisation. [`super::EmulatedDevice`] implements it on host memory through
//! the kernel emulator; `CudaDevice` (feature `cuda`) implements it on a GPU through cudarc.
//!
//! Work is ordered as on one CUDA stream: copies to the device and launches may run after
//! the call returns, in call order; [`Device::copy_to_host`] and [`Device::synchronize`]
//! wait for everything queued before them.

use crate::error::Result;

/// A device address: a CUDA device pointer, or a host address on the emulated device.
/// Offsets are in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on.
    pub fn offset(self, bytes: u64) -> DevicePtr {
        DevicePtr(self.0 + bytes)
    }

    /// The address of digest `index` (32 bytes each) from `self`.
    pub fn digest(self, index: u64) -> DevicePtr {
        self.offset(index * crate::hash::DIGEST_BYTES)
    }
}

/// The buffers of a fused launch ([`Device::fused`]).
#[derive(Clone, Copy, Debug)]
pub struct FusedArgs {
    /// `phase_count` `Phase`s.
    pub phases: DevicePtr,
    /// Phases to run.
    pub phase_count: u32,
    /// The node array.
    pub nodes: DevicePtr,
    /// The call's fold scratch (any address when no phase uses it).
    pub fold: DevicePtr,
    /// `zero[0..=address_height]`.
    pub zero: DevicePtr,
    /// The staging buffer the phases' task arrays are offsets into.
    pub staging: DevicePtr,
    /// The update's `PageSlot` table.
    pub page_slots: DevicePtr,
    /// The update's `PageNode` list.
    pub page_nodes: DevicePtr,
}

/// A device that runs the memcommit kernels. Pointer arguments name device memory from
/// [`Device::alloc`]; "digests" are 8 Montgomery `u32` words (32 bytes); task arrays are the
/// `tasks.h` structs; node indices count digests from `nodes`.
///
/// # Errors
/// Every fallible method returns [`crate::Error::ResourceExhausted`] when memory runs out
/// and [`crate::Error::Unavailable`] for any other device failure.
///
/// # Safety (of the `unsafe` methods)
/// Pointers must lie in live allocations of this device, large enough for the shapes
/// documented on each method, and buffers a launch writes must not overlap buffers it reads
/// unless stated. A source slice given to [`Device::copy_to_device`] must stay alive and
/// unchanged until the next [`Device::copy_to_host`] or [`Device::synchronize`] returns.
pub trait Device: Send + Sync {
    /// A one-line description of the device (name, memory).
    fn describe(&self) -> String;

    /// Allocates `bytes` bytes (contents undefined), at least 16-byte aligned.
    fn alloc(&self, bytes: u64) -> Result<DevicePtr>;

    /// Frees an allocation from [`Device::alloc`], after the work queued on it.
    ///
    /// # Safety
    /// `ptr` came from `alloc` on this device and is not used again.
    unsafe fn free(&self, ptr: DevicePtr);

    /// Queues a copy of `src` to `dst`.
    ///
    /// # Safety
    /// See the trait: `dst .. dst + src.len()` is allocated and `src` outlives the copy.
    unsafe fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;

    /// Uploads `src` to `dst` in chunks of at most `chunk` bytes (`chunk > 0`) and, after
    /// each chunk's copy is queued, calls `then(offset, len)` (bytes from the start of `src`)
    /// so the caller can queue work on that chunk, ordered after its copy.
    ///
    /// The default copies each chunk with [`Device::copy_to_device`]. `CudaDevice` instead
    /// stages the chunks through
    /// its pool of pinned host buffers on a copy stream, double-buffered, so that the host's
    /// copy into one buffer, the DMA of the other and the work `then` queued on the previous
    /// chunk overlap (docs/design.md, "CUDA", data path).
    ///
    /// # Errors
    /// As `copy_to_device`, and whatever `then` returns; nothing more is queued after an
    /// error.
    ///
    /// # Safety
    /// As `copy_to_device` (`dst .. dst + src.len()` is allocated, `src` outlives the copy);
    /// `then` upholds the safety rules of the calls it makes.
    unsafe fn upload_chunked(
        &self,
        dst: DevicePtr,
        src: &[u8],
        chunk: u64,
        then: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let chunk = usize::try_from(chunk.max(1)).unwrap_or(usize::MAX);
        for (i, part) in src.chunks(chunk).enumerate() {
            let offset = (i * chunk) as u64;
            // SAFETY: the chunk lies in `dst .. dst + src.len()`, and `src` outlives the copy
            // (caller).
            unsafe { self.copy_to_device(dst.offset(offset), part)? };
            then(offset, part.len() as u64)?;
        }
        Ok(())
    }

    /// Queues a copy of `bytes` bytes from `src` to `dst`, both device memory (growing a
    /// buffer: the old contents into the bigger one).
    ///
    /// # Safety
    /// `src .. src + bytes` and `dst .. dst + bytes` are allocated and do not overlap.
    unsafe fn copy_device_to_device(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
    ) -> Result<()>;

    /// Waits for the queued work, then copies `dst.len()` bytes from `src` into `dst`.
    ///
    /// # Safety
    /// `src .. src + dst.len()` is allocated.
    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()>;

    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;

    /// `zero[0..count)` zero hashes: `count` digests.
    ///
    /// # Safety
    /// See the trait.
    unsafe fn zero_hashes(&self, zero: DevicePtr, count: u32) -> Result<()>;

    /// `out[t]` = the height-`levels` subtree over nodes `t·2^levels ..` of `src`, for
    /// `t < count`: the leaf hashes of a raw slot's blocks (`cell` code: u8 = 0, u16 = 1,
    /// field = 2) or digests ([`super::ffi::CELL_DIGEST`]: a previous launch's outputs). One
    /// launch of the block-level subtree kernel: `levels ≤` [`super::ffi::SUBTREE_LEVELS`]
    /// (taller subtrees take further launches over digests), `count ≤ 2^32`.
    ///
    /// # Safety
    /// See the trait: `src` holds `count·2^levels` blocks (or digests), `out` holds `count`
    /// digests.
    unsafe fn build_base(
        &self,
        src: DevicePtr,
        cell: u32,
        levels: u32,
        out: DevicePtr,
        count: u64,
    ) -> Result<()>;

    /// `parents[t] = compress(children[2t], children[2t+1])` for `t < count`.
    ///
    /// # Safety
    /// See the trait: `2·count` digests at `children`, `count` at `parents`.
    unsafe fn compress_level(
        &self,
        children: DevicePtr,
        parents: DevicePtr,
        count: u64,
    ) -> Result<()>;

    /// Vertical paths and top-tree leaves for `count` `VerticalTask`s at `tasks`.
    ///
    /// # Safety
    /// See the trait; every node index in the tasks lies in `nodes`.
    unsafe fn vertical(
        &self,
        nodes: DevicePtr,
        zero: DevicePtr,
        tasks: DevicePtr,
        count: u64,
    ) -> Result<()>;

    /// `out[t] = value` (one digest) for `t < count`.
    ///
    /// # Safety
    /// See the trait: `count` digests at `out`, one at `value`, outside them.
    unsafe fn fill_digests(&self, out: DevicePtr, value: DevicePtr, count: u64) -> Result<()>;

    /// Writes `count` `WriteTask`s at `tasks` into the raw buffer at `raw`, each block's
    /// bytes from the packed block bytes at `bytes`.
    ///
    /// # Safety
    /// See the trait; every block written lies in the raw buffer, every block read lies in
    /// `bytes`, and no two tasks overlap.
    unsafe fn scatter(
        &self,
        raw: DevicePtr,
        tasks: DevicePtr,
        bytes: DevicePtr,
        count: u64,
    ) -> Result<()>;

    /// Folds the `count` `HashTask` subtrees at `tasks` (from the raw buffer at `raw` or from
    /// the fold scratch `fold`, into `nodes` or `fold`) with one launch of the block-level
    /// subtree kernel over `threads` threads (the last task's `first_thread + 2^levels`);
    /// `levels` is the tallest task's, at most [`super::ffi::SUBTREE_LEVELS`].
    ///
    /// # Safety
    /// See the trait; tasks ascend by `first_thread`, each aligned to its width; outputs are
    /// distinct and no task reads a digest another task of the launch writes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn hash_tasks(
        &self,
        raw: DevicePtr,
        fold: DevicePtr,
        nodes: DevicePtr,
        tasks: DevicePtr,
        count: u64,
        threads: u64,
        levels: u32,
    ) -> Result<()>;

    /// Runs `count` `PairTask`s at `tasks`: children read from `children`, parents written to
    /// `parents` (the same array, or the node array after a fold scratch; one level step per
    /// launch).
    ///
    /// # Safety
    /// See the trait; parents are distinct and no task reads another's parent.
    unsafe fn compress_pairs(
        &self,
        children: DevicePtr,
        parents: DevicePtr,
        tasks: DevicePtr,
        count: u64,
    ) -> Result<()>;

    /// Step `step` of an update's page rounds: for each of the `count` `PageNode`s at
    /// `list` (sorted by slot and block, distinct), level `b + 1 + step` of its slot, whose
    /// `PageSlot` is at `slots` — the first node of each run with the same ancestor computes
    /// it from its two children in `nodes`. Nodes whose slot has no such page level do
    /// nothing.
    ///
    /// # Safety
    /// See the trait; every slot index lies in the table and every derived node index in
    /// `nodes`.
    unsafe fn page_round(
        &self,
        nodes: DevicePtr,
        slots: DevicePtr,
        list: DevicePtr,
        count: u64,
        step: u32,
    ) -> Result<()>;

    /// The fused tail: `args.phase_count` `Phase`s at `args.phases`, run in order in one
    /// single-block launch with a block barrier between phases (docs/design.md, "CUDA").
    ///
    /// # Safety
    /// See the trait; every task of every phase obeys the safety rules of its separate
    /// launch, and the phases' task arrays lie in the staging allocation.
    unsafe fn fused(&self, args: &FusedArgs) -> Result<()>;

    /// Siblings of `count` `OpenTask`s at `tasks` into `out`:
    /// `count · (address_height + address_space_height)` digests, leaf level first. `listed`
    /// holds the `u64` node indices the tasks name, into `fold` (a scratch of the siblings
    /// below the stored base level, hashed there by earlier launches) and then `nodes`;
    /// `zero` is `zero[0..=address_height]`; `top_offset` is the top tree's index in `nodes`.
    ///
    /// # Safety
    /// See the trait.
    #[allow(clippy::too_many_arguments)]
    unsafe fn openings(
        &self,
        nodes: DevicePtr,
        fold: DevicePtr,
        zero: DevicePtr,
        tasks: DevicePtr,
        listed: DevicePtr,
        count: u64,
        top_offset: u64,
        address_height: u32,
        address_space_height: u32,
        out: DevicePtr,
    ) -> Result<()>;
}
