//! `CudaDevice` (feature `cuda`): the [`Device`] trait on a real GPU through cudarc's driver
//! API, with every kernel queued through the `extern "C"` launchers of
//! `cuda/include/memcommit/launchers.h` (bindgen bindings in [`super::launchers_bindings`]).
//!
//! - **Context:** one process-wide primary context on device 0 (`CUDA_VISIBLE_DEVICES` picks
//!   the GPU), opened once by [`probe`] and shared by every tree. The nvcc-built launchers use
//!   the CUDA runtime, which runs on the same primary context, so a driver-API stream can be
//!   passed to them as their `cudaStream_t`.
//! - **Waiting:** the primary context is asked for `CU_CTX_SCHED_BLOCKING_SYNC`, so a call
//!   waiting for its stream sleeps instead of spinning a host core.
//! - **Streams:** one non-blocking stream per [`CudaDevice`], that is per tree, so different
//!   trees proceed in parallel. Allocation, copies, launches and frees of a tree all go on its
//!   stream, which orders them; cudarc's cross-stream event tracking is therefore switched off.
//! - **Memory:** device memory from the stream-ordered allocator (`cuMemAllocAsync`, or
//!   `cuMemAlloc` where pools are unsupported); never managed memory.
//! - **Errors:** an allocation that runs out of memory is [`Error::ResourceExhausted`]; every
//!   other driver or launch failure is [`Error::Unavailable`] with the CUDA error name.
//! - **Faults:** every device is a member of the context's [`DeviceHealth`]
//!   ([`super::context_health`]): it marks each queued operation in flight before the driver
//!   call and settles at each successful synchronisation, and a sticky error
//!   ([`super::sticky_fault`]) is recorded there on first sight with the devices that had
//!   work in flight. After that every call of every device fails before reaching the
//!   driver, naming the fault, and [`probe`] reports the device unusable.
//! - **Probe:** [`probe`] launches the zero-hash kernel once per process and compares its
//!   digests with the CPU's, so `auto` picks the GPU only after a real launch worked.

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DevicePtr as _, DriverError};

use super::device::{Device, DevicePtr, FusedArgs};
use super::ffi;
use super::health::{sticky_fault, HealthMember};
use super::launchers_bindings as lb;
use super::staging::StagingPool;
use super::{context_health, DeviceInfo};
use crate::error::{Error, Result};

// The tree builds task arrays with the hand-written `ffi` structs and the launchers read them
// as bindgen's `Mc*Task`: both mirror `tasks.h`, so their sizes must agree.
const _: () = {
    assert!(size_of::<ffi::WriteTask>() == size_of::<lb::McWriteTask>());
    assert!(size_of::<ffi::HashTask>() == size_of::<lb::McHashTask>());
    assert!(size_of::<ffi::PairTask>() == size_of::<lb::McPairTask>());
    assert!(size_of::<ffi::VerticalTask>() == size_of::<lb::McVerticalTask>());
    assert!(size_of::<ffi::OpenTask>() == size_of::<lb::McOpenTask>());
    assert!(size_of::<ffi::PageSlot>() == size_of::<lb::McPageSlot>());
    assert!(size_of::<ffi::PageNode>() == size_of::<lb::McPageNode>());
    assert!(size_of::<ffi::Phase>() == size_of::<lb::McPhase>());
};

/// The oldest compute capability the fatbin runs on: SASS for sm_80 and sm_90, PTX for
/// compute_90 (build.rs).
const MIN_COMPUTE_MAJOR: i32 = 8;

/// `CUDA_ERROR_NAME: description` of a driver error.
fn driver_message(e: &DriverError) -> String {
    match e.error_string() {
        Ok(s) => format!("{:?}: {}", e.0, s.to_string_lossy()),
        Err(_) => format!("{:?}", e.0),
    }
}

/// A driver failure during `what` as [`Error::Unavailable`].
fn unavailable(what: &str, e: &DriverError) -> Error {
    Error::Unavailable(format!("CUDA {what} failed: {}", driver_message(e)))
}

/// The process-wide context on device 0, opened on first use; `Err` says why there is none.
/// The answer is kept: a driver or device does not appear while the process runs.
fn context() -> std::result::Result<&'static Arc<CudaContext>, String> {
    static CONTEXT: OnceLock<std::result::Result<Arc<CudaContext>, String>> = OnceLock::new();
    CONTEXT
        .get_or_init(open_context)
        .as_ref()
        .map_err(Clone::clone)
}

fn open_context() -> std::result::Result<Arc<CudaContext>, String> {
    // SAFETY: only tries to dlopen the driver library under its usual names; loading it runs
    // the driver's initialisers, which is what every CUDA program does.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcuda.so not found: no NVIDIA driver is installed".into());
    }
    // cudarc resolves each driver symbol on first call and panics if one is missing (a driver
    // older than the API level compiled in); report that as a reason instead of unwinding.
    std::panic::catch_unwind(|| {
        let count = CudaContext::device_count().map_err(|e| {
            format!(
                "the CUDA driver has no usable device ({})",
                driver_message(&e)
            )
        })?;
        if count < 1 {
            return Err("the CUDA driver reports 0 devices".to_string());
        }
        request_blocking_sync();
        let ctx = CudaContext::new(0)
            .map_err(|e| format!("cannot open CUDA device 0: {}", driver_message(&e)))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("cannot query CUDA device 0: {}", driver_message(&e)))?;
        if major < MIN_COMPUTE_MAJOR {
            let name = ctx.name().unwrap_or_else(|_| "device 0".into());
            return Err(format!(
                "{name} has compute capability {major}.{minor}; the kernels need 8.0 or newer"
            ));
        }
        // SAFETY: every allocation is used on the one stream that allocated it (see the
        // module doc), so cross-stream event tracking has nothing to order; no slice exists
        // yet.
        unsafe { ctx.disable_event_tracking() };
        Ok(ctx)
    })
    .unwrap_or_else(|_| {
        Err("the CUDA driver lacks a required entry point (driver too old?)".to_string())
    })
}

/// Asks that a host thread waiting on device 0 block on an OS primitive
/// (`CU_CTX_SCHED_BLOCKING_SYNC`) rather than spin: a batch's one host sync would otherwise
/// keep a core busy that the server's tokio and rayon threads need. Set on the primary
/// context before it is first retained; a failure only costs that core, so it is logged.
fn request_blocking_sync() {
    let mut dev: sys::CUdevice = 0;
    let flags = sys::CUctx_flags_enum::CU_CTX_SCHED_BLOCKING_SYNC as std::ffi::c_uint;
    // SAFETY: plain driver calls with a valid out-pointer; the driver was initialised by the
    // device count that precedes this call.
    let set = unsafe { sys::cuDeviceGet(&mut dev, 0) }
        .result()
        .and_then(|()| unsafe { sys::cuDevicePrimaryCtxSetFlags_v2(dev, flags) }.result());
    if let Err(e) = set {
        tracing::warn!(
            "CUDA: cannot ask device 0 for blocking sync ({}); waiting calls may spin a core",
            driver_message(&e)
        );
    }
}

/// Probes for a usable GPU: the driver library, then the device count, then device 0's
/// compute capability, then the [kernel check](kernel_check) (once per process), and the
/// context's health. Never panics.
///
/// Returns the device's name and memory (bytes, from `cuMemGetInfo`).
///
/// # Errors
/// The reason no device is usable, e.g. `libcuda.so not found: no NVIDIA driver is
/// installed`, a failed kernel check, or the fault since which the device is unusable.
pub fn probe() -> std::result::Result<DeviceInfo, String> {
    let ctx = context()?;
    let kernel_check = kernel_check()?.to_string();
    if let Some(why) = context_health().unusable_reason() {
        return Err(why);
    }
    let name = ctx.name().map_err(|e| driver_message(&e))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| driver_message(&e))?;
    let (free, total) = ctx.mem_get_info().map_err(|e| driver_message(&e))?;
    Ok(DeviceInfo {
        name,
        ordinal: ctx.ordinal(),
        compute_capability: (major as u32, minor as u32),
        free_bytes: free as u64,
        total_bytes: total as u64,
        kernel_check,
    })
}

/// Zero hashes the kernel check compares: `zero[0..=32]`, every height a slot can have.
const CHECKED_ZERO_HASHES: u32 = 33;

/// The probe's kernel check, run once per process: the zero-hash kernel (one thread) writes
/// `zero[0..33)` on the device and the digests read back must equal
/// [`crate::hash::zero_hashes`]. A launch that cannot run (no code for this GPU's
/// architecture in the fatbin, a driver older than the toolkit) or computes differently
/// fails it, with the reason logged once.
///
/// # Errors
/// Why the check failed, e.g. `CUDA kernel check failed: CUDA launch zero_hashes failed:
/// cudaErrorNoKernelImageForDevice (209) — …`.
fn kernel_check() -> std::result::Result<&'static str, String> {
    static CHECK: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let r = run_kernel_check().map_err(|why| format!("CUDA kernel check failed: {why}"));
            match &r {
                Ok(what) => tracing::info!("CUDA probe: {what}"),
                Err(why) => tracing::warn!("CUDA probe: {why}"),
            }
            r
        })
        .as_deref()
        .map_err(Clone::clone)
}

fn run_kernel_check() -> std::result::Result<String, String> {
    let device = CudaDevice::open("the CUDA probe".into()).map_err(|e| e.to_string())?;
    let count = CHECKED_ZERO_HASHES;
    let zero = device
        .alloc(u64::from(count) * crate::hash::DIGEST_BYTES)
        .map_err(|e| e.to_string())?;
    let mut words = vec![0u32; count as usize * 8];
    // SAFETY: `zero` holds `count` digests; it is freed once, after the copy back (which
    // synchronises) or after the failure (which `copy_to_host` or the sync below waited
    // out where anything was queued).
    let run = unsafe {
        device
            .zero_hashes(zero, count)
            .and_then(|()| device.copy_to_host(ffi::as_bytes_mut(&mut words), zero))
    };
    if run.is_err() {
        let _ = device.synchronize();
    }
    // SAFETY: allocated above and not used again.
    unsafe { device.free(zero) };
    run.map_err(|e| e.to_string())?;
    let expected = crate::hash::zero_hashes();
    for (h, got) in words.chunks_exact(8).enumerate() {
        let got = super::words::digest_from_words(got);
        if got != expected[h] {
            return Err(format!(
                "the zero-hash kernel's zero[{h}] is {got:?}, the CPU's {:?}",
                expected[h]
            ));
        }
    }
    Ok(format!(
        "zero_hashes kernel ran: {count} digests equal the CPU's"
    ))
}

/// What a launch failure `rc` usually means, for the probe's reason.
fn launch_hint(rc: lb::cudaError_t) -> &'static str {
    match rc {
        lb::cudaErrorNoKernelImageForDevice => {
            " — the kernels were not built for this GPU's architecture (build.rs's targets)"
        }
        lb::cudaErrorInsufficientDriver => {
            " — the NVIDIA driver is older than the CUDA toolkit the kernels were built with"
        }
        lb::cudaErrorUnsupportedPtxVersion => {
            " — the driver cannot compile the kernels' PTX (driver older than the toolkit)"
        }
        _ => "",
    }
}

/// Labels of devices made without one: `CUDA stream #n`.
static UNLABELLED: AtomicU64 = AtomicU64::new(0);

/// A GPU as a [`Device`]: the shared context and a stream of its own (one per tree).
/// Allocations are kept by address until freed; dropping the device frees what is left,
/// ordered after its queued work.
pub struct CudaDevice {
    /// Pinned staging for [`Device::upload_chunked`], made on first use. Declared first so
    /// that it drops first: its drop waits for the staged copies, before the allocations
    /// they write are freed.
    staging: Mutex<Option<StagingPool>>,
    stream: Arc<CudaStream>,
    /// Live allocations by device address.
    allocations: Mutex<HashMap<u64, CudaSlice<u8>>>,
    describe: String,
    /// This device's registration with the context's health.
    member: HealthMember,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent across a panic elsewhere; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaDevice {
    /// A new stream on the shared context of device 0, labelled `CUDA stream #n` in fault
    /// reports.
    ///
    /// # Errors
    /// As [`CudaDevice::labelled`].
    pub fn new() -> Result<Self> {
        let n = UNLABELLED.fetch_add(1, Ordering::Relaxed);
        Self::labelled(format!("CUDA stream #{n}"))
    }

    /// A new stream on the shared context of device 0, named `label` in fault reports (the
    /// server passes `tree <id>`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] with the [`super::probe_device`] reason when no device is
    /// usable (no driver or device, a failed kernel check, an earlier fault on the context),
    /// or when the stream cannot be created.
    pub fn labelled(label: impl Into<String>) -> Result<Self> {
        let unusable = |why: String| Error::Unavailable(format!("no usable CUDA device: {why}"));
        context().map_err(unusable)?;
        kernel_check().map_err(unusable)?;
        Self::open(label.into())
    }

    /// A new stream without the kernel check (the check itself runs on one).
    fn open(label: String) -> Result<Self> {
        let ctx = context().map_err(|why| Error::Unavailable(format!("no CUDA device: {why}")))?;
        let member = context_health().member(label);
        member.check()?;
        let stream = ctx.new_stream().map_err(|e| {
            let code = e.0 as u32;
            match sticky_fault(code) {
                Some(_) => member.observe(driver_message(&e), None),
                None => unavailable("stream creation", &e),
            }
        })?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let capability = ctx
            .compute_capability()
            .map_or_else(|_| "?".into(), |(a, b)| format!("sm_{a}{b}"));
        let total = ctx.total_mem().unwrap_or(0) as f64 / f64::from(1u32 << 30);
        Ok(CudaDevice {
            staging: Mutex::new(None),
            stream,
            allocations: Mutex::new(HashMap::new()),
            describe: format!(
                "{name} (CUDA device {}, {capability}, {total:.1} GiB; {})",
                ctx.ordinal(),
                member.label()
            ),
            member,
        })
    }

    /// The label fault reports name this device by.
    pub fn label(&self) -> &str {
        self.member.label()
    }

    /// A driver failure during `what` (operation `op`, whose driver call then queued
    /// nothing): a sticky error is recorded in the context's health and answered as its
    /// fault; any other is [`Error::Unavailable`] with the CUDA error name.
    fn failed(&self, what: &str, e: &DriverError, op: Option<&'static str>) -> Error {
        match sticky_fault(e.0 as u32) {
            Some(_) => self.member.observe(driver_message(e), op),
            None => unavailable(what, e),
        }
    }

    /// Test hook: launches `fill_digests` with its output and value at an unmapped device
    /// address, which faults the context (`CUDA_ERROR_ILLEGAL_ADDRESS`) asynchronously,
    /// then waits for it; the fault is recorded with this device as the suspect. Returns
    /// the synchronisation's error.
    ///
    /// # Safety
    /// Poisons the process's CUDA context for good: every device in the process fails from
    /// then on. Only for a test binary of its own.
    #[doc(hidden)]
    pub unsafe fn poison_context_for_tests(&self) -> Result<()> {
        // Beyond every virtual address the GPU (or, with HMM, the host) can map.
        let bad = DevicePtr(0xffff_ffff_ffff_0000);
        // SAFETY: deliberately not: the launch reads and writes unmapped device memory,
        // which the GPU reports as a fault instead of touching host memory.
        unsafe { self.fill_digests(bad, bad, 1)? };
        self.synchronize()
    }

    /// Free and total device memory in bytes (`cuMemGetInfo`; all processes count).
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the driver call fails.
    pub fn memory_info(&self) -> Result<(u64, u64)> {
        let (free, total) = self
            .stream
            .context()
            .mem_get_info()
            .map_err(|e| unavailable("cuMemGetInfo", &e))?;
        Ok((free as u64, total as u64))
    }

    /// Bytes currently allocated through this device.
    pub fn allocated_bytes(&self) -> u64 {
        lock(&self.allocations)
            .values()
            .map(|s| s.len() as u64)
            .sum()
    }

    /// Makes the shared context current on this thread before raw driver calls and
    /// launches (the runtime launchers use the thread's current context).
    fn bind(&self) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| self.failed("binding the context to this thread", &e, None))
    }

    /// The stream as the runtime API's `cudaStream_t` (the same handle).
    fn cuda_stream(&self) -> lb::cudaStream_t {
        self.stream.cu_stream().cast()
    }

    /// Binds the context and runs one launcher, mapping its `cudaError_t`.
    fn launch(
        &self,
        name: &'static str,
        run: impl FnOnce(lb::cudaStream_t) -> lb::cudaError_t,
    ) -> Result<()> {
        self.member.begin(name)?;
        self.bind()?;
        let rc = run(self.cuda_stream());
        if rc == lb::cudaSuccess {
            return Ok(());
        }
        // SAFETY: cudaGetErrorName returns a pointer to a static NUL-terminated string (or
        // "unrecognized error code"), never null.
        let error = unsafe { CStr::from_ptr(lb::cudaGetErrorName(rc)) };
        let error = format!("{} ({rc})", error.to_string_lossy());
        if sticky_fault(rc).is_some() {
            return Err(self.member.observe(error, Some(name)));
        }
        Err(Error::Unavailable(format!(
            "CUDA launch {name} failed: {error}{}",
            launch_hint(rc)
        )))
    }
}

impl Device for CudaDevice {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        self.member.check()?;
        let len = usize::try_from(bytes.max(1))
            .map_err(|_| Error::ResourceExhausted(format!("device allocation of {bytes} bytes")))?;
        // SAFETY: the memory is uninitialised, which the trait allows ("contents undefined");
        // u8 has no invalid bit patterns, and nothing reads it through cudarc.
        let slice = unsafe { self.stream.alloc::<u8>(len) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::ResourceExhausted(format!(
                    "device out of memory allocating {bytes} bytes on {}",
                    self.describe
                ))
            } else {
                self.failed("allocation", &e, None)
            }
        })?;
        // With event tracking off, the guard records nothing.
        let ptr = slice.device_ptr(&self.stream).0;
        lock(&self.allocations).insert(ptr, slice);
        Ok(DevicePtr(ptr))
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        // Dropping the slice queues cuMemFreeAsync on this stream, after the work that uses
        // it (or synchronises first where pools are unsupported).
        drop(lock(&self.allocations).remove(&ptr.0));
    }

    unsafe fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.member.begin("copy_to_device")?;
        self.bind()?;
        // SAFETY: the caller guarantees `dst .. dst + src.len()` is allocated and that `src`
        // outlives the copy (trait contract).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }
            .map_err(|e| self.failed("host-to-device copy", &e, Some("copy_to_device")))
    }

    /// Through the device's pinned staging pool on its copy stream (`super::staging`).
    unsafe fn upload_chunked(
        &self,
        dst: DevicePtr,
        src: &[u8],
        chunk: u64,
        then: &mut dyn FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.member.begin("upload_chunked")?;
        self.bind()?;
        let mut pool = lock(&self.staging);
        if pool.is_none() {
            let made = StagingPool::new(self.stream.context()).map_err(|e| {
                self.failed(
                    "creating the pinned staging pool",
                    &e,
                    Some("upload_chunked"),
                )
            })?;
            *pool = Some(made);
        }
        let Some(pool) = pool.as_mut() else {
            return Err(Error::Unavailable("pinned staging pool missing".into()));
        };
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        // SAFETY: the caller guarantees the destination range is allocated on this device,
        // whose allocations and writes are ordered on `self.stream`.
        unsafe {
            pool.upload(&self.stream, dst.0, src, chunk, then, |what, e| {
                self.failed(what, &e, Some("upload_chunked"))
            })
        }
    }

    unsafe fn copy_device_to_device(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let len = usize::try_from(bytes)
            .map_err(|_| Error::Unavailable(format!("device-to-device copy of {bytes} bytes")))?;
        self.member.begin("copy_device_to_device")?;
        self.bind()?;
        // SAFETY: the caller guarantees both ranges are allocated and disjoint (trait
        // contract); the copy is queued on this tree's stream, after the work that wrote
        // `src` and before any later launch or free.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst.0, src.0, len, self.stream.cu_stream())
        }
        .map_err(|e| self.failed("device-to-device copy", &e, Some("copy_device_to_device")))
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.member.begin("copy_to_host")?;
        self.bind()?;
        if !dst.is_empty() {
            // SAFETY: the caller guarantees `src .. src + dst.len()` is allocated; `dst` is
            // borrowed until the synchronisation below has completed the copy.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream())
            }
            .map_err(|e| self.failed("device-to-host copy", &e, Some("copy_to_host")))?;
        }
        self.synchronize()
    }

    fn synchronize(&self) -> Result<()> {
        self.member.check()?;
        self.stream
            .synchronize()
            .map_err(|e| self.failed("stream synchronisation", &e, None))?;
        self.member.settled();
        Ok(())
    }

    unsafe fn zero_hashes(&self, zero: DevicePtr, count: u32) -> Result<()> {
        self.launch("zero_hashes", |s| {
            // SAFETY: shapes guaranteed by the caller (trait contract).
            unsafe { lb::mc_launch_zero_hashes(zero.0 as *mut u32, count, s) }
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
        self.launch("build_base", |s| {
            // SAFETY: shapes guaranteed by the caller (trait contract).
            unsafe {
                lb::mc_launch_build_base(
                    src.0 as *const u8,
                    cell,
                    levels,
                    out.0 as *mut u32,
                    count,
                    s,
                )
            }
        })
    }

    unsafe fn compress_level(
        &self,
        children: DevicePtr,
        parents: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch("compress_level", |s| {
            // SAFETY: shapes guaranteed by the caller (trait contract).
            unsafe {
                lb::mc_launch_compress_level(
                    children.0 as *const u32,
                    parents.0 as *mut u32,
                    count,
                    s,
                )
            }
        })
    }

    unsafe fn vertical(
        &self,
        nodes: DevicePtr,
        zero: DevicePtr,
        tasks: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch("vertical", |s| {
            // SAFETY: shapes guaranteed by the caller (trait contract); the task layout is
            // tasks.h's (sizes asserted above).
            unsafe {
                lb::mc_launch_vertical(
                    nodes.0 as *mut u32,
                    zero.0 as *const u32,
                    tasks.0 as *const lb::McVerticalTask,
                    count,
                    s,
                )
            }
        })
    }

    unsafe fn fill_digests(&self, out: DevicePtr, value: DevicePtr, count: u64) -> Result<()> {
        self.launch("fill_digests", |s| {
            // SAFETY: shapes guaranteed by the caller (trait contract).
            unsafe {
                lb::mc_launch_fill_digests(out.0 as *mut u32, value.0 as *const u32, count, s)
            }
        })
    }

    unsafe fn scatter(
        &self,
        raw: DevicePtr,
        tasks: DevicePtr,
        bytes: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch("scatter", |s| {
            // SAFETY: as in `vertical`.
            unsafe {
                lb::mc_launch_scatter(
                    raw.0 as *mut u8,
                    tasks.0 as *const lb::McWriteTask,
                    bytes.0 as *const u8,
                    count,
                    s,
                )
            }
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
        self.launch("hash_tasks", |s| {
            // SAFETY: as in `vertical`.
            unsafe {
                lb::mc_launch_hash_tasks(
                    raw.0 as *const u8,
                    fold.0 as *mut u32,
                    nodes.0 as *mut u32,
                    tasks.0 as *const lb::McHashTask,
                    count,
                    threads,
                    levels,
                    s,
                )
            }
        })
    }

    unsafe fn page_round(
        &self,
        nodes: DevicePtr,
        slots: DevicePtr,
        list: DevicePtr,
        count: u64,
        step: u32,
    ) -> Result<()> {
        self.launch("page_round", |s| {
            // SAFETY: as in `vertical`.
            unsafe {
                lb::mc_launch_page_round(
                    nodes.0 as *mut u32,
                    slots.0 as *const lb::McPageSlot,
                    list.0 as *const lb::McPageNode,
                    count,
                    step,
                    s,
                )
            }
        })
    }

    unsafe fn fused(&self, a: &FusedArgs) -> Result<()> {
        self.launch("fused", |s| {
            // SAFETY: as in `vertical`.
            unsafe {
                lb::mc_launch_fused(
                    a.phases.0 as *const lb::McPhase,
                    a.phase_count,
                    a.nodes.0 as *mut u32,
                    a.fold.0 as *mut u32,
                    a.zero.0 as *const u32,
                    a.staging.0 as *const u8,
                    a.page_slots.0 as *const lb::McPageSlot,
                    a.page_nodes.0 as *const lb::McPageNode,
                    s,
                )
            }
        })
    }

    unsafe fn compress_pairs(
        &self,
        children: DevicePtr,
        parents: DevicePtr,
        tasks: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch("compress_pairs", |s| {
            // SAFETY: as in `vertical`.
            unsafe {
                lb::mc_launch_compress_pairs(
                    children.0 as *const u32,
                    parents.0 as *mut u32,
                    tasks.0 as *const lb::McPairTask,
                    count,
                    s,
                )
            }
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
        self.launch("openings", |s| {
            // SAFETY: as in `vertical`.
            unsafe {
                lb::mc_launch_openings(
                    nodes.0 as *const u32,
                    fold.0 as *const u32,
                    zero.0 as *const u32,
                    tasks.0 as *const lb::McOpenTask,
                    listed.0 as *const u64,
                    count,
                    top_offset,
                    address_height,
                    address_space_height,
                    out.0 as *mut u32,
                    s,
                )
            }
        })
    }
}
