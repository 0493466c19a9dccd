//! `EmulatedDevice`: a [`Device`] on host memory whose launches run the kernel bodies through
//! the host build (`cuda/src/host_emulator.cpp`), one thread index after another in a
//! seeded shuffled order (a GPU promises no order, so a launch whose tasks depend on each
//! other fails here rather than passing by luck). A test vehicle: it runs the device's
//! arithmetic and index logic on any machine, not fast.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::device::{Device, DevicePtr, FusedArgs};
use super::ffi;
use crate::error::{Error, Result};

/// The emulated device. Allocations are 16-byte aligned host buffers keyed by address;
/// copies, and every access a launch's threads make, are bounds-checked against them (a
/// kernel's out-of-allocation access fails the launch before any thread runs). Every call runs to completion
/// before it returns, in the order made, as on one stream. Each launch runs its threads in
/// a permutation derived from the device's [seed](EmulatedDevice::seed) and the launch's
/// number, so a run is reproducible from the seed.
pub struct EmulatedDevice {
    /// Start address → storage. `u128` elements give 16-byte alignment.
    allocations: Mutex<BTreeMap<u64, Box<[u128]>>>,
    /// Held for each launch, as a stream serialises them.
    stream: Mutex<()>,
    /// Host waits so far: [`Device::copy_to_host`] and [`Device::synchronize`] calls.
    syncs: AtomicU64,
    /// Keys every launch's thread order.
    seed: u64,
    /// Launches so far, mixed into each launch's order so launches differ.
    launches: AtomicU64,
    /// Launches of at least one thread so far (what a GPU would run).
    kernel_launches: AtomicU64,
    /// Bytes copied from the host so far.
    uploaded: AtomicU64,
}

/// The environment variable that sets [`EmulatedDevice::new`]'s seed.
pub const SEED_VAR: &str = "MEMCOMMIT_EMU_SEED";

/// The seed without [`SEED_VAR`].
pub const DEFAULT_SEED: u64 = 0x6d65_6d63_6f6d_6d74;

/// splitmix64's finaliser: spreads a seed and a launch number over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed `value` of [`SEED_VAR`] names: a decimal or `0x` hex `u64`, else (any other
/// text) its FNV-1a hash, so every value gives some reproducible order.
fn parse_seed(value: &str) -> u64 {
    let v = value.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    };
    parsed.unwrap_or_else(|| {
        v.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for EmulatedDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EmulatedDevice {
    /// A device with no allocations, its seed from [`SEED_VAR`] when set (decimal, `0x` hex,
    /// or any text, hashed), else [`DEFAULT_SEED`].
    pub fn new() -> Self {
        let seed = std::env::var(SEED_VAR).map_or(DEFAULT_SEED, |v| parse_seed(&v));
        Self::with_seed(seed)
    }

    /// A device with no allocations whose launches' thread orders derive from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        EmulatedDevice {
            allocations: Mutex::default(),
            stream: Mutex::default(),
            syncs: AtomicU64::new(0),
            seed,
            launches: AtomicU64::new(0),
            kernel_launches: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
        }
    }

    /// The seed of the launches' thread orders: rerun a failing test with
    /// `MEMCOMMIT_EMU_SEED` set to it to get the same orders.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next launch's thread-order key; counts a launch of `count > 0` threads (a
    /// launcher queues nothing for 0).
    fn order(&self, count: u64) -> u64 {
        self.numbered_order(count).1
    }

    fn launched(&self, name: &str, rc: i32) -> Result<()> {
        let why = match rc {
            0 => return Ok(()),
            ffi::OUT_OF_BOUNDS => "a thread's access lies outside its allocation",
            _ => "bad arguments",
        };
        Err(Error::Unavailable(format!(
            "emulated launch {name} failed ({rc}: {why}; {SEED_VAR}={})",
            self.seed
        )))
    }

    /// Bytes from `ptr` to the end of the allocation holding it (0 outside every one): how
    /// far a kernel may reach from a pointer argument.
    fn reach(&self, ptr: DevicePtr) -> u64 {
        lock(&self.allocations)
            .range(..=ptr.0)
            .next_back()
            .map_or(0, |(&start, a)| {
                (start + (a.len() * 16) as u64).saturating_sub(ptr.0)
            })
    }

    /// Kernel launches of at least one thread so far: what a GPU would have run (tests and
    /// docs/benchmarks.md count them per update).
    pub fn kernel_launches(&self) -> u64 {
        self.kernel_launches.load(Ordering::Relaxed)
    }

    /// Bytes copied from the host so far ([`Device::copy_to_device`] and
    /// [`Device::upload_chunked`]).
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Bytes currently allocated.
    pub fn allocated_bytes(&self) -> u64 {
        lock(&self.allocations)
            .values()
            .map(|a| (a.len() * 16) as u64)
            .sum()
    }

    /// Host waits so far ([`Device::copy_to_host`] and [`Device::synchronize`] calls): what a
    /// GPU stream would block the host for. Tests count them per batch.
    pub fn host_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Permutations the kernel emulator has run on the calling thread so far (every
    /// launch runs on the thread that makes it): tests compare a call's difference with
    /// [`crate::bench::count`].
    pub fn permutations_on_this_thread() -> u64 {
        // SAFETY: reads a thread-local counter.
        unsafe { ffi::mc_emu_permutations() }
    }

    /// Checks that `ptr .. ptr + len` lies inside one allocation.
    fn check_range(&self, ptr: DevicePtr, len: usize, what: &str) -> Result<()> {
        let allocations = lock(&self.allocations);
        let inside = allocations
            .range(..=ptr.0)
            .next_back()
            .is_some_and(|(&start, a)| {
                ptr.0.saturating_add(len as u64) <= start + (a.len() * 16) as u64
            });
        if inside {
            Ok(())
        } else {
            Err(Error::Unavailable(format!(
                "emulated {what}: {len} bytes at {:#x} are outside every allocation",
                ptr.0
            )))
        }
    }
}

impl Device for EmulatedDevice {
    fn describe(&self) -> String {
        format!(
            "emulated device (host memory, kernel bodies run one thread at a time in a shuffled \
             order, {SEED_VAR}={})",
            self.seed
        )
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        let oom =
            || Error::ResourceExhausted(format!("emulated device: cannot allocate {bytes} bytes"));
        let words = usize::try_from(bytes.div_ceil(16).max(1)).map_err(|_| oom())?;
        let mut v: Vec<u128> = Vec::new();
        v.try_reserve_exact(words).map_err(|_| oom())?;
        v.resize(words, 0);
        let storage = v.into_boxed_slice();
        let ptr = storage.as_ptr() as u64;
        lock(&self.allocations).insert(ptr, storage);
        Ok(DevicePtr(ptr))
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        lock(&self.allocations).remove(&ptr.0);
    }

    unsafe fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.check_range(dst, src.len(), "copy to device")?;
        self.uploaded.fetch_add(src.len() as u64, Ordering::Relaxed);
        let _stream = lock(&self.stream);
        // SAFETY: the range was checked to lie in a live allocation, which `src` (a Rust
        // slice) cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.0 as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn copy_device_to_device(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
    ) -> Result<()> {
        let len = usize::try_from(bytes)
            .map_err(|_| Error::Unavailable(format!("emulated device copy of {bytes} bytes")))?;
        self.check_range(src, len, "device-to-device copy (source)")?;
        self.check_range(dst, len, "device-to-device copy (destination)")?;
        let _stream = lock(&self.stream);
        // SAFETY: both ranges lie in live allocations (checked); the caller guarantees they
        // do not overlap (trait contract).
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.0 as *mut u8, len) };
        Ok(())
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.check_range(src, dst.len(), "copy to host")?;
        let _stream = lock(&self.stream);
        // SAFETY: as in `copy_to_device`.
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        // Every call already ran to completion; count the wait a GPU would do.
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn zero_hashes(&self, zero: DevicePtr, count: u32) -> Result<()> {
        if count > 0 {
            // One thread; no order to draw.
            self.kernel_launches.fetch_add(1, Ordering::Relaxed);
        }
        let lens = [self.reach(zero)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("zero_hashes", unsafe {
            ffi::mc_emu_zero_hashes(zero.0 as *mut u32, count, lens.as_ptr())
        })
    }

    unsafe fn build_base(
        &self,
        src: DevicePtr,
        cell: u32,
        levels: u32,
        out: DevicePtr,
        count: u64,
    ) -> Result<()> {
        let (n, order) = self.numbered_order(count);
        let lens = [self.reach(src), self.reach(out)];
        let mut fault = ffi::EmuFault::default();
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        let rc = unsafe {
            ffi::mc_emu_build_base(
                src.0 as *const u8,
                cell,
                levels,
                out.0 as *mut u32,
                count,
                order,
                lens.as_ptr(),
                &mut fault,
            )
        };
        self.block_launched("build_base", n, rc, &fault)
    }

    unsafe fn compress_level(
        &self,
        children: DevicePtr,
        parents: DevicePtr,
        count: u64,
    ) -> Result<()> {
        let order = self.order(count);
        let lens = [self.reach(children), self.reach(parents)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("compress_level", unsafe {
            ffi::mc_emu_compress_level(
                children.0 as *const u32,
                parents.0 as *mut u32,
                count,
                order,
                lens.as_ptr(),
            )
        })
    }

    unsafe fn vertical(
        &self,
        nodes: DevicePtr,
        zero: DevicePtr,
        tasks: DevicePtr,
        count: u64,
    ) -> Result<()> {
        let order = self.order(count);
        let lens = [self.reach(nodes), self.reach(zero), self.reach(tasks)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("vertical", unsafe {
            ffi::mc_emu_vertical(
                nodes.0 as *mut u32,
                zero.0 as *const u32,
                tasks.0 as *const ffi::VerticalTask,
                count,
                order,
                lens.as_ptr(),
            )
        })
    }

    unsafe fn fill_digests(&self, out: DevicePtr, value: DevicePtr, count: u64) -> Result<()> {
        let order = self.order(count);
        let lens = [self.reach(out), self.reach(value)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("fill_digests", unsafe {
            ffi::mc_emu_fill_digests(
                out.0 as *mut u32,
                value.0 as *const u32,
                count,
                order,
                lens.as_ptr(),
            )
        })
    }

    unsafe fn scatter(
        &self,
        raw: DevicePtr,
        tasks: DevicePtr,
        bytes: DevicePtr,
        count: u64,
    ) -> Result<()> {
        let order = self.order(count);
        let lens = [self.reach(raw), self.reach(tasks), self.reach(bytes)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("scatter", unsafe {
            ffi::mc_emu_scatter(
                raw.0 as *mut u8,
                tasks.0 as *const ffi::WriteTask,
                bytes.0 as *const u8,
                count,
                order,
                lens.as_ptr(),
            )
        })
    }

    unsafe fn hash_tasks(
        &self,
        raw: DevicePtr,
        fold: DevicePtr,
        nodes: DevicePtr,
        tasks: DevicePtr,
        count: u64,
        threads: u64,
        levels: u32,
    ) -> Result<()> {
        let (n, order) = self.numbered_order(count);
        let lens = [
            self.reach(raw),
            self.reach(fold),
            self.reach(nodes),
            self.reach(tasks),
        ];
        let mut fault = ffi::EmuFault::default();
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        let rc = unsafe {
            ffi::mc_emu_hash_tasks(
                raw.0 as *const u8,
                fold.0 as *mut u32,
                nodes.0 as *mut u32,
                tasks.0 as *const ffi::HashTask,
                count,
                threads,
                levels,
                order,
                lens.as_ptr(),
                &mut fault,
            )
        };
        self.block_launched("hash_tasks", n, rc, &fault)
    }

    unsafe fn page_round(
        &self,
        nodes: DevicePtr,
        slots: DevicePtr,
        list: DevicePtr,
        count: u64,
        step: u32,
    ) -> Result<()> {
        let order = self.order(count);
        let lens = [self.reach(nodes), self.reach(slots), self.reach(list)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("page_round", unsafe {
            ffi::mc_emu_page_round(
                nodes.0 as *mut u32,
                slots.0 as *const ffi::PageSlot,
                list.0 as *const ffi::PageNode,
                count,
                step,
                order,
                lens.as_ptr(),
            )
        })
    }

    unsafe fn fused(&self, a: &FusedArgs) -> Result<()> {
        let order = self.order(u64::from(a.phase_count));
        let lens = [
            self.reach(a.phases),
            self.reach(a.nodes),
            self.reach(a.fold),
            self.reach(a.zero),
            self.reach(a.staging),
            self.reach(a.page_slots),
            self.reach(a.page_nodes),
        ];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any phase runs).
        self.launched("fused", unsafe {
            ffi::mc_emu_fused(
                a.phases.0 as *const ffi::Phase,
                a.phase_count,
                a.nodes.0 as *mut u32,
                a.fold.0 as *mut u32,
                a.zero.0 as *const u32,
                a.staging.0 as *const u8,
                a.page_slots.0 as *const ffi::PageSlot,
                a.page_nodes.0 as *const ffi::PageNode,
                order,
                lens.as_ptr(),
            )
        })
    }

    unsafe fn compress_pairs(
        &self,
        children: DevicePtr,
        parents: DevicePtr,
        tasks: DevicePtr,
        count: u64,
    ) -> Result<()> {
        let order = self.order(count);
        let lens = [self.reach(children), self.reach(parents), self.reach(tasks)];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("compress_pairs", unsafe {
            ffi::mc_emu_compress_pairs(
                children.0 as *const u32,
                parents.0 as *mut u32,
                tasks.0 as *const ffi::PairTask,
                count,
                order,
                lens.as_ptr(),
            )
        })
    }

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
    ) -> Result<()> {
        let order = self.order(count);
        let lens = [
            self.reach(nodes),
            self.reach(fold),
            self.reach(zero),
            self.reach(tasks),
            self.reach(listed),
            self.reach(out),
        ];
        let _stream = lock(&self.stream);
        // SAFETY: `lens` bounds every access (the emulator checks them before any thread runs).
        self.launched("openings", unsafe {
            ffi::mc_emu_openings(
                nodes.0 as *const u32,
                fold.0 as *const u32,
                zero.0 as *const u32,
                tasks.0 as *const ffi::OpenTask,
                listed.0 as *const u64,
                count,
                top_offset,
                address_height,
                address_space_height,
                out.0 as *mut u32,
                order,
                lens.as_ptr(),
            )
        })
    }
}

/// The block model of the block-level (subtree) launches: faults, launch numbers and the
/// model's self-check.
impl EmulatedDevice {
    /// Kernel launch calls made so far (every launch method, including calls with nothing to
    /// run, which a GPU launcher returns from without launching): tests count them per call.
    pub fn launch_calls(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// The next launch's number (from 0) and thread-order key (as [`Self::order`]).
    fn numbered_order(&self, count: u64) -> (u64, u64) {
        if count > 0 {
            self.kernel_launches.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        (n, mix(self.seed ^ mix(n.wrapping_add(1))))
    }

    /// `launched`, plus the shared-memory faults of a block-level launch: a race or an
    /// out-of-range shared word fails it with [`Error::Unavailable`] naming the launch, block,
    /// phase, threads, word and seed.
    fn block_launched(&self, name: &str, n: u64, rc: i32, fault: &ffi::EmuFault) -> Result<()> {
        let what = match rc {
            ffi::SHARED_RACE => format!(
                "shared-memory race on word {}: threads {} and {} in one phase",
                fault.word, fault.thread, fault.other
            ),
            ffi::SHARED_OUT_OF_RANGE => format!(
                "thread {} reached shared word {}, outside the block's array",
                fault.thread, fault.word
            ),
            _ => return self.launched(name, rc),
        };
        Err(Error::Unavailable(format!(
            "emulated launch {name} (launch {n}) failed in block {}, phase {}: {what} \
             ({SEED_VAR}={})",
            fault.block, fault.phase, self.seed
        )))
    }

    /// Runs the emulator's test-only block kernel (one 256-thread block, two phases) in
    /// `mode`: 0 is sound; 1 reads a word another thread writes in the same phase; 2 has
    /// every thread write one word; 3 writes one word past the block's shared array. The
    /// block model's own check, for tests.
    ///
    /// # Errors
    /// [`Error::Unavailable`] as for a failed block-level launch (modes 1 to 3).
    pub fn run_block_check(&self, mode: u32) -> Result<()> {
        let (n, order) = self.numbered_order(1);
        let mut fault = ffi::EmuFault::default();
        // SAFETY: the body touches only the emulator's own shared array.
        let rc = unsafe { ffi::mc_emu_block_check(mode, order, &mut fault) };
        self.block_launched("block_check", n, rc, &fault)
    }
}
