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

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DevicePtr as _, DriverError};

use super::device::{Device, DevicePtr, FusedArgs};
use super::ffi;
use super::launchers_bindings as lb;
use super::staging::StagingPool;
use super::DeviceInfo;
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
/// compute capability. Never panics.
///
/// Returns the device's name and memory (bytes, from `cuMemGetInfo`).
///
/// # Errors
/// The reason no device is usable, e.g. `libcuda.so not found: no NVIDIA driver is
/// installed`.
pub fn probe() -> std::result::Result<DeviceInfo, String> {
    let ctx = context()?;
    let name = ctx.name().map_err(|e| driver_message(&e))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| driver_message(&e))?;
    let (free, total) = ctx.mem_get_info().map_err(|e| driver_message(&e))?;
    Ok(DeviceInfo {
        name,
        ordinal: ctx.ordinal(),
        compute_capability: (major as u32, minor as u32),
        free_bytes: free as u64,
        total_bytes: total as u64,
    })
}

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent across a panic elsewhere; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaDevice {
    /// A new stream on the shared context of device 0.
    ///
    /// # Errors
    /// [`Error::Unavailable`] with the [`super::probe_device`] reason when no device is
    /// usable, or when the stream cannot be created.
    pub fn new() -> Result<Self> {
        let ctx = context().map_err(|why| Error::Unavailable(format!("no CUDA device: {why}")))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| unavailable("stream creation", &e))?;
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
                "{name} (CUDA device {}, {capability}, {total:.1} GiB)",
                ctx.ordinal()
            ),
        })
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
            .map_err(|e| unavailable("binding the context to this thread", &e))
    }

    /// The stream as the runtime API's `cudaStream_t` (the same handle).
    fn cuda_stream(&self) -> lb::cudaStream_t {
        self.stream.cu_stream().cast()
    }

    /// Binds the context and runs one launcher, mapping its `cudaError_t`.
    fn launch(
        &self,
        name: &str,
        run: impl FnOnce(lb::cudaStream_t) -> lb::cudaError_t,
    ) -> Result<()> {
        self.bind()?;
        let rc = run(self.cuda_stream());
        if rc == lb::cudaSuccess {
            return Ok(());
        }
        // SAFETY: cudaGetErrorName returns a pointer to a static NUL-terminated string (or
        // "unrecognized error code"), never null.
        let error = unsafe { CStr::from_ptr(lb::cudaGetErrorName(rc)) };
        Err(Error::Unavailable(format!(
            "CUDA launch {name} failed: {} ({rc})",
            error.to_string_lossy()
        )))
    }
}

impl Device for CudaDevice {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
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
                unavailable("allocation", &e)
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
        self.bind()?;
        // SAFETY: the caller guarantees `dst .. dst + src.len()` is allocated and that `src`
        // outlives the copy (trait contract).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }
            .map_err(|e| unavailable("host-to-device copy", &e))
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
        self.bind()?;
        let mut pool = lock(&self.staging);
        if pool.is_none() {
            let made = StagingPool::new(self.stream.context())
                .map_err(|e| unavailable("creating the pinned staging pool", &e))?;
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
                unavailable(what, &e)
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
        self.bind()?;
        // SAFETY: the caller guarantees both ranges are allocated and disjoint (trait
        // contract); the copy is queued on this tree's stream, after the work that wrote
        // `src` and before any later launch or free.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst.0, src.0, len, self.stream.cu_stream())
        }
        .map_err(|e| unavailable("device-to-device copy", &e))
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.bind()?;
        if !dst.is_empty() {
            // SAFETY: the caller guarantees `src .. src + dst.len()` is allocated; `dst` is
            // borrowed until the synchronisation below has completed the copy.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream())
            }
            .map_err(|e| unavailable("device-to-host copy", &e))?;
        }
        self.synchronize()
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| unavailable("stream synchronisation", &e))
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
