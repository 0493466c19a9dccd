//! `MemoryImage`: the raw little-endian cell bytes of every address space. A tree holds its
//! image through an `Arc` and rewrites touched blocks in place on every update batch
//! (`Arc::make_mut`, so a snapshot someone else still holds is never changed under them).

use crate::error::{Error, Result};
use crate::hash::F;
use crate::layout::{check_cell, CellType, MemoryLayout, BLOCK_CELLS};

/// Raw memory for every slot of a layout: `slots[i]` holds `num_cells × cell bytes` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryImage {
    cells: Vec<CellType>,
    slots: Vec<Vec<u8>>,
}

impl MemoryImage {
    /// An all-zero image for `layout`.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] if the allocation fails (e.g. a 2^35-cell layout on a
    /// small host), instead of aborting the process.
    pub fn zeroed(layout: &MemoryLayout) -> Result<Self> {
        let mut slots = Vec::with_capacity(layout.address_spaces().len());
        for (i, s) in layout.address_spaces().iter().enumerate() {
            let n = usize::try_from(s.raw_bytes()).map_err(|_| {
                Error::ResourceExhausted(format!("address space {i}: {} bytes", s.raw_bytes()))
            })?;
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| {
                Error::ResourceExhausted(format!(
                    "cannot allocate {n} bytes of raw memory for address space {i}"
                ))
            })?;
            v.resize(n, 0);
            slots.push(v);
        }
        Ok(MemoryImage {
            cells: layout.address_spaces().iter().map(|s| s.cell).collect(),
            slots,
        })
    }

    /// Writes raw little-endian cell bytes at `byte_offset` of `slot`. Checked whole before
    /// anything is written.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the slot does not exist, the offset or length is not a
    /// multiple of the cell size, the write runs past the end of the slot, or (for `field`
    /// cells) a value is `>= p`.
    pub fn write(&mut self, slot: u32, byte_offset: u64, data: &[u8]) -> Result<()> {
        let cell = *self.cells.get(slot as usize).ok_or_else(|| {
            Error::invalid(
                "slot",
                format!(
                    "slot {slot} does not exist (the layout has {} address spaces)",
                    self.cells.len()
                ),
            )
        })?;
        let w = cell.bytes() as u64;
        let len = self.slots[slot as usize].len() as u64;
        if byte_offset % w != 0 {
            return Err(Error::invalid(
                "byte_offset",
                format!("{byte_offset} is not a multiple of the {}-byte cell", w),
            ));
        }
        if data.len() as u64 % w != 0 {
            return Err(Error::invalid(
                "data",
                format!(
                    "length {} is not a multiple of the {w}-byte cell",
                    data.len()
                ),
            ));
        }
        let end = byte_offset.saturating_add(data.len() as u64);
        if end > len {
            return Err(Error::invalid(
                "byte_offset",
                format!(
                    "write of {} bytes at {byte_offset} runs past the end of slot {slot} ({len} bytes)",
                    data.len()
                ),
            ));
        }
        if cell == CellType::Field {
            for (i, c) in data.chunks_exact(4).enumerate() {
                check_cell(cell, cell.read(c), || {
                    format!("data (cell at byte {})", byte_offset + 4 * i as u64)
                })?;
            }
        }
        let start = byte_offset as usize;
        self.slots[slot as usize][start..start + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// The cell type of each slot.
    pub fn cell_types(&self) -> &[CellType] {
        &self.cells
    }

    /// Raw bytes of `slot`.
    ///
    /// # Panics
    /// If `slot` is out of range (callers validate slots first).
    pub fn slot_bytes(&self, slot: u32) -> &[u8] {
        &self.slots[slot as usize]
    }

    /// Raw bytes of blocks `first .. first + count` of `slot`.
    pub fn blocks_bytes(&self, slot: u32, first: u64, count: u64) -> &[u8] {
        let bb = (BLOCK_CELLS * self.cells[slot as usize].bytes()) as u64;
        &self.slots[slot as usize][(first * bb) as usize..((first + count) * bb) as usize]
    }

    /// The 8 field elements of `block` in `slot`.
    pub fn block_fields(&self, slot: u32, block: u64) -> [F; BLOCK_CELLS] {
        self.cells[slot as usize].decode_block(self.blocks_bytes(slot, block, 1))
    }

    /// The 8 canonical cell values of `block` in `slot`.
    pub fn block_cells(&self, slot: u32, block: u64) -> [u32; BLOCK_CELLS] {
        let cell = self.cells[slot as usize];
        let raw = self.blocks_bytes(slot, block, 1);
        core::array::from_fn(|i| cell.read(&raw[i * cell.bytes()..]))
    }

    /// Overwrites `block` of `slot` with `cells` (already validated against the layout).
    pub fn write_block(&mut self, slot: u32, block: u64, cells: &[u32; BLOCK_CELLS]) {
        let cell = self.cells[slot as usize];
        let bb = BLOCK_CELLS * cell.bytes();
        let start = block as usize * bb;
        let raw = &mut self.slots[slot as usize][start..start + bb];
        for (i, &v) in cells.iter().enumerate() {
            cell.write(v, &mut raw[i * cell.bytes()..]);
        }
    }

    /// Total raw bytes held.
    pub fn total_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.len() as u64).sum()
    }
}
