//! `EmulatedDevice`: a [`Device`] on host memory whose launches run the kernel bodies through
//! the host build (`cuda/src/host_emulator.cpp`), one thread index after another in a
//! seeded shuffled order (a GPU promises no order, so a launch whose tasks depend on each
//! other fails here rather than passing by luck). A test vehicle: it runs the device's
//! arithmetic and index logic on any machine, not fast.
//!
//! Two more GPU behaviours are modelled so tests can reach them:
//! - **Deferred copies.** A copy to the device only records its host source (address,
//!   length, checksum); the bytes move when the stream reaches it: at the next launch,
//!   device-to-device copy, copy to the host or synchronisation. A source that changed by
//!   then fails that call, and freeing an allocation a pending copy targets is recorded as a
//!   violation ([`EmulatedDevice::staging_violations`]); a call that returns with copies
//!   still pending shows in [`EmulatedDevice::pending_copies`]. So a host staging buffer
//!   freed or reused under a pending copy is caught here, not only on a GPU.
//! - **Sticky faults on a shared context.** Devices made with
//!   [`EmulatedDevice::on_context`] share one [`EmulatedContext`] and its
//!   [`DeviceHealth`]; a fault injected into one device's next launch
//!   ([`EmulatedDevice::inject_sticky_fault`]) returns success, as an asynchronous kernel
//!   fault does, and from then on every call on every device of the context fails, with
//!   the fault attributed as on a GPU (see [`super::health`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::device::{Device, DevicePtr, FusedArgs};
use super::ffi;
use super::health::{sticky_fault, DeviceHealth, HealthMember};
use crate::error::{Error, Result};

/// An emulated device context: the health and the raised sticky error that devices made
/// with [`EmulatedDevice::on_context`] share, as the streams of one CUDA context do.
/// Cloning gives another handle to the same context.
#[derive(Clone, Debug, Default)]
pub struct EmulatedContext {
    inner: Arc<ContextState>,
}

#[derive(Debug, Default)]
struct ContextState {
    health: Arc<DeviceHealth>,
    /// The sticky error code a faulting launch raised (0: none); every later call on the
    /// context returns it.
    raised: AtomicU32,
    /// Devices made on the context so far, to label them.
    devices: AtomicU64,
}

impl EmulatedContext {
    /// A healthy context with no devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// The context's health: its recorded fault, if any.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.inner.health
    }
}

/// A copy to the device the stream has not reached yet.
struct PendingCopy {
    dst: u64,
    /// The host source's address and length (the caller keeps it alive and unchanged).
    src: usize,
    len: usize,
    checksum: u64,
}

/// A 64-bit checksum of `bytes` (word-wise multiply-xor; detects changed staging bytes).
fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a))
            .wrapping_mul(0x0100_0000_01b3)
            .rotate_left(29);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

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
    context: EmulatedContext,
    member: HealthMember,
    /// A sticky error code the next launch raises instead of running (0: none).
    armed: AtomicU32,
    /// Copies to the device queued and not yet performed, in order.
    pending: Mutex<Vec<PendingCopy>>,
    /// Host-staging contract violations seen so far.
    violations: Mutex<Vec<String>>,
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

    /// A device with no allocations whose launches' thread orders derive from `seed`, on a
    /// context of its own.
    pub fn with_seed(seed: u64) -> Self {
        Self::on(&EmulatedContext::new(), seed)
    }

    /// A device (a stream of its own) on the shared `context`, its seed as in
    /// [`EmulatedDevice::new`]: a sticky fault on any device of the context reaches it.
    pub fn on_context(context: &EmulatedContext) -> Self {
        let seed = std::env::var(SEED_VAR).map_or(DEFAULT_SEED, |v| parse_seed(&v));
        Self::on(context, seed)
    }

    fn on(context: &EmulatedContext, seed: u64) -> Self {
        let n = context.inner.devices.fetch_add(1, Ordering::Relaxed);
        EmulatedDevice {
            allocations: Mutex::default(),
            stream: Mutex::default(),
            syncs: AtomicU64::new(0),
            seed,
            launches: AtomicU64::new(0),
            kernel_launches: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            context: context.clone(),
            member: context.health().member(format!("emulated device #{n}")),
            armed: AtomicU32::new(0),
            pending: Mutex::default(),
            violations: Mutex::default(),
        }
    }

    /// This device labelled `label` in fault reports (the server labels a tree's device
    /// `tree <id>`).
    pub fn labelled(mut self, label: impl Into<String>) -> Self {
        self.member = self.context.health().member(label);
        self
    }

    /// The label fault reports name this device by.
    pub fn label(&self) -> &str {
        self.member.label()
    }

    /// The context this device runs on.
    pub fn context(&self) -> &EmulatedContext {
        &self.context
    }

    /// Test hook: the next launch on this device raises the sticky CUDA error `code` (e.g.
    /// 700, `CUDA_ERROR_ILLEGAL_ADDRESS`) on its context instead of running, and returns
    /// success, as an asynchronous kernel fault does; the fault surfaces at the next call on
    /// any device of the context.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `code` if it is not a sticky error
    /// ([`sticky_fault`]).
    #[doc(hidden)]
    pub fn inject_sticky_fault(&self, code: u32) -> Result<()> {
        if sticky_fault(code).is_none() {
            return Err(Error::invalid(
                "code",
                format!("{code} is not a sticky CUDA error"),
            ));
        }
        self.armed.store(code, Ordering::SeqCst);
        Ok(())
    }

    /// Copies to the device queued and not yet performed: 0 whenever a caller has waited
    /// for its work, as every `CudaTree` call does before returning.
    pub fn pending_copies(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Host-staging contract violations seen so far: a copy's host source that changed
    /// before the stream reached the copy, or an allocation freed under a pending copy.
    pub fn staging_violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    /// Starts a call: fails with the context's sticky error if one was raised (recording
    /// the fault on first sight), else marks `op`, when it queues work, in flight.
    fn enter(&self, op: Option<&'static str>) -> Result<()> {
        let code = self.context.inner.raised.load(Ordering::SeqCst);
        if code != 0 {
            // The stream is dead: its pending copies will never run, and read nothing.
            lock(&self.pending).clear();
            let name = sticky_fault(code).unwrap_or("sticky CUDA error");
            return Err(self
                .member
                .observe(format!("{name} ({code}, injected in the emulator)"), None));
        }
        match op {
            Some(op) => self.member.begin(op),
            None => self.member.check(),
        }
    }

    /// Starts launch `name`: [`EmulatedDevice::enter`], then the pending copies. `Ok(false)`
    /// when an injected fault takes the launch's place (raised on the context, nothing run).
    fn start_launch(&self, name: &'static str) -> Result<bool> {
        self.enter(Some(name))?;
        self.flush()?;
        let code = self.armed.swap(0, Ordering::SeqCst);
        if code != 0 {
            self.context.inner.raised.store(code, Ordering::SeqCst);
            return Ok(false);
        }
        Ok(true)
    }

    /// Records a staging violation and returns it as an error.
    fn violation(&self, what: String) -> Error {
        lock(&self.violations).push(what.clone());
        Error::Unavailable(format!("emulated stream: {what}"))
    }

    /// Performs the pending copies, in order, as the stream reaches them.
    ///
    /// # Errors
    /// [`Error::Unavailable`] (also recorded as a violation) if a copy's host source changed
    /// since it was queued; the copies after it are dropped.
    fn flush(&self) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for c in pending {
            // SAFETY: the `copy_to_device` contract keeps the source alive and unchanged
            // until the next synchronisation, which is no earlier than now; a caller that
            // breaks it is what this check exists to catch.
            let src = unsafe { std::slice::from_raw_parts(c.src as *const u8, c.len) };
            if checksum(src) != c.checksum {
                return Err(self.violation(format!(
                    "the host source of a queued copy to the device ({} bytes at {:#x})                      changed before the stream reached the copy",
                    c.len, c.src
                )));
            }
            self.check_range(DevicePtr(c.dst), c.len, "copy to device")?;
            let _stream = lock(&self.stream);
            // SAFETY: the destination lies in a live allocation (checked), which the host
            // source (caller memory) cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), c.dst as *mut u8, c.len) };
        }
        Ok(())
    }

    /// Ends a wait for the stream: nothing of this device is in flight.
    fn waited(&self) {
        self.member.settled();
        self.syncs.fetch_add(1, Ordering::Relaxed);
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
            "emulated device {:?} (host memory, kernel bodies run one thread at a time in a \
             shuffled order, {SEED_VAR}={})",
            self.member.label(),
            self.seed
        )
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        self.enter(None)?;
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
        let mut allocations = lock(&self.allocations);
        let Some(a) = allocations.remove(&ptr.0) else {
            return;
        };
        // A stream-ordered free would still run the copy first, reading a host source the
        // caller may have released by now: the call should have waited.
        let end = ptr.0 + (a.len() * 16) as u64;
        let mut pending = lock(&self.pending);
        let before = pending.len();
        pending.retain(|c| !(ptr.0..end).contains(&c.dst));
        let dropped = before - pending.len();
        drop(pending);
        if dropped > 0 {
            let _ = self.violation(format!(
                "the allocation at {:#x} was freed with {dropped} copies into it still pending \
                 (the call did not wait for its stream)",
                ptr.0
            ));
        }
    }

    unsafe fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.enter(Some("copy_to_device"))?;
        self.check_range(dst, src.len(), "copy to device")?;
        self.uploaded.fetch_add(src.len() as u64, Ordering::Relaxed);
        // Deferred to the stream's next point of execution (module docs).
        lock(&self.pending).push(PendingCopy {
            dst: dst.0,
            src: src.as_ptr() as usize,
            len: src.len(),
            checksum: checksum(src),
        });
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
        self.enter(Some("copy_device_to_device"))?;
        self.flush()?;
        self.check_range(src, len, "device-to-device copy (source)")?;
        self.check_range(dst, len, "device-to-device copy (destination)")?;
        let _stream = lock(&self.stream);
        // SAFETY: both ranges lie in live allocations (checked); the caller guarantees they
        // do not overlap (trait contract).
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.0 as *mut u8, len) };
        Ok(())
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.enter(None)?;
        self.flush()?;
        self.check_range(src, dst.len(), "copy to host")?;
        let _stream = lock(&self.stream);
        // SAFETY: the range lies in a live allocation (checked), which `dst` (a Rust slice)
        // cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.0 as *const u8, dst.as_mut_ptr(), dst.len()) };
        self.waited();
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.enter(None)?;
        // Launches already ran to completion; the deferred copies run now.
        self.flush()?;
        self.waited();
        Ok(())
    }

    unsafe fn zero_hashes(&self, zero: DevicePtr, count: u32) -> Result<()> {
        if !self.start_launch("zero_hashes")? {
            return Ok(());
        }
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
        if !self.start_launch("build_base")? {
            return Ok(());
        }
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
        if !self.start_launch("compress_level")? {
            return Ok(());
        }
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
        if !self.start_launch("vertical")? {
            return Ok(());
        }
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
        if !self.start_launch("fill_digests")? {
            return Ok(());
        }
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
        if !self.start_launch("scatter")? {
            return Ok(());
        }
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
        if !self.start_launch("hash_tasks")? {
            return Ok(());
        }
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
        if !self.start_launch("page_round")? {
            return Ok(());
        }
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
        if !self.start_launch("fused")? {
            return Ok(());
        }
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
        if !self.start_launch("compress_pairs")? {
            return Ok(());
        }
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
        if !self.start_launch("openings")? {
            return Ok(());
        }
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
