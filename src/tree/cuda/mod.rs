//! The CUDA backend's host side (DESIGN.md "CUDA"): [`CudaTree`] over the [`Device`] trait.
//!
//! The kernels live in `cuda/` (headers in `cuda/include/memcommit/`, bodies and launchers in
//! `cuda/src/`). The same headers and kernel bodies are always compiled for the host, and
//! [`EmulatedDevice`] runs every launch there one thread index at a time, so the device's
//! arithmetic and index logic are tested on any machine (`tests/cuda_emulated.rs`). The
//! cudarc device (feature `cuda`) comes in a later increment; the emulated tree is a test
//! vehicle and not a user-facing backend.

mod device;
mod emulated;
mod ffi;
pub mod index;
mod plan;
pub mod probe;
mod tree;
mod words;

pub use device::{Device, DevicePtr};
pub use emulated::EmulatedDevice;
pub use tree::CudaTree;

use crate::layout::CellType;

/// The kernels' cell type code: log2 of the cell's bytes (u8 = 0, u16 = 1, field = 2).
pub fn cell_code(cell: CellType) -> u32 {
    match cell {
        CellType::U8 => 0,
        CellType::U16 => 1,
        CellType::Field => 2,
    }
}
