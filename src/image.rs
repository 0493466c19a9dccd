//! `MemoryImage`: the raw little-endian cells of every address space, held as **pages**.
//!
//! A page is `2^PAGE_LEVELS` consecutive, aligned blocks of one slot (4 KiB of `u8` cells);
//! a slot smaller than a page is one page. A page that was never written is *absent*: it
//! costs nothing and reads as zeros. A page becomes *present* when a write or an update
//! touches it, and stays present while the image lives, even if it is zeroed again. So an
//! image costs what a program touched, never what its layout declares (OpenVM declares a
//! 2^29-byte RAM space; a guest touches a few MiB of it).
//!
//! Each slot keeps its present pages in one contiguous buffer, in the order they were
//! created, and a sorted page table from page number to [`PageId`] (the page's place in that
//! buffer). Trees key their own per-page nodes by the same ids, and the device tree uploads
//! the buffer as it is. Pages are an internal unit: no root or format depends on them.
//!
//! A tree holds its image through an `Arc` and rewrites touched blocks on every update batch
//! (`Arc::make_mut`, so a snapshot someone else still holds is never changed under them).

use std::collections::BTreeMap;
use std::ops::Range;

use crate::error::{Error, Result};
use crate::hash::F;
use crate::layout::{check_cell, CellType, MemoryLayout, BLOCK_CELLS};

/// Blocks per page, as a power of two: `2^9` blocks, i.e. 4 KiB of `u8` cells, 8 KiB of
/// `u16` and 16 KiB of `field` cells (the 4 KiB OS page OpenVM's sparse snapshot also uses,
/// openvm PR 3112). Changed only with measurements.
pub const PAGE_LEVELS: u32 = 9;

/// A present page's place in its slot's page buffer: pages are numbered `0, 1, …` in the
/// order they were created. Stable while the image lives; an undone batch removes the
/// pages it created, which are always the last ids.
pub type PageId = u32;

/// The page table and pages of one slot.
#[derive(Clone, Debug)]
struct SlotPages {
    cell: CellType,
    /// Blocks the layout declares: `num_cells / 8` (0 for an empty slot).
    num_blocks: u64,
    /// Levels of one page's subtree: `min(PAGE_LEVELS, log2(num_blocks))`.
    page_levels: u32,
    /// Page number → id, sorted by page number.
    table: BTreeMap<u64, PageId>,
    /// Id → page number.
    numbers: Vec<u64>,
    /// Every present page's bytes, `page_bytes` each, in id order.
    data: Vec<u8>,
}

impl SlotPages {
    fn page_blocks(&self) -> u64 {
        1 << self.page_levels
    }

    fn block_bytes(&self) -> usize {
        BLOCK_CELLS * self.cell.bytes()
    }

    fn page_bytes(&self) -> usize {
        self.block_bytes() << self.page_levels
    }

    fn page(&self, id: PageId) -> &[u8] {
        let n = self.page_bytes();
        &self.data[id as usize * n..][..n]
    }

    fn page_mut(&mut self, id: PageId) -> &mut [u8] {
        let n = self.page_bytes();
        &mut self.data[id as usize * n..][..n]
    }

    /// The id of page `page`, creating it (zeroed) when absent.
    fn ensure(&mut self, page: u64) -> Result<PageId> {
        if let Some(&id) = self.table.get(&page) {
            return Ok(id);
        }
        let n = self.page_bytes();
        let id = PageId::try_from(self.numbers.len()).map_err(|_| {
            Error::ResourceExhausted("a slot cannot hold more than 2^32 pages".into())
        })?;
        self.data.try_reserve(n).map_err(|_| {
            Error::ResourceExhausted(format!(
                "cannot allocate a {n}-byte page of raw memory ({} pages present)",
                self.numbers.len()
            ))
        })?;
        self.data.resize(self.data.len() + n, 0);
        self.numbers.push(page);
        self.table.insert(page, id);
        Ok(id)
    }

    /// Removes the pages with ids `count..`.
    fn truncate(&mut self, count: usize) {
        for page in self.numbers.drain(count.min(self.numbers.len())..) {
            self.table.remove(&page);
        }
        self.data.truncate(count * self.page_bytes());
    }
}

/// Raw memory for every slot of a layout, as present pages (module docs).
#[derive(Clone, Debug)]
pub struct MemoryImage {
    cells: Vec<CellType>,
    slots: Vec<SlotPages>,
}

/// Two images are equal when they have the same slots and the same present pages with the
/// same bytes, whatever order the pages were created in.
impl PartialEq for MemoryImage {
    fn eq(&self, other: &Self) -> bool {
        self.cells == other.cells
            && self.slots.iter().zip(&other.slots).all(|(a, b)| {
                a.num_blocks == b.num_blocks
                    && a.table.len() == b.table.len()
                    && a.table
                        .iter()
                        .zip(&b.table)
                        .all(|((pa, &ia), (pb, &ib))| pa == pb && a.page(ia) == b.page(ib))
            })
    }
}

impl Eq for MemoryImage {}

/// What [`MemoryImage::write_blocks`] changed, so that [`MemoryImage::undo`] can restore
/// the image exactly: the pages each slot had, and the old cells of every block written in
/// a page that existed before.
#[derive(Debug, Default)]
pub struct ImageUndo {
    /// Present pages per slot before the write, and the capacity of the slot's page buffer
    /// (given back by the undo).
    pages_before: Vec<(usize, usize)>,
    /// `(slot, block, old cells)` of each overwritten block in a page that was present.
    blocks: Vec<(u32, u64, [u32; BLOCK_CELLS])>,
}

impl ImageUndo {
    /// Pages the write created, over all slots.
    pub fn created_pages(&self, image: &MemoryImage) -> u64 {
        image
            .slots
            .iter()
            .zip(&self.pages_before)
            .map(|(s, &(before, _))| (s.numbers.len() - before) as u64)
            .sum()
    }

    /// Present pages of `slot` before the write: ids at or above it were created by it.
    pub fn pages_before(&self, slot: u32) -> usize {
        self.pages_before[slot as usize].0
    }
}

impl MemoryImage {
    /// An all-zero image for `layout`: every page absent. Allocates nothing in proportion
    /// to `num_cells`, so 2^32-cell slots cost nothing until written.
    ///
    /// # Errors
    /// None today; kept fallible for callers that allocate eagerly.
    pub fn zeroed(layout: &MemoryLayout) -> Result<Self> {
        let slots = layout
            .address_spaces()
            .iter()
            .map(|s| SlotPages {
                cell: s.cell,
                num_blocks: s.num_blocks(),
                page_levels: s.height().map_or(0, |h| h.min(PAGE_LEVELS)),
                table: BTreeMap::new(),
                numbers: Vec::new(),
                data: Vec::new(),
            })
            .collect();
        Ok(MemoryImage {
            cells: layout.address_spaces().iter().map(|s| s.cell).collect(),
            slots,
        })
    }

    fn slot_pages(&self, slot: u32) -> Result<&SlotPages> {
        self.slots.get(slot as usize).ok_or_else(|| {
            Error::invalid(
                "slot",
                format!(
                    "slot {slot} does not exist (the layout has {} address spaces)",
                    self.cells.len()
                ),
            )
        })
    }

    /// Checks a write of `len` bytes at `byte_offset` of `slot` and returns the pages it
    /// covers (page numbers), without changing anything.
    ///
    /// # Errors
    /// As [`MemoryImage::write`], except for the cell values.
    fn check_write(&self, slot: u32, byte_offset: u64, len: usize) -> Result<Range<u64>> {
        let s = self.slot_pages(slot)?;
        let w = s.cell.bytes() as u64;
        let size = s.num_blocks * s.block_bytes() as u64;
        if !byte_offset.is_multiple_of(w) {
            return Err(Error::invalid(
                "byte_offset",
                format!("{byte_offset} is not a multiple of the {w}-byte cell"),
            ));
        }
        if !(len as u64).is_multiple_of(w) {
            return Err(Error::invalid(
                "data",
                format!("length {len} is not a multiple of the {w}-byte cell"),
            ));
        }
        let end = byte_offset.saturating_add(len as u64);
        if end > size {
            return Err(Error::invalid(
                "byte_offset",
                format!(
                    "write of {len} bytes at {byte_offset} runs past the end of slot {slot} \
                     ({size} bytes)"
                ),
            ));
        }
        let pb = s.page_bytes() as u64;
        Ok(if len == 0 {
            0..0
        } else {
            byte_offset / pb..end.div_ceil(pb)
        })
    }

    /// Pages a valid [`MemoryImage::write`] of `len` bytes at `byte_offset` of `slot` would
    /// create (those of its range that are absent), for reserving memory before writing.
    ///
    /// # Errors
    /// As [`MemoryImage::write`], except for the cell values, which it does not see.
    pub fn pages_created_by_write(&self, slot: u32, byte_offset: u64, len: usize) -> Result<u64> {
        let range = self.check_write(slot, byte_offset, len)?;
        let s = &self.slots[slot as usize];
        let present = s.table.range(range.clone()).count() as u64;
        Ok(range.end - range.start - present)
    }

    /// Checks a [`MemoryImage::write`] of `data` at `byte_offset` of `slot` whole, cell
    /// values included, without changing anything; returns the page numbers it covers.
    ///
    /// # Errors
    /// As [`MemoryImage::write`], but never [`Error::ResourceExhausted`].
    pub fn check_write_data(&self, slot: u32, byte_offset: u64, data: &[u8]) -> Result<Range<u64>> {
        let pages = self.check_write(slot, byte_offset, data.len())?;
        let cell = self.cells[slot as usize];
        if cell == CellType::Field {
            for (i, c) in data.chunks_exact(4).enumerate() {
                check_cell(cell, cell.read(c), || {
                    format!("data (cell at byte {})", byte_offset + 4 * i as u64)
                })?;
            }
        }
        Ok(pages)
    }

    /// Writes raw little-endian cell bytes at `byte_offset` of `slot`, creating the pages it
    /// covers. Checked whole before anything is written.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the slot does not exist, the offset or length is not a
    /// multiple of the cell size, the write runs past the end of the slot, or (for `field`
    /// cells) a value is `>= p`; [`Error::ResourceExhausted`] if a page cannot be
    /// allocated (the image is then as before).
    pub fn write(&mut self, slot: u32, byte_offset: u64, data: &[u8]) -> Result<()> {
        self.write_all(&[(slot, byte_offset, data)])
    }

    /// Applies `writes` (`(slot, byte_offset, data)`, as [`MemoryImage::write`]) in order,
    /// all or none: every write is checked, then every page they cover is created, then the
    /// bytes are copied. A later write to the same bytes wins. This is how a `WriteMemory`
    /// stream's staged chunks reach the image at once.
    ///
    /// # Errors
    /// As [`MemoryImage::write`], for the first write that fails its check; the image is
    /// unchanged on any error.
    pub fn write_all(&mut self, writes: &[(u32, u64, &[u8])]) -> Result<()> {
        let ranges = writes
            .iter()
            .map(|&(slot, off, data)| self.check_write_data(slot, off, data))
            .collect::<Result<Vec<_>>>()?;
        let before: Vec<usize> = self.slots.iter().map(|s| s.numbers.len()).collect();
        for (&(slot, ..), pages) in writes.iter().zip(&ranges) {
            for page in pages.clone() {
                if let Err(e) = self.slots[slot as usize].ensure(page) {
                    for (s, &n) in self.slots.iter_mut().zip(&before) {
                        s.truncate(n);
                    }
                    return Err(e);
                }
            }
        }
        for (&(slot, byte_offset, data), pages) in writes.iter().zip(ranges) {
            let s = &mut self.slots[slot as usize];
            let pb = s.page_bytes() as u64;
            let mut at = byte_offset;
            let mut rest = data;
            for page in pages {
                let id = s.table[&page];
                let start = (at - page * pb) as usize;
                let n = rest.len().min(pb as usize - start);
                s.page_mut(id)[start..start + n].copy_from_slice(&rest[..n]);
                (at, rest) = (at + n as u64, &rest[n..]);
            }
        }
        Ok(())
    }

    /// The cell type of each slot.
    pub fn cell_types(&self) -> &[CellType] {
        &self.cells
    }

    /// Blocks `slot` declares (`num_cells / 8`). Callers validate `slot` first.
    pub fn num_blocks(&self, slot: u32) -> u64 {
        self.slots[slot as usize].num_blocks
    }

    /// Levels of one page's subtree in `slot`: `min(PAGE_LEVELS, log2(num_blocks))`, so
    /// page `n` holds blocks `n · 2^page_levels ..`.
    pub fn page_levels(&self, slot: u32) -> u32 {
        self.slots[slot as usize].page_levels
    }

    /// Bytes of one page of `slot`: `2^page_levels` blocks of `8 × cell bytes`.
    pub fn page_bytes(&self, slot: u32) -> u64 {
        self.slots[slot as usize].page_bytes() as u64
    }

    /// Present pages of `slot`.
    pub fn present_pages(&self, slot: u32) -> usize {
        self.slots[slot as usize].numbers.len()
    }

    /// Present pages over all slots.
    pub fn total_pages(&self) -> u64 {
        self.slots.iter().map(|s| s.numbers.len() as u64).sum()
    }

    /// The id of page number `page` of `slot`, or `None` when it is absent.
    #[inline]
    pub fn page_id(&self, slot: u32, page: u64) -> Option<PageId> {
        self.slots[slot as usize].table.get(&page).copied()
    }

    /// The page number of present page `id` of `slot`.
    pub fn page_number(&self, slot: u32, id: PageId) -> u64 {
        self.slots[slot as usize].numbers[id as usize]
    }

    /// The bytes of present page `id` of `slot` ([`MemoryImage::page_bytes`] of them).
    #[inline]
    pub fn page(&self, slot: u32, id: PageId) -> &[u8] {
        self.slots[slot as usize].page(id)
    }

    /// Present pages of `slot` as `(page number, id)`, by page number.
    pub fn pages(&self, slot: u32) -> impl Iterator<Item = (u64, PageId)> + '_ {
        self.slots[slot as usize]
            .table
            .iter()
            .map(|(&n, &id)| (n, id))
    }

    /// Present pages of `slot` whose page numbers lie in `numbers`, as `(page number, id)`,
    /// by page number.
    pub fn pages_in(
        &self,
        slot: u32,
        numbers: Range<u64>,
    ) -> impl Iterator<Item = (u64, PageId)> + '_ {
        self.slots[slot as usize]
            .table
            .range(numbers)
            .map(|(&n, &id)| (n, id))
    }

    /// Every present page of `slot`, back to back in id order: what a device uploads.
    pub fn page_buffer(&self, slot: u32) -> &[u8] {
        &self.slots[slot as usize].data
    }

    /// Copies bytes `byte_offset .. byte_offset + out.len()` of `slot` into `out`, zeros
    /// where pages are absent.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] as [`MemoryImage::write`] for the slot and the range.
    pub fn read(&self, slot: u32, byte_offset: u64, out: &mut [u8]) -> Result<()> {
        let pages = self.check_write(slot, byte_offset, out.len())?;
        let s = &self.slots[slot as usize];
        let pb = s.page_bytes() as u64;
        let mut at = byte_offset;
        let mut rest = out;
        for page in pages {
            let start = (at - page * pb) as usize;
            let n = rest.len().min(pb as usize - start);
            let (head, tail) = rest.split_at_mut(n);
            match s.table.get(&page) {
                Some(&id) => head.copy_from_slice(&s.page(id)[start..start + n]),
                None => head.fill(0),
            }
            (at, rest) = (at + n as u64, tail);
        }
        Ok(())
    }

    /// Byte ranges of `slot` covered by runs of consecutive present pages, ascending: all a
    /// client needs to upload to rebuild this image, since absent pages read zero.
    pub fn present_ranges(&self, slot: u32) -> Vec<Range<u64>> {
        let pb = self.page_bytes(slot);
        let mut runs: Vec<Range<u64>> = Vec::new();
        for (n, _) in self.pages(slot) {
            match runs.last_mut() {
                Some(r) if r.end == n * pb => r.end += pb,
                _ => runs.push(n * pb..(n + 1) * pb),
            }
        }
        runs
    }

    /// The 8 field elements of `block` in `slot` (zeros in an absent page).
    pub fn block_fields(&self, slot: u32, block: u64) -> [F; BLOCK_CELLS] {
        self.block_cells(slot, block).map(F::new)
    }

    /// The 8 canonical cell values of `block` in `slot` (zeros in an absent page).
    pub fn block_cells(&self, slot: u32, block: u64) -> [u32; BLOCK_CELLS] {
        let s = &self.slots[slot as usize];
        match s.table.get(&(block >> s.page_levels)) {
            None => [0; BLOCK_CELLS],
            Some(&id) => {
                let bb = s.block_bytes();
                let at = (block & (s.page_blocks() - 1)) as usize * bb;
                s.cell.read_block(&s.page(id)[at..at + bb])
            }
        }
    }

    /// Pages that writing `blocks` (valid `(slot, block)` positions; invalid ones are
    /// skipped) would create, per slot: the distinct absent pages they fall in.
    pub fn pages_created_by_blocks(&self, blocks: impl Iterator<Item = (u32, u64)>) -> Vec<u64> {
        let mut new: Vec<(u32, u64)> = Vec::new();
        let mut last = None;
        for (slot, block) in blocks {
            let Some(s) = self.slots.get(slot as usize) else {
                continue;
            };
            let page = block >> s.page_levels;
            if block >= s.num_blocks || last == Some((slot, page)) {
                continue;
            }
            last = Some((slot, page));
            if !s.table.contains_key(&page) {
                new.push((slot, page));
            }
        }
        new.sort_unstable();
        new.dedup();
        let mut per_slot = vec![0; self.slots.len()];
        for (slot, _) in new {
            per_slot[slot as usize] += 1;
        }
        per_slot
    }

    /// Overwrites blocks with new canonical cells (already validated against the layout),
    /// creating the pages they fall in, and returns what to [`MemoryImage::undo`]. All or
    /// nothing: if a page cannot be allocated the image is left as it was.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] when a page cannot be allocated.
    pub fn write_blocks<'a>(
        &mut self,
        blocks: impl ExactSizeIterator<Item = (u32, u64, &'a [u32; BLOCK_CELLS])> + Clone,
    ) -> Result<ImageUndo> {
        let mut undo = ImageUndo {
            pages_before: self
                .slots
                .iter()
                .map(|s| (s.numbers.len(), s.data.capacity()))
                .collect(),
            blocks: Vec::with_capacity(blocks.len()),
        };
        // Pages first, so that a failed allocation leaves every block as it was.
        for (slot, block, _) in blocks.clone() {
            let s = &mut self.slots[slot as usize];
            if let Err(e) = s.ensure(block >> s.page_levels) {
                self.undo(undo);
                return Err(e);
            }
        }
        for (slot, block, cells) in blocks {
            let s = &mut self.slots[slot as usize];
            let id = s.table[&(block >> s.page_levels)];
            let (cell, bb) = (s.cell, s.block_bytes());
            let at = (block & (s.page_blocks() - 1)) as usize * bb;
            let raw = &mut s.page_mut(id)[at..at + bb];
            if (id as usize) < undo.pages_before[slot as usize].0 {
                undo.blocks.push((slot, block, cell.read_block(raw)));
            }
            for (i, &v) in cells.iter().enumerate() {
                cell.write(v, &mut raw[i * cell.bytes()..]);
            }
        }
        Ok(undo)
    }

    /// Overwrites one block with canonical cells (already validated against the layout),
    /// creating its page: [`MemoryImage::write_blocks`] of one block, without the undo.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] when the page cannot be allocated.
    pub fn write_block(&mut self, slot: u32, block: u64, cells: &[u32; BLOCK_CELLS]) -> Result<()> {
        self.write_blocks(std::iter::once((slot, block, cells)))
            .map(drop)
    }

    /// Restores the image to what it was before the [`MemoryImage::write_blocks`] call that
    /// returned `undo` (no other change may have come between).
    pub fn undo(&mut self, undo: ImageUndo) {
        for (slot, block, cells) in undo.blocks.iter().rev() {
            let s = &mut self.slots[*slot as usize];
            let id = s.table[&(block >> s.page_levels)];
            let (cell, bb) = (s.cell, s.block_bytes());
            let at = (block & (s.page_blocks() - 1)) as usize * bb;
            let raw = &mut s.page_mut(id)[at..at + bb];
            for (i, &v) in cells.iter().enumerate() {
                cell.write(v, &mut raw[i * cell.bytes()..]);
            }
        }
        for (s, &(before, capacity)) in self.slots.iter_mut().zip(&undo.pages_before) {
            if s.numbers.len() > before {
                s.truncate(before);
                s.data.shrink_to(capacity);
            }
        }
    }

    /// Raw bytes of the present pages, over all slots.
    pub fn total_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.data.len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{AddressSpace, LayoutSpec};

    #[test]
    fn write_all_applies_every_write_in_order_or_none() {
        let l = layout(&[(CellType::U8, 1 << 16), (CellType::Field, 1 << 12)]);
        let mut image = MemoryImage::zeroed(&l).expect("image");
        image.write(0, 0, &[5; 8]).expect("write");
        let before = image.clone();
        // The third write's field cell is p: nothing of the first two is written.
        let p = crate::hash::P.to_le_bytes();
        let bad: [(u32, u64, &[u8]); 3] = [(0, 4096, &[1; 8]), (1, 0, &[2, 0, 0, 0]), (1, 8, &p)];
        let e = image.write_all(&bad).expect_err("a field cell >= p");
        assert!(e.to_string().contains("data (cell at byte 8)"), "{e}");
        assert_eq!(image, before);
        assert_eq!(image.total_pages(), 1);
        // Valid: later writes to the same bytes win, pages of both slots appear.
        let good: [(u32, u64, &[u8]); 3] = [
            (0, 4096, &[1; 8]),
            (0, 4100, &[9; 2]),
            (1, 0, &[2, 0, 0, 0]),
        ];
        image.write_all(&good).expect("write_all");
        let mut out = [0u8; 8];
        image.read(0, 4096, &mut out).expect("read");
        assert_eq!(out, [1, 1, 1, 1, 9, 9, 1, 1]);
        assert_eq!(image.block_cells(1, 0), [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(image.total_pages(), 3);
    }

    fn layout(spaces: &[(CellType, u64)]) -> MemoryLayout {
        MemoryLayout::new(LayoutSpec {
            address_spaces: spaces
                .iter()
                .map(|&(cell, num_cells)| AddressSpace { cell, num_cells })
                .collect(),
            address_space_height: None,
            address_height: None,
        })
        .unwrap()
    }

    #[test]
    fn a_zeroed_image_of_2_pow_32_cells_holds_nothing_and_reads_zeros() {
        let l = layout(&[(CellType::Field, 1 << 32), (CellType::U8, 64)]);
        let img = MemoryImage::zeroed(&l).unwrap();
        assert_eq!((img.total_bytes(), img.total_pages()), (0, 0));
        assert_eq!(img.block_cells(0, (1 << 29) - 1), [0; 8]);
        // 4 KiB of u8, 16 KiB of field cells; the 64-cell slot is one page of 8 blocks.
        assert_eq!((img.page_bytes(0), img.page_levels(0)), (16384, 9));
        assert_eq!((img.page_bytes(1), img.page_levels(1)), (64, 3));
    }

    #[test]
    fn writes_create_the_pages_they_cover_and_nothing_else() {
        let l = layout(&[(CellType::U16, 1 << 20)]);
        let mut img = MemoryImage::zeroed(&l).unwrap();
        // 8 KiB pages: bytes 8190..8194 straddle pages 0 and 1.
        assert_eq!(img.pages_created_by_write(0, 8190, 4).unwrap(), 2);
        img.write(0, 8190, &[1, 2, 3, 4]).unwrap();
        assert_eq!(img.total_pages(), 2);
        assert_eq!(img.total_bytes(), 2 * 8192);
        assert_eq!(img.block_cells(0, 511), [0, 0, 0, 0, 0, 0, 0, 0x0201]);
        assert_eq!(img.block_cells(0, 512), [0x0403, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(img.pages_created_by_write(0, 8190, 4).unwrap(), 0);
        assert_eq!(img.pages_created_by_write(0, 100 * 8192, 8192).unwrap(), 1);
        assert_eq!(img.pages_created_by_write(0, 0, 0).unwrap(), 0);
        // A page far away.
        img.write(0, 100 * 8192 + 2, &[7, 0]).unwrap();
        assert_eq!(
            img.pages(0).collect::<Vec<_>>(),
            vec![(0, 0), (1, 1), (100, 2)]
        );
        assert_eq!(img.block_cells(0, 100 * 512), [0, 7, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn reads_see_zeros_in_absent_pages_and_ranges_cover_the_present_ones() {
        let l = layout(&[(CellType::U8, 1 << 16)]);
        let mut img = MemoryImage::zeroed(&l).unwrap();
        img.write(0, 4095, &[1, 2]).unwrap();
        img.write(0, 5 * 4096, &[3]).unwrap();
        let mut out = [9u8; 6];
        img.read(0, 4093, &mut out).unwrap();
        assert_eq!(out, [0, 0, 1, 2, 0, 0]);
        img.read(0, 3 * 4096, &mut out).unwrap();
        assert_eq!(out, [0; 6]);
        assert!(img.read(0, (1 << 16) - 2, &mut out).is_err());
        assert_eq!(img.present_ranges(0), vec![0..8192, 20480..24576]);
    }

    #[test]
    fn bad_writes_name_the_field_and_change_nothing() {
        let l = layout(&[(CellType::Field, 64)]);
        let mut img = MemoryImage::zeroed(&l).unwrap();
        let e = img.write(0, 2, &[0; 4]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid byte_offset: 2 is not a multiple of the 4-byte cell"
        );
        let e = img.write(0, 252, &[0; 8]).unwrap_err();
        assert!(e
            .to_string()
            .contains("runs past the end of slot 0 (256 bytes)"));
        let e = img.write(0, 0, &0x7800_0001u32.to_le_bytes()).unwrap_err();
        assert!(e.to_string().contains("data (cell at byte 0)"), "{e}");
        assert!(img.write(1, 0, &[]).is_err());
        assert_eq!(img, MemoryImage::zeroed(&l).unwrap());
    }

    #[test]
    fn write_blocks_then_undo_restores_cells_and_pages() {
        let l = layout(&[(CellType::U8, 1 << 16), (CellType::U8, 8)]);
        let mut img = MemoryImage::zeroed(&l).unwrap();
        img.write(0, 0, &[5; 4096]).unwrap();
        let before = img.clone();
        let blocks = [(0u32, 3u64, [1u32; 8]), (0, 4000, [2; 8]), (1, 0, [3; 8])];
        assert_eq!(
            img.pages_created_by_blocks(blocks.iter().map(|b| (b.0, b.1))),
            vec![1, 1]
        );
        let undo = img
            .write_blocks(blocks.iter().map(|(s, b, c)| (*s, *b, c)))
            .unwrap();
        assert_eq!(undo.created_pages(&img), 2);
        assert_eq!(undo.pages_before(0), 1);
        assert_eq!(img.block_cells(0, 3), [1; 8]);
        assert_eq!(img.block_cells(0, 4000), [2; 8]);
        assert_eq!(img.block_cells(1, 0), [3; 8]);
        assert_ne!(img, before);
        img.undo(undo);
        assert_eq!(img, before);
        assert_eq!(img.total_pages(), 1);
        assert_eq!(img.block_cells(0, 3), [5; 8]);
    }

    #[test]
    fn equality_ignores_page_creation_order() {
        let l = layout(&[(CellType::U8, 1 << 16)]);
        let (mut a, mut b) = (
            MemoryImage::zeroed(&l).unwrap(),
            MemoryImage::zeroed(&l).unwrap(),
        );
        a.write(0, 0, &[1]).unwrap();
        a.write(0, 8192, &[2]).unwrap();
        b.write(0, 8192, &[2]).unwrap();
        b.write(0, 0, &[1]).unwrap();
        assert_eq!(a, b);
        b.write(0, 4096, &[0]).unwrap();
        assert_ne!(
            a, b,
            "a zero page that is present differs from an absent one"
        );
    }
}
