//! The CUDA backend's host side (docs/design.md "CUDA"): [`CudaTree`] over the [`Device`] trait.
//!
//! The kernels live in `cuda/` (headers in `cuda/include/memcommit/`, bodies and launchers in
//! `cuda/src/`). The same headers and kernel bodies are always compiled for the host, and
//! [`EmulatedDevice`] runs every launch there one thread index at a time (in a seeded
//! shuffled order), so the device's
//! arithmetic and index logic are tested on any machine (`tests/cuda_emulated.rs`). With
//! feature `cuda`, [`CudaDevice`] runs the same tree on a GPU through cudarc and the nvcc-built
//! launchers (`tests/cuda_device.rs`); the emulated tree is a test vehicle and not a
//! user-facing backend.

mod device;
mod emulated;
mod ffi;
#[cfg(feature = "cuda")]
mod gpu;
mod health;
pub mod index;
#[cfg(feature = "cuda")]
#[allow(
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::all
)]
mod launchers_bindings;
mod plan;
pub mod probe;
#[cfg(feature = "cuda")]
mod staging;
mod tree;
mod words;

pub use device::{Device, DevicePtr, FusedArgs};
pub use emulated::{EmulatedContext, EmulatedDevice, DEFAULT_SEED, SEED_VAR};
#[cfg(feature = "cuda")]
pub use gpu::CudaDevice;
pub use health::{sticky_fault, DeviceHealth, Fault, HealthMember, Suspect};
pub use tree::CudaTree;

/// The health of this process's CUDA context (device 0's primary context), shared by every
/// `CudaDevice` and by [`probe_device`]. It exists without feature `cuda` too (and then
/// never faults by itself), so the server's handling of a faulted device can be tested on
/// any machine: register a member and make it [observe](HealthMember::observe) a fault.
pub fn context_health() -> &'static std::sync::Arc<DeviceHealth> {
    static HEALTH: std::sync::OnceLock<std::sync::Arc<DeviceHealth>> = std::sync::OnceLock::new();
    HEALTH.get_or_init(DeviceHealth::new)
}

/// A usable GPU as [`probe_device`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The driver's device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// CUDA device ordinal (always 0: `CUDA_VISIBLE_DEVICES` picks the GPU).
    pub ordinal: usize,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (u32, u32),
    /// Free device memory in bytes at the time of the probe (`cuMemGetInfo`).
    pub free_bytes: u64,
    /// Total device memory in bytes.
    pub total_bytes: u64,
    /// What the probe's kernel check ran and found, e.g. `zero_hashes kernel: 32 digests
    /// equal the CPU's` (run once per process, on the first probe).
    pub kernel_check: String,
}

/// Probes for a usable CUDA device: the context's [health](context_health) first (a device
/// that faulted is never usable again in this process), then the driver library
/// (`libcuda.so`, loaded at run time), the device count, device 0's compute capability (8.0
/// or newer), and a kernel check: the zero-hash kernel runs on the device and its digests
/// must equal the CPU's (this catches a driver older than the toolkit and a fatbin without
/// code for the device). The context and the kernel check's answer are kept for the
/// process; the memory figures are read on every call. Never panics.
///
/// # Errors
/// Why no device is usable, e.g. `libcuda.so not found: no NVIDIA driver is installed`,
/// `this build has no CUDA backend (build with --features cuda)`, a failed kernel check, or
/// `the CUDA device is unusable since CUDA_ERROR_ILLEGAL_ADDRESS … during … of tree …`.
pub fn probe_device() -> Result<DeviceInfo, String> {
    if let Some(why) = context_health().unusable_reason() {
        return Err(why);
    }
    #[cfg(feature = "cuda")]
    {
        gpu::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build has no CUDA backend (build with --features cuda)".into())
    }
}

use crate::layout::CellType;

/// The kernels' cell type code: log2 of the cell's bytes (u8 = 0, u16 = 1, field = 2).
pub fn cell_code(cell: CellType) -> u32 {
    match cell {
        CellType::U8 => 0,
        CellType::U16 => 1,
        CellType::Field => 2,
    }
}
