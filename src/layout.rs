//! `MemoryLayout` and `CellType`: the shape of a zkVM's memory (docs/design.md Part 1, "Memory
//! layout and tree shape" and "Formats"), its validation, and the cell ↔ field encoding.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{F, P};

/// Cells in a block (one Merkle leaf).
pub const BLOCK_CELLS: usize = 8;
/// The tallest slot subtree accepted, in levels: blocks travel as u32 on the wire, and
/// 2^32 blocks of u8 cells is already 32 GiB.
pub const MAX_ADDRESS_HEIGHT: u32 = 32;
/// The tallest top tree accepted, in levels (2^16 address spaces). The top tree is stored
/// densely, so this bounds its size.
pub const MAX_ADDRESS_SPACE_HEIGHT: u32 = 16;

/// The type of one memory cell. Cells are little-endian in raw memory, and a cell's integer
/// value becomes the field element of the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellType {
    /// 1 byte, values 0..=255.
    U8,
    /// 2 bytes little-endian, values 0..=65535.
    U16,
    /// 4 bytes little-endian, a canonical BabyBear element (< p); larger values are errors.
    Field,
}

impl CellType {
    /// Bytes one cell takes in raw memory.
    pub const fn bytes(self) -> usize {
        match self {
            CellType::U8 => 1,
            CellType::U16 => 2,
            CellType::Field => 4,
        }
    }

    /// The largest value a cell of this type holds.
    pub const fn max_value(self) -> u32 {
        match self {
            CellType::U8 => u8::MAX as u32,
            CellType::U16 => u16::MAX as u32,
            CellType::Field => P - 1,
        }
    }

    /// The name used in layout JSON.
    pub const fn name(self) -> &'static str {
        match self {
            CellType::U8 => "u8",
            CellType::U16 => "u16",
            CellType::Field => "field",
        }
    }

    /// Reads the cell at the start of `bytes` (which holds at least [`Self::bytes`] bytes).
    #[inline(always)]
    pub fn read(self, bytes: &[u8]) -> u32 {
        match self {
            CellType::U8 => bytes[0] as u32,
            CellType::U16 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
            CellType::Field => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }

    /// Writes `value` (already checked to fit) little-endian at the start of `bytes`.
    #[inline(always)]
    pub fn write(self, value: u32, bytes: &mut [u8]) {
        let le = value.to_le_bytes();
        bytes[..self.bytes()].copy_from_slice(&le[..self.bytes()]);
    }

    /// Reads one block (`8 × bytes()` raw bytes) as 8 canonical cell values; one arm
    /// per type so each compiles to plain loads.
    #[inline(always)]
    pub fn read_block(self, raw: &[u8]) -> [u32; BLOCK_CELLS] {
        match self {
            CellType::U8 => core::array::from_fn(|i| raw[i] as u32),
            CellType::U16 => {
                core::array::from_fn(|i| u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]]) as u32)
            }
            CellType::Field => core::array::from_fn(|i| {
                u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]])
            }),
        }
    }

    /// Decodes one block (`8 × bytes()` raw bytes) into its 8 field elements.
    #[inline(always)]
    pub fn decode_block(self, raw: &[u8]) -> [F; BLOCK_CELLS] {
        self.read_block(raw).map(F::new)
    }
}

/// One address space: its cell type and number of cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSpace {
    /// Cell type.
    pub cell: CellType,
    /// Number of cells: 0 or a power of two ≥ 8.
    pub num_cells: u64,
}

impl AddressSpace {
    /// Blocks (leaves) of real memory: `num_cells / 8`.
    pub fn num_blocks(&self) -> u64 {
        self.num_cells / BLOCK_CELLS as u64
    }

    /// Raw memory bytes: `num_cells × cell bytes`.
    pub fn raw_bytes(&self) -> u64 {
        self.num_cells * self.cell.bytes() as u64
    }

    /// The real height `log2(num_cells / 8)` of the slot's dense subtree, or `None` for an
    /// empty slot.
    pub fn height(&self) -> Option<u32> {
        (self.num_cells > 0).then(|| self.num_blocks().trailing_zeros())
    }
}

/// The layout JSON as written (both heights optional).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutSpec {
    /// Address spaces in slot order.
    pub address_spaces: Vec<AddressSpace>,
    /// Height of the top tree; default `ceil(log2(len(address_spaces)))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_space_height: Option<u32>,
    /// Height of every slot's subtree; default `log2(max num_cells / 8)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_height: Option<u32>,
}

/// A validated memory layout with both heights resolved.
///
/// Serialises as layout JSON with both heights present; deserialises from layout JSON
/// (heights optional, unknown keys rejected) through [`MemoryLayout::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LayoutSpec", into = "LayoutSpec")]
pub struct MemoryLayout {
    address_spaces: Vec<AddressSpace>,
    address_space_height: u32,
    address_height: u32,
}

impl TryFrom<LayoutSpec> for MemoryLayout {
    type Error = Error;
    fn try_from(spec: LayoutSpec) -> Result<Self> {
        MemoryLayout::new(spec)
    }
}

impl From<MemoryLayout> for LayoutSpec {
    fn from(l: MemoryLayout) -> Self {
        LayoutSpec {
            address_spaces: l.address_spaces,
            address_space_height: Some(l.address_space_height),
            address_height: Some(l.address_height),
        }
    }
}

fn ceil_log2(n: u64) -> u32 {
    if n <= 1 {
        0
    } else {
        64 - (n - 1).leading_zeros()
    }
}

impl MemoryLayout {
    /// Validates a spec and resolves its default heights.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the field when: there are no address spaces; a
    /// `num_cells` is not 0 or a power of two ≥ 8, or needs more than
    /// [`MAX_ADDRESS_HEIGHT`] levels; `address_height` is below what the largest space needs
    /// or above [`MAX_ADDRESS_HEIGHT`]; `address_space_height` is below
    /// `ceil(log2(len))` or above [`MAX_ADDRESS_SPACE_HEIGHT`].
    pub fn new(spec: LayoutSpec) -> Result<Self> {
        if spec.address_spaces.is_empty() {
            return Err(Error::invalid(
                "address_spaces",
                "empty: a layout needs at least one address space",
            ));
        }
        // The tallest slot: what address_height must cover, and whom an error names.
        let (mut needed_height, mut tallest) = (0, 0);
        for (i, s) in spec.address_spaces.iter().enumerate() {
            let field = format!("address_spaces[{i}].num_cells");
            if s.num_cells != 0 && (!s.num_cells.is_power_of_two() || s.num_cells < 8) {
                return Err(Error::invalid(
                    field,
                    format!("{} is not 0 or a power of two >= 8", s.num_cells),
                ));
            }
            let h = s.height().unwrap_or(0);
            if h > MAX_ADDRESS_HEIGHT {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{} cells need {h} levels, more than the maximum {MAX_ADDRESS_HEIGHT}",
                        s.num_cells
                    ),
                ));
            }
            if h > needed_height {
                (needed_height, tallest) = (h, i);
            }
        }
        let address_height = match spec.address_height {
            None => needed_height,
            Some(h) if h > MAX_ADDRESS_HEIGHT => {
                return Err(Error::invalid(
                    "address_height",
                    format!("{h} exceeds the maximum {MAX_ADDRESS_HEIGHT}"),
                ))
            }
            Some(h) if h < needed_height => {
                return Err(Error::invalid(
                    "address_height",
                    format!(
                        "{h} is too small: address_spaces[{tallest}] has {} cells and needs \
                         {needed_height}",
                        spec.address_spaces[tallest].num_cells
                    ),
                ));
            }
            Some(h) => h,
        };
        let needed_top = ceil_log2(spec.address_spaces.len() as u64);
        let address_space_height = match spec.address_space_height {
            None if needed_top > MAX_ADDRESS_SPACE_HEIGHT => {
                return Err(Error::invalid(
                    "address_spaces",
                    format!(
                        "{} address spaces exceed the maximum 2^{MAX_ADDRESS_SPACE_HEIGHT}",
                        spec.address_spaces.len()
                    ),
                ))
            }
            None => needed_top,
            Some(h) if h > MAX_ADDRESS_SPACE_HEIGHT => {
                return Err(Error::invalid(
                    "address_space_height",
                    format!("{h} exceeds the maximum {MAX_ADDRESS_SPACE_HEIGHT}"),
                ))
            }
            Some(h) if h < needed_top => {
                return Err(Error::invalid(
                    "address_space_height",
                    format!(
                        "{h} is too small for {} address spaces (needs {needed_top})",
                        spec.address_spaces.len()
                    ),
                ))
            }
            Some(h) => h,
        };
        Ok(MemoryLayout {
            address_spaces: spec.address_spaces,
            address_space_height,
            address_height,
        })
    }

    /// Parses and validates layout JSON.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with field `layout` for malformed JSON, an unknown key or an
    /// unknown cell type, or any error of [`MemoryLayout::new`].
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: LayoutSpec =
            serde_json::from_str(text).map_err(|e| Error::invalid("layout", e.to_string()))?;
        MemoryLayout::new(spec)
    }

    /// Address spaces in slot order.
    pub fn address_spaces(&self) -> &[AddressSpace] {
        &self.address_spaces
    }

    /// The address space in `slot`, or an [`Error::InvalidArgument`] naming `field`.
    pub fn space(&self, slot: u32, field: impl FnOnce() -> String) -> Result<&AddressSpace> {
        self.address_spaces.get(slot as usize).ok_or_else(|| {
            Error::invalid(
                field(),
                format!(
                    "slot {slot} does not exist (the layout has {} address spaces)",
                    self.address_spaces.len()
                ),
            )
        })
    }

    /// Height of the top tree over the slot roots, in levels.
    pub fn address_space_height(&self) -> u32 {
        self.address_space_height
    }

    /// Height of every slot's subtree, in levels.
    pub fn address_height(&self) -> u32 {
        self.address_height
    }

    /// Total raw memory over all slots, in bytes.
    pub fn raw_bytes(&self) -> u64 {
        self.address_spaces.iter().map(|s| s.raw_bytes()).sum()
    }

    /// Siblings in an opening: `address_height + address_space_height`.
    pub fn opening_len(&self) -> usize {
        (self.address_height + self.address_space_height) as usize
    }
}

/// Checks that `value` fits `cell`, naming `field` in the error.
///
/// # Errors
/// [`Error::InvalidArgument`] if `value > cell.max_value()` (for `field` cells: `>= p`).
pub fn check_cell(cell: CellType, value: u32, field: impl FnOnce() -> String) -> Result<()> {
    if value > cell.max_value() {
        let why = match cell {
            CellType::Field => format!("{value} is not a canonical BabyBear element (>= {P})"),
            _ => format!("{value} does not fit a {} cell", cell.name()),
        };
        return Err(Error::invalid(field(), why));
    }
    Ok(())
}
