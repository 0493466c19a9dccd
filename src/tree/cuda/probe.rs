//! Safe entry points into the host build of the CUDA headers, for tests: the constants, the
//! permutation, the field multiply, leaf encoding from raw bytes and the index arithmetic,
//! exactly as compiled from `cuda/include/memcommit/`.

use super::ffi;
use crate::error::{Error, Result};
use crate::hash::{Digest, P};
use crate::layout::{CellType, BLOCK_CELLS};

/// Poseidon2-16 constants as canonical integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Poseidon2Tables {
    /// Initial external round constants, 4 rounds × 16, round-major.
    pub external_initial: [u32; 64],
    /// Final external round constants, 4 rounds × 16, round-major.
    pub external_final: [u32; 64],
    /// Internal round constants, one per partial round.
    pub internal: [u32; 13],
    /// The internal matrix's diagonal `V` (matrix `1 + diag(V)`).
    pub diagonal: [u32; 16],
}

impl Poseidon2Tables {
    fn read(f: unsafe extern "C" fn(*mut u32, *mut u32, *mut u32, *mut u32)) -> Self {
        let mut t = Poseidon2Tables {
            external_initial: [0; 64],
            external_final: [0; 64],
            internal: [0; 13],
            diagonal: [0; 16],
        };
        // SAFETY: the export writes exactly 64, 64, 13 and 16 words.
        unsafe {
            f(
                t.external_initial.as_mut_ptr(),
                t.external_final.as_mut_ptr(),
                t.internal.as_mut_ptr(),
                t.diagonal.as_mut_ptr(),
            )
        };
        t
    }
}

/// The canonical constants written in `poseidon2_constants.h`.
pub fn header_constants() -> Poseidon2Tables {
    Poseidon2Tables::read(ffi::mc_emu_poseidon2_constants)
}

/// The Montgomery tables the permutation reads, converted back to canonical integers.
pub fn montgomery_tables() -> Poseidon2Tables {
    Poseidon2Tables::read(ffi::mc_emu_poseidon2_tables)
}

/// The header's permutation on 16 canonical values.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `state` if a value is `>= p`.
pub fn permute(mut state: [u32; 16]) -> Result<[u32; 16]> {
    if let Some(v) = state.iter().find(|&&v| v >= P) {
        return Err(Error::invalid("state", format!("{v} >= p")));
    }
    // SAFETY: 16 words, as the export requires.
    unsafe { ffi::mc_emu_permute(state.as_mut_ptr()) };
    Ok(state)
}

/// `a · b mod p` through the header's Montgomery multiply; `a, b < p`.
pub fn mul(a: u32, b: u32) -> u32 {
    // SAFETY: plain values.
    unsafe { ffi::mc_emu_mul(a % P, b % P) }
}

/// The header's leaf hash of block `block` of a raw slot `raw` of `cell` cells.
///
/// # Errors
/// [`Error::InvalidArgument`] if the block lies outside `raw`, or a field cell is `>= p`.
pub fn leaf_from_raw(raw: &[u8], cell: CellType, block: u64) -> Result<Digest> {
    let bytes = (BLOCK_CELLS * cell.bytes()) as u64;
    let start = block.saturating_mul(bytes);
    if start.saturating_add(bytes) > raw.len() as u64 {
        return Err(Error::invalid(
            "block",
            format!("block {block} is outside {} raw bytes", raw.len()),
        ));
    }
    if cell == CellType::Field {
        let at = start as usize;
        for c in raw[at..at + bytes as usize].chunks_exact(4) {
            crate::layout::check_cell(cell, cell.read(c), || "raw".into())?;
        }
    }
    let mut out = [0u32; 8];
    // SAFETY: the block lies inside `raw` (checked); `out` holds 8 words.
    unsafe {
        ffi::mc_emu_leaf_from_raw(
            raw.as_ptr(),
            super::cell_code(cell),
            block,
            out.as_mut_ptr(),
        )
    };
    Digest::from_canonical(out).ok_or_else(|| Error::Unavailable("leaf hash not canonical".into()))
}

/// `tree_index.h`'s `stored_base_level(h, k)`.
pub fn stored_base_level(h: u32, k: u32) -> u32 {
    // SAFETY: plain values.
    unsafe { ffi::mc_emu_stored_base_level(h, k) }
}

/// `tree_index.h`'s `level_offset(h, b, l)`; needs `b <= l <= h < 63`.
pub fn level_offset(h: u32, b: u32, l: u32) -> u64 {
    // SAFETY: plain values.
    unsafe { ffi::mc_emu_level_offset(h, b, l) }
}

/// `tree_index.h`'s `top_level_offset(ash, l)`; needs `l <= ash < 63`.
pub fn top_level_offset(ash: u32, l: u32) -> u64 {
    // SAFETY: plain values.
    unsafe { ffi::mc_emu_top_level_offset(ash, l) }
}

/// `tree_index.h`'s `top_digests(ash)`; needs `ash < 63`.
pub fn top_digests(ash: u32) -> u64 {
    // SAFETY: plain values.
    unsafe { ffi::mc_emu_top_digests(ash) }
}

/// `tasks.h`'s `MC_ABSENT_PAGE` and the Rust mirror's value, to compare.
pub fn absent_page() -> (u64, u64) {
    // SAFETY: no arguments.
    (unsafe { ffi::mc_emu_absent_page() }, ffi::ABSENT_PAGE)
}

/// C `sizeof` of `McWriteTask`, `McHashTask`, `McPairTask`, `McVerticalTask`, `McOpenTask`,
/// `McPageSlot`, `McPageNode`, `McPhase`.
pub fn task_sizes() -> [u64; 8] {
    let mut out = [0u64; 8];
    // SAFETY: the exports write 5 and 3 values.
    unsafe {
        ffi::mc_emu_task_sizes(out.as_mut_ptr());
        ffi::mc_emu_page_task_sizes(out[5..].as_mut_ptr());
    }
    out
}

/// Rust `size_of` of the mirrored task structs, in the order of [`task_sizes`].
pub fn rust_task_sizes() -> [u64; 8] {
    [
        size_of::<ffi::WriteTask>() as u64,
        size_of::<ffi::HashTask>() as u64,
        size_of::<ffi::PairTask>() as u64,
        size_of::<ffi::VerticalTask>() as u64,
        size_of::<ffi::OpenTask>() as u64,
        size_of::<ffi::PageSlot>() as u64,
        size_of::<ffi::PageNode>() as u64,
        size_of::<ffi::Phase>() as u64,
    ]
}

/// The canonical digest of 8 device (Montgomery) words, as the tree reads nodes back.
pub fn digest_from_montgomery(words: [u32; 8]) -> Digest {
    super::words::digest_from_words(&words)
}
