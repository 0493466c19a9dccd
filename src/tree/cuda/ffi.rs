//! Hand-written declarations of the host emulator's C exports (`cuda/src/host_emulator.cpp`,
//! compiled by `build.rs` into `libmemcommit_cuda_host.a`) and the `#[repr(C)]` task structs
//! of `cuda/include/memcommit/tasks.h`. The device launchers of `launchers.h` get bindgen
//! bindings with feature `cuda`; these stay hand-written because the emulator is internal.
//!
//! Shapes: a digest is 8 Montgomery `u32` words; node indices count digests from the base
//! pointer a launch is given (the node array, or a call's fold scratch); raw offsets count
//! bytes in the raw array of present pages (see `tree_index.h`).

/// A launch twin's return code when some thread's access lies outside its buffer's length.
pub const OUT_OF_BOUNDS: i32 = 2;

/// A raw offset naming no page (C `MC_ABSENT_PAGE`; no kernel reads it any more, the probe
/// still checks that C and Rust agree).
pub const ABSENT_PAGE: u64 = u64::MAX;

/// Writes one block's 8 canonical cells into raw memory at `raw_byte` (C `McWriteTask`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteTask {
    /// Byte offset of the block in the raw buffer (a multiple of 8).
    pub raw_byte: u64,
    /// Byte offset of the block's 8, 16 or 32 bytes (little-endian, as raw memory holds
    /// them) in the launch's packed block bytes (a multiple of 8).
    pub src_byte: u32,
    /// Cell type code: u8 = 0, u16 = 1, field = 2.
    pub cell: u32,
}

/// Levels the block-level subtree kernel folds per launch (C `MC_SUBTREE_LEVELS`): its blocks
/// are `2^SUBTREE_LEVELS` = 256 threads, one node each.
pub const SUBTREE_LEVELS: u32 = 8;

/// The cell code of a subtree source that holds digests (a previous launch's outputs in the
/// fold scratch), not raw blocks (C `mc::CELL_DIGEST`).
pub const CELL_DIGEST: u32 = 3;

/// [`HashTask::flags`]: the output goes to the fold scratch, not the node array
/// (C `MC_HASH_OUT_FOLD`).
pub const HASH_OUT_FOLD: u16 = 1;

/// One subtree of a `hash_tasks` launch (C `McHashTask`): the `2^levels` nodes from `src`
/// (leaf hashes of raw blocks, or fold digests for [`CELL_DIGEST`]) folded into `out_node`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashTask {
    /// Digest index written, in the node array (or the fold scratch: [`HASH_OUT_FOLD`]).
    pub out_node: u64,
    /// Byte offset of the first block in the raw array, or fold index of the first digest.
    pub src: u64,
    /// The task's first thread in the launch: a multiple of `2^levels`; tasks ascend.
    pub first_thread: u64,
    /// Cell type code: u8 = 0, u16 = 1, field = 2, digests = [`CELL_DIGEST`].
    pub cell: u32,
    /// Levels folded in this launch, at most [`SUBTREE_LEVELS`].
    pub levels: u16,
    /// [`HASH_OUT_FOLD`] or 0.
    pub flags: u16,
}

/// `parents[parent] = compress(children[left], children[right])` (C `McPairTask`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairTask {
    /// Node index written, from the launch's `parents`.
    pub parent: u64,
    /// Node index of the left child, from the launch's `children`.
    pub left: u64,
    /// Node index of the right child (a zero-table entry when nothing is present below it).
    pub right: u64,
}

/// One slot's page levels for the derived page rounds (C `McPageSlot`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageSlot {
    /// Node index where the slot's page levels start (its level-`b` region).
    pub page_nodes: u64,
    /// Present pages `P`: level `l` holds `P · 2^(q−l)` digests.
    pub pages: u64,
    /// The stored base level `b`.
    pub base: u32,
    /// The page levels `q`.
    pub top: u32,
}

/// A written stored base-level node inside its slot's pages (C `McPageNode`): the device
/// derives its ancestors up to level `q` from a sorted list of these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageNode {
    /// `(page id << (q − b)) +` the node's index within its page at level `b`.
    pub coord: u64,
    /// Index into the launch's [`PageSlot`] table.
    pub slot: u32,
    /// Zero.
    pub pad: u32,
}

/// One phase of a fused launch (C `McPhase`): `count` tasks of `kind` at byte offset
/// `tasks_byte` of the launch's staging buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phase {
    /// Byte offset of the phase's task array from the staging buffer (unused by page rounds).
    pub tasks_byte: u64,
    /// Tasks (threads) of the phase.
    pub count: u64,
    /// One of the `PHASE_*` kinds.
    pub kind: u32,
    /// The page round's step (page rounds only).
    pub step: u32,
}

/// [`Phase::kind`]: pair tasks within the node array (C `MC_PHASE_PAIRS_NODES`).
pub const PHASE_PAIRS_NODES: u32 = 0;
/// [`Phase::kind`]: pair tasks within the fold scratch.
pub const PHASE_PAIRS_FOLD: u32 = 1;
/// [`Phase::kind`]: pair tasks from the fold scratch into the node array.
pub const PHASE_PAIRS_FOLD_TO_NODES: u32 = 2;
/// [`Phase::kind`]: vertical tasks.
pub const PHASE_VERTICAL: u32 = 3;
/// [`Phase::kind`]: a page round over the launch's page list.
pub const PHASE_PAGE_ROUND: u32 = 4;

/// A slot's vertical path and top-tree leaf (C `McVerticalTask`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerticalTask {
    /// Node index of the slot's level-`h` root (or of `zero[address_height]` for an empty slot).
    pub slot_root: u64,
    /// Node index of the vertical node at level `h + 1`.
    pub first_vertical: u64,
    /// Node index of the slot's entry in top-tree level 0.
    pub top_leaf: u64,
    /// The slot's real height `h` (first zero hash used).
    pub height: u32,
    /// Vertical nodes: `address_height − h` (0 for an empty slot).
    pub count: u32,
}

/// One opening's sibling path (C `McOpenTask`; `tasks.h` says where each level comes from).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenTask {
    /// Index in the `listed` array of this opening's first listed sibling.
    pub first_listed: u64,
    /// Slot index.
    pub slot: u32,
    /// Real height `h`.
    pub height: u32,
    /// The stored base level `b`: levels `0..b` come from the fold scratch, levels `b..h`
    /// from the node array, both through `listed`.
    pub listed_from: u32,
    /// Padding, 0.
    pub pad: u32,
}

/// Where an emulated block-level launch broke the shared-memory rules (C `McEmuFault`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuFault {
    /// Block index in the launch.
    pub block: u64,
    /// Shared-memory word (32-bit) index.
    pub word: u64,
    /// The phase (between two barriers) of the access.
    pub phase: u32,
    /// The thread whose access failed.
    pub thread: u32,
    /// The other thread of a race (`u32::MAX`: none).
    pub other: u32,
    /// Padding.
    pub pad: u32,
}

/// A launch twin's return code for a shared-memory race (details in an [`EmuFault`]).
pub const SHARED_RACE: i32 = 3;

/// A launch twin's return code for a shared-memory access outside the block's array.
pub const SHARED_OUT_OF_RANGE: i32 = 4;

const _: () = {
    assert!(size_of::<WriteTask>() == 16);
    assert!(size_of::<HashTask>() == 32);
    assert!(size_of::<PairTask>() == 24);
    assert!(size_of::<VerticalTask>() == 32);
    assert!(size_of::<OpenTask>() == 24);
    assert!(size_of::<EmuFault>() == 32);
    assert!(size_of::<PageSlot>() == 24);
    assert!(size_of::<PageNode>() == 16);
    assert!(size_of::<Phase>() == 24);
};

/// Types whose every byte is initialised data (no padding, no pointers), so a slice of them
/// may be viewed as bytes for a copy to or from the device.
///
/// # Safety
/// Implementors are `#[repr(C)]` or primitive, have no padding bytes, and accept any bit
/// pattern.
pub unsafe trait Plain: Copy {}
// SAFETY: primitives, and repr(C) structs of u64/u32/u16 fields whose sizes (checked above)
// equal the sum of their fields, so they hold no padding.
unsafe impl Plain for u32 {}
unsafe impl Plain for u64 {}
unsafe impl Plain for u8 {}
unsafe impl Plain for WriteTask {}
unsafe impl Plain for HashTask {}
unsafe impl Plain for PairTask {}
unsafe impl Plain for VerticalTask {}
unsafe impl Plain for OpenTask {}
unsafe impl Plain for PageSlot {}
unsafe impl Plain for PageNode {}
unsafe impl Plain for Phase {}

/// `items` as bytes.
pub fn as_bytes<T: Plain>(items: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no padding, so every byte is initialised; u8 has alignment 1
    // and the length is the slice's size in bytes.
    unsafe { std::slice::from_raw_parts(items.as_ptr().cast(), std::mem::size_of_val(items)) }
}

/// `items` as mutable bytes.
pub fn as_bytes_mut<T: Plain>(items: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; `T: Plain` accepts any bit pattern, so writes through the
    // byte view cannot make an invalid `T`.
    unsafe {
        std::slice::from_raw_parts_mut(items.as_mut_ptr().cast(), std::mem::size_of_val(items))
    }
}

// The emulator's exports. Launch twins take the launcher's arguments minus the stream, plus
// (all but `mc_emu_zero_hashes`, a one-thread launch) the key `order` of the shuffled order
// they run threads in, plus `lens`: per pointer argument, in order, the bytes it may reach.
// They return 0 on success, 1 for bad arguments, [`OUT_OF_BOUNDS`] when a thread would reach
// outside `lens` (nothing ran), and for the block-level subtree launches [`SHARED_RACE`] or
// [`SHARED_OUT_OF_RANGE`] with the details in `*fault`; pointers must be valid host memory for
// at least `lens` bytes.
extern "C" {
    pub fn mc_emu_zero_hashes(zero: *mut u32, count: u32, lens: *const u64) -> i32;
    pub fn mc_emu_build_base(
        src: *const u8,
        cell: u32,
        levels: u32,
        out: *mut u32,
        count: u64,
        order: u64,
        lens: *const u64,
        fault: *mut EmuFault,
    ) -> i32;
    pub fn mc_emu_compress_level(
        children: *const u32,
        parents: *mut u32,
        count: u64,
        order: u64,
        lens: *const u64,
    ) -> i32;
    pub fn mc_emu_vertical(
        nodes: *mut u32,
        zero: *const u32,
        tasks: *const VerticalTask,
        count: u64,
        order: u64,
        lens: *const u64,
    ) -> i32;
    pub fn mc_emu_scatter(
        raw: *mut u8,
        tasks: *const WriteTask,
        bytes: *const u8,
        count: u64,
        order: u64,
        lens: *const u64,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    pub fn mc_emu_hash_tasks(
        raw: *const u8,
        fold: *mut u32,
        nodes: *mut u32,
        tasks: *const HashTask,
        count: u64,
        threads: u64,
        levels: u32,
        order: u64,
        lens: *const u64,
        fault: *mut EmuFault,
    ) -> i32;
    /// The block model's self-check (test-only body): mode 0 sound, 1 and 2 racy, 3 out of
    /// range.
    pub fn mc_emu_block_check(mode: u32, order: u64, fault: *mut EmuFault) -> i32;
    pub fn mc_emu_fill_digests(
        out: *mut u32,
        value: *const u32,
        count: u64,
        order: u64,
        lens: *const u64,
    ) -> i32;
    pub fn mc_emu_page_round(
        nodes: *mut u32,
        slots: *const PageSlot,
        list: *const PageNode,
        count: u64,
        step: u32,
        order: u64,
        lens: *const u64,
    ) -> i32;
    pub fn mc_emu_page_task_sizes(out: *mut u64);
    #[allow(clippy::too_many_arguments)]
    pub fn mc_emu_fused(
        phases: *const Phase,
        phase_count: u32,
        nodes: *mut u32,
        fold: *mut u32,
        zero: *const u32,
        staging: *const u8,
        page_slots: *const PageSlot,
        page_nodes: *const PageNode,
        order: u64,
        lens: *const u64,
    ) -> i32;
    pub fn mc_emu_compress_pairs(
        children: *const u32,
        parents: *mut u32,
        tasks: *const PairTask,
        count: u64,
        order: u64,
        lens: *const u64,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    pub fn mc_emu_openings(
        nodes: *const u32,
        fold: *const u32,
        zero: *const u32,
        tasks: *const OpenTask,
        listed: *const u64,
        count: u64,
        top_offset: u64,
        address_height: u32,
        address_space_height: u32,
        out: *mut u32,
        order: u64,
        lens: *const u64,
    ) -> i32;

    /// Canonical constants: 64 + 64 + 13 + 16 words.
    pub fn mc_emu_poseidon2_constants(
        initial: *mut u32,
        final_: *mut u32,
        internal: *mut u32,
        diagonal: *mut u32,
    );
    /// The Montgomery tables converted back to canonical; same shapes.
    pub fn mc_emu_poseidon2_tables(
        initial: *mut u32,
        final_: *mut u32,
        internal: *mut u32,
        diagonal: *mut u32,
    );
    /// Permutes 16 canonical values in place.
    pub fn mc_emu_permute(state: *mut u32);
    /// `a · b mod p` of canonical values through the Montgomery multiply.
    pub fn mc_emu_mul(a: u32, b: u32) -> u32;
    /// Canonical leaf hash of block `block` of a raw slot.
    pub fn mc_emu_leaf_from_raw(raw: *const u8, cell: u32, block: u64, out: *mut u32);
    pub fn mc_emu_level_offset(h: u32, b: u32, l: u32) -> u64;
    pub fn mc_emu_top_level_offset(ash: u32, l: u32) -> u64;
    pub fn mc_emu_top_digests(ash: u32) -> u64;
    pub fn mc_emu_stored_base_level(h: u32, k: u32) -> u32;
    /// `MC_ABSENT_PAGE`.
    pub fn mc_emu_absent_page() -> u64;
    /// Permutations the emulator has run on the calling thread.
    pub fn mc_emu_permutations() -> u64;
    /// `sizeof` of the five task structs, in the order of `tasks.h`.
    pub fn mc_emu_task_sizes(out: *mut u64);
}
