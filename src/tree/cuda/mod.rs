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
pub use emulated::{EmulatedDevice, DEFAULT_SEED, SEED_VAR};
#[cfg(feature = "cuda")]
pub use gpu::CudaDevice;
pub use tree::CudaTree;

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
}

/// Probes for a usable CUDA device: the driver library (`libcuda.so`, loaded at run time),
/// then the device count, then device 0's compute capability (8.0 or newer). The context is
/// opened once and kept; the memory figures are read on every call. Never panics.
///
/// # Errors
/// Why no device is usable, e.g. `libcuda.so not found: no NVIDIA driver is installed`, or
/// `this build has no CUDA backend (build with --features cuda)`.
pub fn probe_device() -> Result<DeviceInfo, String> {
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
