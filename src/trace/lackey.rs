//! Converts `valgrind --tool=lackey --trace-mem=yes` output into a trace.
//!
//! Lackey prints one line per guest memory access: `I  04016a0,3` (instruction fetch),
//! ` L 1ffefffd20,8` (load), ` S 04222cac,4` (store), ` M 0421d9d8,4` (modify: load then
//! store), with a hex address and a size in bytes, among its own `==pid==` lines. The
//! conversion:
//!
//! - places the 4 KiB pages touched by data accesses (`L`, `S`, `M`; `I` lines are ignored)
//!   in one `u8` address space, as [`LayoutMode`] says:
//!   - [`LayoutMode::Packed`] (the default): side by side in first-touch order, in the only
//!     slot (0) of a one-space layout. Packed page `i` is the `i`-th distinct page touched,
//!     so byte `a` of original page `v` lives at `i · 4096 + a mod 4096`. The slot has
//!     `num_cells` = the next power of two ≥ max(pages × 4096, 8);
//!   - [`LayoutMode::Openvm`]: at the program's real addresses modulo 2^29, in slot 1 of
//!     OpenVM's default layout ([`openvm_layout`]): byte `a` of original page `v` lives at
//!     byte `(v · 4096 + a) mod 2^29` of slot 1. Two touched pages that land on the same
//!     offset are an error naming both;
//! - writes a deterministic, compressible initial image, one `write` line per touched page
//!   (first-touch order): bytes 0..8 of the page that holds original page `v` hold `v`
//!   (little-endian u64) and byte `o ≥ 8` holds `(o / 8 + o mod 8) mod 256` (see
//!   [`initial_byte`]);
//! - emits one `update` per `accesses_per_batch` data accesses (the last one may be shorter).
//!   An access touches every 8-byte block it covers, across block and page boundaries. A
//!   batch lists each block it touched once, in first-touch order, with its cells after the
//!   batch's last access. Loads leave the bytes as they are; stores and modifies write
//!   [`store_byte`] values, and the converter tracks the image as it evolves;
//! - records `expect_root` on the build and on every update, computed by the reference
//!   backend, unless disabled.
//!
//! The log is read twice (pass 1 finds the pages, pass 2 replays the accesses) and never held
//! in memory. The converter's own state is proportional to the touched pages (a 4 KiB buffer
//! and a 4-byte stamp per 8-byte block of each), whatever the layout's size; when it records
//! roots it also holds the reference tree, whose image spans the whole layout (2^29 bytes
//! for [`LayoutMode::Openvm`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{TraceEvent, TraceHeader, TraceWriter, DEFAULT_ZSTD_LEVEL};
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::image::MemoryImage;
use crate::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout, BLOCK_CELLS};
use crate::tree::{self, Backend, TouchedBlock};

/// Bytes in a page: the unit in which touched memory is packed.
pub const PAGE_BYTES: u64 = 4096;
/// Bytes in a block of `u8` cells.
const BLOCK_BYTES: u64 = BLOCK_CELLS as u64;
/// The largest access accepted, in bytes (lackey's are ≤ 64, `xsave` areas a few KiB).
pub const MAX_ACCESS_BYTES: u64 = 1 << 16;
/// The most pages the packed space can hold: 2^35 `u8` cells (`MAX_ADDRESS_HEIGHT` = 32).
const MAX_PAGES: u64 = (1 << 35) / PAGE_BYTES;
/// Blocks in a page.
const PAGE_BLOCKS: usize = (PAGE_BYTES / BLOCK_BYTES) as usize;

/// The slot of [`openvm_layout`] that holds the program's memory under
/// [`LayoutMode::Openvm`]: its 2^29-cell `u8` address space.
pub const OPENVM_MEMORY_SLOT: u32 = 1;
/// Bytes (= `u8` cells) of [`OPENVM_MEMORY_SLOT`]: 2^29. Under [`LayoutMode::Openvm`] an
/// address is taken modulo this.
pub const OPENVM_MEMORY_BYTES: u64 = 1 << 29;

/// OpenVM's default memory layout (openvm-circuit 2.0.2 `MemoryConfig::default()`):
/// `address_space_height` 3, `address_height` 26, and 8 slots: 0 `u8` × 128 cells, 1 `u8` ×
/// 2^29 ([`OPENVM_MEMORY_SLOT`]), 2 `u8` × 32, 3 `field` × 2^14, 4..=7 empty.
///
/// # Errors
/// None in practice: the layout is fixed and valid; the `Result` is
/// [`MemoryLayout::new`]'s.
pub fn openvm_layout() -> Result<MemoryLayout> {
    let space = |cell, num_cells| AddressSpace { cell, num_cells };
    MemoryLayout::new(LayoutSpec {
        address_spaces: vec![
            space(CellType::U8, 128),
            space(CellType::U8, OPENVM_MEMORY_BYTES),
            space(CellType::U8, 32),
            space(CellType::Field, 1 << 14),
            space(CellType::Field, 0),
            space(CellType::Field, 0),
            space(CellType::Field, 0),
            space(CellType::Field, 0),
        ],
        address_space_height: Some(3),
        address_height: Some(26),
    })
}

/// Where a conversion places the touched pages (`memcommit record --layout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LayoutMode {
    /// Pages side by side in first-touch order in one u8 address space (slot 0) of
    /// next_power_of_two(pages × 4096) cells: the smallest tree.
    #[default]
    Packed,
    /// OpenVM's default layout (8 slots, address_height 26); each page at its real address
    /// mod 2^29 in slot 1. Fails if two touched pages collide mod 2^29.
    Openvm,
}

impl LayoutMode {
    /// The name used by `--layout` and in the summary.
    pub const fn name(self) -> &'static str {
        match self {
            LayoutMode::Packed => "packed",
            LayoutMode::Openvm => "openvm",
        }
    }

    /// The slot that holds the touched pages.
    pub const fn slot(self) -> u32 {
        match self {
            LayoutMode::Packed => 0,
            LayoutMode::Openvm => OPENVM_MEMORY_SLOT,
        }
    }
}

/// How to convert a lackey log.
#[derive(Clone, Debug)]
pub struct LackeyOptions {
    /// Data accesses (`L`, `S`, `M` lines) per update batch; at least 1.
    pub accesses_per_batch: u64,
    /// Where the touched pages go: packed (the default) or OpenVM's layout.
    pub layout: LayoutMode,
    /// Record `expect_root` on the build and every update (reference backend).
    pub expect_root: bool,
    /// Stop after this many update batches; `None` converts the whole log.
    pub max_batches: Option<u64>,
    /// zstd level when the output path ends in `.zst`.
    pub zstd_level: i32,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for LackeyOptions {
    fn default() -> Self {
        LackeyOptions {
            accesses_per_batch: 10_000,
            layout: LayoutMode::Packed,
            expect_root: true,
            max_batches: None,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            progress: false,
        }
    }
}

/// What a conversion produced. Serialises as one JSON object (`memcommit record` prints it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LackeySummary {
    /// Distinct 4 KiB pages touched by the converted data accesses.
    pub pages: u64,
    /// `num_cells` (= bytes) of the `u8` address space that holds the pages.
    pub num_cells: u64,
    /// `I` lines read (ignored).
    pub instructions: u64,
    /// `L` lines converted.
    pub loads: u64,
    /// `S` lines converted.
    pub stores: u64,
    /// `M` lines converted.
    pub modifies: u64,
    /// Lines that are neither accesses nor `==pid==` lines (skipped, e.g. program output).
    pub other_lines: u64,
    /// Update batches written.
    pub batches: u64,
    /// Touched-block entries over all batches (a block counts once per batch).
    pub touched_blocks: u64,
    /// Root after the last step, when `expect_root` was recorded.
    pub final_root: Option<Digest>,
    /// Size of the output file, in bytes.
    pub output_bytes: u64,
    /// How the pages were placed.
    pub layout: LayoutMode,
    /// The slot that holds the pages (0 packed, 1 openvm).
    pub slot: u32,
}

/// Converts the lackey log at `input` into a trace at `output` (zstd when it ends in
/// `.zst`). See the module docs for the mapping.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `accesses_per_batch` when it is 0, or `line N` of the
/// log for a malformed access line (bad address or size, an access past 2^64 or larger than
/// [`MAX_ACCESS_BYTES`]), for a page that collides with an earlier one under
/// [`LayoutMode::Openvm`] (naming both page addresses and the slot offset), or for a log
/// with no data access; [`Error::ResourceExhausted`] when the touched pages exceed 2^35
/// bytes (packed) or the image cannot be allocated; [`Error::Io`] naming the path that
/// failed.
pub fn convert(input: &Path, output: &Path, options: &LackeyOptions) -> Result<LackeySummary> {
    if options.accesses_per_batch == 0 {
        return Err(Error::invalid("accesses_per_batch", "must be at least 1"));
    }
    let limit = options
        .max_batches
        .map_or(u64::MAX, |m| m.saturating_mul(options.accesses_per_batch));

    // Pass 1: the touched pages, in first-touch order.
    let mut pages = Pages::new(options.layout);
    let mut accesses = 0u64;
    for_each_line(
        input,
        options.progress,
        "pass 1/2: pages",
        |line_no, line| {
            if let Line::Access { addr, size, .. } = parse_line(line, line_no)? {
                if accesses == limit {
                    return Ok(ControlFlow::Break(()));
                }
                accesses += 1;
                for seg in segments(addr, size) {
                    pages.touch(seg.page, line_no)?;
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if accesses == 0 {
        return Err(Error::invalid(
            "lackey log",
            format!(
                "{} has no data access (L, S or M line); is it `valgrind --tool=lackey \
                 --trace-mem=yes` output?",
                input.display()
            ),
        ));
    }
    let slot = options.layout.slot();
    let layout = match options.layout {
        LayoutMode::Packed => {
            let num_cells = (pages.len() * PAGE_BYTES).next_power_of_two().max(8);
            MemoryLayout::new(LayoutSpec {
                address_spaces: vec![AddressSpace {
                    cell: CellType::U8,
                    num_cells,
                }],
                address_space_height: None,
                address_height: None,
            })?
        }
        LayoutMode::Openvm => openvm_layout()?,
    };
    let num_cells = layout.address_spaces()[slot as usize].num_cells;
    tracing::info!(
        data_accesses = accesses,
        pages = pages.len(),
        layout = options.layout.name(),
        slot,
        num_cells,
        "lackey pass 1: pages placed"
    );

    // The initial image and the trace up to the build.
    let mut memory = Memory::new(&pages)?;
    let header = TraceHeader {
        layout: layout.clone(),
        omitted_levels: None,
    };
    let mut writer = TraceWriter::create_with_level(output, &header, options.zstd_level)?;
    for (i, page) in memory.pages.iter().enumerate() {
        writer.write(&TraceEvent::Write {
            slot,
            offset: pages.slot_offset(i),
            data: page.bytes.to_vec(),
        })?;
    }
    let mut tree = if options.expect_root {
        let mut image = MemoryImage::zeroed(&layout)?;
        for (i, page) in memory.pages.iter().enumerate() {
            image.write(slot, pages.slot_offset(i), &page.bytes)?;
        }
        Some(tree::build(Backend::Reference, layout, Arc::new(image), 0)?)
    } else {
        None
    };
    let root = tree.as_ref().map(|t| t.root());
    writer.write(&TraceEvent::Build { expect_root: root })?;

    // Pass 2: replay the accesses, one update per `accesses_per_batch`.
    let mut summary = LackeySummary {
        pages: pages.len(),
        num_cells,
        final_root: root,
        layout: options.layout,
        slot,
        ..LackeySummary::default()
    };
    let mut in_batch = 0u64;
    let mut access_no = 0u64;
    let mut emit = |memory: &mut Memory, summary: &mut LackeySummary| -> Result<()> {
        let blocks = memory.take_batch(&pages, slot);
        let expect_root = match tree.as_mut() {
            Some(t) => Some(t.update(&blocks)?),
            None => None,
        };
        summary.batches += 1;
        summary.touched_blocks += blocks.len() as u64;
        summary.final_root = expect_root;
        writer.write(&TraceEvent::Update {
            blocks,
            expect_root,
        })
    };
    for_each_line(
        input,
        options.progress,
        "pass 2/2: batches",
        |line_no, line| {
            match parse_line(line, line_no)? {
                Line::Instruction => summary.instructions += 1,
                Line::Noise => {}
                Line::Other => {
                    if summary.other_lines == 0 {
                        let text = String::from_utf8_lossy(&line[..line.len().min(80)]);
                        tracing::warn!(
                            line = line_no,
                            %text,
                            "skipping a line that is not lackey output"
                        );
                    }
                    summary.other_lines += 1;
                }
                Line::Access { kind, addr, size } => {
                    match kind {
                        Kind::Load => summary.loads += 1,
                        Kind::Store => summary.stores += 1,
                        Kind::Modify => summary.modifies += 1,
                    }
                    memory.access(access_no, kind, addr, size, &pages, line_no)?;
                    access_no += 1;
                    in_batch += 1;
                    if in_batch == options.accesses_per_batch {
                        emit(&mut memory, &mut summary)?;
                        in_batch = 0;
                        if Some(summary.batches) == options.max_batches {
                            return Ok(ControlFlow::Break(()));
                        }
                    }
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if in_batch > 0 {
        emit(&mut memory, &mut summary)?;
    }
    writer.finish()?;
    summary.output_bytes = std::fs::metadata(output)
        .map_err(|e| Error::io(output.display().to_string(), e))?
        .len();
    tracing::info!(
        batches = summary.batches,
        touched_blocks = summary.touched_blocks,
        loads = summary.loads,
        stores = summary.stores,
        modifies = summary.modifies,
        instructions = summary.instructions,
        output_bytes = summary.output_bytes,
        "lackey pass 2: trace written to {}",
        output.display()
    );
    Ok(summary)
}

/// The initial value of byte `offset` (0..4096) of the page that holds original page
/// number `page` (in either layout): the page number's little-endian bytes in bytes 0..8, then
/// `(offset / 8 + offset mod 8) mod 256`. Every page differs, and the whole compresses well.
pub fn initial_byte(page: u64, offset: u64) -> u8 {
    if offset < 8 {
        page.to_le_bytes()[offset as usize]
    } else {
        (offset / 8 + offset % 8) as u8
    }
}

/// The value a store or modify writes to byte `j` (0-based within the access) of the
/// `access`-th data access (0-based over the log): byte `j mod 8` (little-endian) of
/// `splitmix64(access · 2^16 + j / 8)`. `j < MAX_ACCESS_BYTES` keeps the inputs distinct.
pub fn store_byte(access: u64, j: u64) -> u8 {
    splitmix64(access.wrapping_shl(16).wrapping_add(j / 8)).to_le_bytes()[(j % 8) as usize]
}

/// Sebastiano Vigna's splitmix64 finaliser: a fixed, well-mixed 64-bit function.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Load,
    Store,
    Modify,
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Instruction,
    Access {
        kind: Kind,
        addr: u64,
        size: u64,
    },
    /// Lackey's own `==pid==` lines and blank lines.
    Noise,
    /// Anything else (e.g. the program's stderr when lackey logs to stderr).
    Other,
}

/// Parses one line of lackey output.
fn parse_line(line: &[u8], line_no: u64) -> Result<Line> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (kind, rest) = match line {
        [] | [b'=', b'=', ..] => return Ok(Line::Noise),
        [b'I', b' ', ..] => return Ok(Line::Instruction),
        [b' ', b'L', b' ', rest @ ..] => (Kind::Load, rest),
        [b' ', b'S', b' ', rest @ ..] => (Kind::Store, rest),
        [b' ', b'M', b' ', rest @ ..] => (Kind::Modify, rest),
        _ if line.iter().all(u8::is_ascii_whitespace) => return Ok(Line::Noise),
        _ => return Ok(Line::Other),
    };
    let bad = |why: String| {
        Error::invalid(
            format!("line {line_no}"),
            format!("{why} in lackey access {:?}", String::from_utf8_lossy(line)),
        )
    };
    let text = std::str::from_utf8(rest).map_err(|_| bad("non-UTF-8 bytes".into()))?;
    let (addr, size) = text
        .trim()
        .split_once(',')
        .ok_or_else(|| bad("expected ADDRESS,SIZE".into()))?;
    let addr = u64::from_str_radix(addr.trim(), 16)
        .map_err(|e| bad(format!("address {addr:?} is not hex ({e})")))?;
    let size: u64 = size
        .trim()
        .parse()
        .map_err(|e| bad(format!("size {size:?} is not a decimal count ({e})")))?;
    if size > MAX_ACCESS_BYTES {
        return Err(bad(format!(
            "size {size} exceeds the maximum {MAX_ACCESS_BYTES} bytes"
        )));
    }
    if addr.checked_add(size).is_none() {
        return Err(bad(format!("{size} bytes at {addr:#x} run past 2^64")));
    }
    Ok(Line::Access { kind, addr, size })
}

/// The part of an access that falls in one page: bytes `first..=last` of page `page`.
#[derive(Clone, Copy, Debug)]
struct Segment {
    page: u64,
    first: u64,
    last: u64,
}

/// Splits `size` bytes at `addr` (with `addr + size ≤ 2^64 − 1`) at page boundaries.
fn segments(addr: u64, size: u64) -> impl Iterator<Item = Segment> {
    let end = addr + size; // exclusive; checked by parse_line
    let mut at = addr;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let last = (end - 1).min(at | (PAGE_BYTES - 1));
        let seg = Segment {
            page: at / PAGE_BYTES,
            first: at % PAGE_BYTES,
            last: last % PAGE_BYTES,
        };
        at = last + 1;
        Some(seg)
    })
}

/// Touched pages in first-touch order, and where each goes in the slot.
struct Pages {
    mode: LayoutMode,
    /// Original page numbers; index = the page's place in first-touch order.
    order: Vec<u64>,
    /// Original page number → index in `order`.
    index: HashMap<u64, usize>,
    /// [`LayoutMode::Openvm`] only: slot page number (offset / 4096) → the original page
    /// placed there, to find collisions.
    owner: HashMap<u64, u64>,
}

impl Pages {
    fn new(mode: LayoutMode) -> Pages {
        Pages {
            mode,
            order: Vec::new(),
            index: HashMap::new(),
            owner: HashMap::new(),
        }
    }

    /// Touched pages so far.
    fn len(&self) -> u64 {
        self.order.len() as u64
    }

    /// Records that line `line_no` touches original page `page`.
    fn touch(&mut self, page: u64, line_no: u64) -> Result<()> {
        if self.index.contains_key(&page) {
            return Ok(());
        }
        match self.mode {
            LayoutMode::Packed => {
                if self.len() == MAX_PAGES {
                    return Err(Error::ResourceExhausted(format!(
                        "the log touches more than {MAX_PAGES} pages (2^35 bytes)"
                    )));
                }
            }
            LayoutMode::Openvm => {
                let at = openvm_slot_page(page);
                if let Some(&earlier) = self.owner.get(&at) {
                    return Err(Error::invalid(
                        format!("line {line_no}"),
                        format!(
                            "the pages at {:#x} and {:#x} both map to byte offset {:#x} of \
                             slot {OPENVM_MEMORY_SLOT}: layout openvm keeps addresses mod 2^29 \
                             ({OPENVM_MEMORY_BYTES:#x} bytes); record this log with layout \
                             packed",
                            earlier * PAGE_BYTES,
                            page * PAGE_BYTES,
                            at * PAGE_BYTES
                        ),
                    ));
                }
                self.owner.insert(at, page);
            }
        }
        self.index.insert(page, self.order.len());
        self.order.push(page);
        Ok(())
    }

    /// The byte offset in the slot of the `i`-th touched page.
    fn slot_offset(&self, i: usize) -> u64 {
        match self.mode {
            LayoutMode::Packed => i as u64 * PAGE_BYTES,
            LayoutMode::Openvm => openvm_slot_page(self.order[i]) * PAGE_BYTES,
        }
    }
}

/// The page of [`OPENVM_MEMORY_SLOT`] (byte offset / 4096) that holds original page `page`:
/// its address mod 2^29, in pages.
fn openvm_slot_page(page: u64) -> u64 {
    page % (OPENVM_MEMORY_BYTES / PAGE_BYTES)
}

/// One touched page as it evolves.
struct PageState {
    /// The page's current bytes.
    bytes: Box<[u8]>,
    /// Per block of the page: the number of the last batch that listed it (0: none).
    stamp: Box<[u32]>,
}

/// The touched pages' bytes as they evolve, and the blocks the current batch touched:
/// 4096 + 2048 bytes per touched page, whatever the layout's size.
struct Memory {
    /// Indexed like [`Pages::order`].
    pages: Vec<PageState>,
    /// Blocks touched by the current batch, in first-touch order: (page index, block in
    /// the page).
    batch: Vec<(usize, usize)>,
    /// The current batch's number, from 1.
    batch_no: u32,
}

impl Memory {
    fn new(pages: &Pages) -> Result<Memory> {
        let n = pages.order.len();
        let exhausted = || {
            Error::ResourceExhausted(format!(
                "cannot allocate the state of {n} touched pages ({} bytes)",
                n as u64 * (PAGE_BYTES + 4 * PAGE_BLOCKS as u64)
            ))
        };
        let mut states = Vec::new();
        states.try_reserve_exact(n).map_err(|_| exhausted())?;
        for &page in &pages.order {
            let bytes: Box<[u8]> = (0..PAGE_BYTES).map(|o| initial_byte(page, o)).collect();
            states.push(PageState {
                bytes,
                stamp: vec![0; PAGE_BLOCKS].into_boxed_slice(),
            });
        }
        Ok(Memory {
            pages: states,
            batch: Vec::new(),
            batch_no: 1,
        })
    }

    /// Applies data access `access_no`: marks its blocks touched and, for a store or
    /// modify, writes its new bytes.
    fn access(
        &mut self,
        access_no: u64,
        kind: Kind,
        addr: u64,
        size: u64,
        pages: &Pages,
        line_no: u64,
    ) -> Result<()> {
        let mut j = 0u64;
        for seg in segments(addr, size) {
            let i = *pages.index.get(&seg.page).ok_or_else(|| {
                Error::invalid(
                    format!("line {line_no}"),
                    format!(
                        "page {:#x} was not seen in pass 1: did the log change while it was read?",
                        seg.page
                    ),
                )
            })?;
            let page = &mut self.pages[i];
            for a in seg.first..=seg.last {
                if kind != Kind::Load {
                    page.bytes[a as usize] = store_byte(access_no, j);
                }
                j += 1;
            }
            for block in (seg.first / BLOCK_BYTES) as usize..=(seg.last / BLOCK_BYTES) as usize {
                let stamp = &mut page.stamp[block];
                if *stamp != self.batch_no {
                    *stamp = self.batch_no;
                    self.batch.push((i, block));
                }
            }
        }
        Ok(())
    }

    /// The current batch's blocks of `slot` with their cells now, and starts the next batch.
    fn take_batch(&mut self, pages: &Pages, slot: u32) -> Vec<TouchedBlock> {
        self.batch_no += 1;
        let states = &self.pages;
        self.batch
            .drain(..)
            .map(|(i, block)| {
                let start = block * BLOCK_BYTES as usize;
                let bytes = &states[i].bytes[start..start + BLOCK_CELLS];
                TouchedBlock {
                    slot,
                    block: pages.slot_offset(i) / BLOCK_BYTES + block as u64,
                    cells: core::array::from_fn(|c| u32::from(bytes[c])),
                }
            })
            .collect()
    }
}

/// Calls `f(line_no, line)` for each line of `path` (1-based, bytes including the newline)
/// until it breaks, with a progress bar over the file's bytes.
fn for_each_line(
    path: &Path,
    progress: bool,
    what: &'static str,
    mut f: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let io_err = |e| Error::io(path.display().to_string(), e);
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let bar = progress_bar(progress, len, what);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(256);
    let (mut line_no, mut read) = (0u64, 0u64);
    loop {
        buf.clear();
        let n = input.read_until(b'\n', &mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        read += n as u64;
        if line_no % (1 << 16) == 0 {
            bar.set_position(read);
        }
        if f(line_no, &buf)?.is_break() {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// A byte progress bar on stderr, hidden unless wanted and stderr is a terminal.
fn progress_bar(enabled: bool, len: u64, what: &'static str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{msg} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len).with_style(style).with_message(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lackey_lines() {
        let p = |s: &str| parse_line(s.as_bytes(), 1).map_err(|e| e.to_string());
        assert_eq!(p("I  04016a0,3\n"), Ok(Line::Instruction));
        assert_eq!(
            p(" L 1ffefffd20,8\n"),
            Ok(Line::Access {
                kind: Kind::Load,
                addr: 0x1f_fefffd20,
                size: 8
            })
        );
        assert_eq!(
            p(" M 0421d9d8,4"),
            Ok(Line::Access {
                kind: Kind::Modify,
                addr: 0x0421_d9d8,
                size: 4
            })
        );
        assert_eq!(p("==123== Lackey\n"), Ok(Line::Noise));
        assert_eq!(p("\n"), Ok(Line::Noise));
        assert_eq!(p("hello\n"), Ok(Line::Other));
        let e = p(" S 04zz,4\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("not hex"), "{e}");
        let e = p(" S ffffffffffffffff,4\n").unwrap_err();
        assert!(e.contains("past 2^64"), "{e}");
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // The first outputs of Vigna's splitmix64 generator seeded with 0 (state advances by
        // the golden gamma before each mix).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(0x9e37_79b9_7f4a_7c15), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(store_byte(0, 0), 0xaf);
        assert_eq!(store_byte(0, 7), 0xe2);
    }

    #[test]
    fn segments_split_at_pages() {
        let s: Vec<_> = segments(0x1ffc, 8)
            .map(|s| (s.page, s.first, s.last))
            .collect();
        assert_eq!(s, vec![(1, 0xffc, 0xfff), (2, 0, 3)]);
        let s: Vec<_> = segments(0x2000, 1)
            .map(|s| (s.page, s.first, s.last))
            .collect();
        assert_eq!(s, vec![(2, 0, 0)]);
        assert_eq!(segments(0x2000, 0).count(), 0);
    }

    #[test]
    fn openvm_layout_is_openvms_default() {
        let l = openvm_layout().expect("layout");
        assert_eq!((l.address_space_height(), l.address_height()), (3, 26));
        let spaces: Vec<(CellType, u64)> = l
            .address_spaces()
            .iter()
            .map(|s| (s.cell, s.num_cells))
            .collect();
        assert_eq!(
            spaces,
            vec![
                (CellType::U8, 128),
                (CellType::U8, 1 << 29),
                (CellType::U8, 32),
                (CellType::Field, 1 << 14),
                (CellType::Field, 0),
                (CellType::Field, 0),
                (CellType::Field, 0),
                (CellType::Field, 0),
            ]
        );
        assert_eq!(
            l.address_spaces()[OPENVM_MEMORY_SLOT as usize].num_cells,
            OPENVM_MEMORY_BYTES
        );
    }

    #[test]
    fn pages_map_to_first_touch_order_or_real_addresses() {
        // Original pages in first-touch order: a stack page, page 0x4222, a page 2^41 bytes
        // (a multiple of 2^29) above page 0x4223, and the last page below 2^29.
        let order = [0x1ff_efff, 0x4222, 0x2000_4223, 0x1_ffff];
        let mut packed = Pages::new(LayoutMode::Packed);
        let mut openvm = Pages::new(LayoutMode::Openvm);
        for (line, &p) in order.iter().enumerate() {
            packed.touch(p, line as u64 + 1).expect("packed");
            openvm.touch(p, line as u64 + 1).expect("openvm");
            // A second touch changes nothing.
            openvm.touch(p, 99).expect("again");
        }
        assert_eq!(openvm.len(), 4);
        let offsets = |pages: &Pages| (0..4).map(|i| pages.slot_offset(i)).collect::<Vec<_>>();
        assert_eq!(offsets(&packed), vec![0, 0x1000, 0x2000, 0x3000]);
        // (page · 4096) mod 2^29.
        assert_eq!(
            offsets(&openvm),
            vec![0x1eff_f000, 0x0422_2000, 0x0422_3000, 0x1fff_f000]
        );
        assert_eq!(openvm_slot_page(0x1ff_efff), 0x1efff);
        assert_eq!(openvm_slot_page(1 << 17), 0);
    }

    #[test]
    fn openvm_collision_names_both_pages_and_the_offset() {
        let mut pages = Pages::new(LayoutMode::Openvm);
        pages.touch(0x4222, 3).expect("first");
        let err = pages.touch(0x4222 + (1 << 17), 7).expect_err("collides");
        let Error::InvalidArgument { field, message } = err else {
            panic!("expected InvalidArgument, got {err:?}");
        };
        assert_eq!(field, "line 7");
        assert_eq!(
            message,
            "the pages at 0x4222000 and 0x24222000 both map to byte offset 0x4222000 of slot \
             1: layout openvm keeps addresses mod 2^29 (0x20000000 bytes); record this log with \
             layout packed"
        );
        // Packed mode takes the same pages.
        let mut pages = Pages::new(LayoutMode::Packed);
        pages.touch(0x4222, 3).expect("first");
        pages
            .touch(0x4222 + (1 << 17), 7)
            .expect("no collision when packed");
    }

    /// Writes `log` to a temporary file and converts it with layout openvm, without roots.
    fn convert_openvm(
        log: &str,
        accesses_per_batch: u64,
    ) -> Result<(LackeySummary, Vec<TraceEvent>)> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let (input, output) = (dir.path().join("t.lackey"), dir.path().join("t.trace"));
        std::fs::write(&input, log).map_err(|e| Error::io("write log", e))?;
        let options = LackeyOptions {
            accesses_per_batch,
            layout: LayoutMode::Openvm,
            expect_root: false,
            ..LackeyOptions::default()
        };
        let summary = convert(&input, &output, &options)?;
        let reader = super::super::TraceReader::open(&output)?;
        assert_eq!(reader.header().layout, openvm_layout()?);
        let events = reader.collect::<Result<Vec<_>>>()?;
        Ok((summary, events))
    }

    #[test]
    fn openvm_conversion_writes_pages_and_blocks_at_real_offsets() {
        // Access 0 loads 4 bytes of page 0x4222; access 1 stores 8 bytes across the 2^29
        // boundary (pages 0x1ffff and 0x20000 → offsets 0x1ffff000 and 0); access 2 loads a
        // stack page.
        let log = "==123== Lackey\nI  04016a0,3\n L 04222cac,4\n S 1ffffffc,8\n \
                   L 1ffefffd20,8\n==123== done\n";
        let (summary, events) = convert_openvm(log, 2).expect("convert");
        assert_eq!(
            (
                summary.pages,
                summary.num_cells,
                summary.slot,
                summary.layout
            ),
            (4, 1 << 29, 1, LayoutMode::Openvm)
        );
        assert_eq!((summary.batches, summary.touched_blocks), (2, 4));
        let writes: Vec<(u32, u64, u64)> = events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Write { slot, offset, data } => Some((
                    *slot,
                    *offset,
                    u64::from_le_bytes(data[..8].try_into().expect("8 bytes")),
                )),
                _ => None,
            })
            .collect();
        // (slot, offset, original page number in bytes 0..8), first-touch order.
        assert_eq!(
            writes,
            vec![
                (1, 0x0422_2000, 0x4222),
                (1, 0x1fff_f000, 0x1ffff),
                (1, 0, 0x20000),
                (1, 0x1eff_f000, 0x1ff_efff),
            ]
        );
        let updates: Vec<&Vec<TouchedBlock>> = events
            .iter()
            .filter_map(|e| match e {
                TraceEvent::Update { blocks, .. } => Some(blocks),
                _ => None,
            })
            .collect();
        let store: Vec<u32> = (0..8).map(|j| u32::from(store_byte(1, j))).collect();
        let tail = |page: u64, o: u64| u32::from(initial_byte(page, o));
        assert_eq!(
            updates[0],
            &vec![
                // The load keeps block 0x4222ca8 / 8 as it was.
                TouchedBlock {
                    slot: 1,
                    block: 0x0422_2ca8 / 8,
                    cells: core::array::from_fn(|c| tail(0x4222, 0xca8 + c as u64)),
                },
                // The store's first 4 bytes end slot 1; its last 4 begin it.
                TouchedBlock {
                    slot: 1,
                    block: (1 << 26) - 1,
                    cells: core::array::from_fn(|c| {
                        if c < 4 {
                            tail(0x1ffff, 0xff8 + c as u64)
                        } else {
                            store[c - 4]
                        }
                    }),
                },
                TouchedBlock {
                    slot: 1,
                    block: 0,
                    cells: core::array::from_fn(|c| {
                        if c < 4 {
                            store[c + 4]
                        } else {
                            tail(0x20000, c as u64)
                        }
                    }),
                },
            ]
        );
        assert_eq!(
            updates[1],
            &vec![TouchedBlock {
                slot: 1,
                block: 0x1eff_fd20 / 8,
                cells: core::array::from_fn(|c| tail(0x1ff_efff, 0xd20 + c as u64)),
            }]
        );
    }

    #[test]
    fn openvm_conversion_fails_on_pages_2_29_apart() {
        let log = " L 04222cac,4\n S 04222cb0,4\n S 24222008,8\n";
        let err = convert_openvm(log, 10).expect_err("collision");
        assert_eq!(
            err.to_string(),
            "invalid line 3: the pages at 0x4222000 and 0x24222000 both map to byte offset \
             0x4222000 of slot 1: layout openvm keeps addresses mod 2^29 (0x20000000 bytes); \
             record this log with layout packed"
        );
    }
}
