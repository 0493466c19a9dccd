//! Conversions between the wire messages and the core types: packed columnar touched
//! blocks and positions, digests, openings and layouts.
//!
//! Packed columns are little-endian u32 arrays in `bytes` fields, so a 1M-block batch
//! decodes in a few linear passes. Every length or value error is an
//! [`Error::InvalidArgument`] naming the field (e.g. `blocks.cells`) and the bad value.

use prost::bytes::Bytes;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::hash::{Digest, DIGEST_ELEMS};

/// Bytes of one digest on the wire: 8 u32 LE.
const DIGEST_BYTES: usize = DIGEST_ELEMS * 4;
use crate::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout, BLOCK_CELLS};
use crate::tree::{Opening, TouchedBlock, WitnessRow};

use super::proto;

/// Bytes of one packed u32.
const U32_BYTES: usize = 4;
/// Bytes of one block's packed cells.
const CELLS_BYTES: usize = BLOCK_CELLS * U32_BYTES;

#[inline(always)]
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Checks that a packed column holds exactly `per_entry` bytes for each of `n` entries.
fn check_column(field: &str, len: usize, per_entry: usize, n: usize, what: &str) -> Result<()> {
    if Some(len) != n.checked_mul(per_entry) {
        return Err(Error::invalid(
            field,
            format!("{len} bytes is not {per_entry} per {what} × {n} {what}s"),
        ));
    }
    Ok(())
}

/// The entry count of a leading `slots` column (4 bytes per entry).
fn count_entries(field: &str, len: usize, what: &str) -> Result<usize> {
    if !len.is_multiple_of(U32_BYTES) {
        return Err(Error::invalid(
            field,
            format!("{len} bytes is not a multiple of {U32_BYTES} (one u32 LE per {what})"),
        ));
    }
    Ok(len / U32_BYTES)
}

/// Entries in a packed u32 column of `column.len()` bytes (rounded down; the decode
/// refuses a length that is not a multiple of 4). Lets a limit be checked before decoding.
pub fn packed_entries(column: &[u8]) -> usize {
    column.len() / U32_BYTES
}

/// Decodes packed touched blocks. `field` names the message in errors (`blocks`).
///
/// Only the packing is checked here; slot, block and cell values are checked by the tree
/// ([`crate::tree::validate_batch`]).
///
/// # Errors
/// [`Error::InvalidArgument`] naming `<field>.slots` (length not a multiple of 4),
/// `<field>.blocks` (not 4 bytes per block) or `<field>.cells` (not 32 bytes per block).
pub fn decode_blocks(msg: &proto::TouchedBlocks, field: &str) -> Result<Vec<TouchedBlock>> {
    let n = count_entries(&format!("{field}.slots"), msg.slots.len(), "block")?;
    check_column(
        &format!("{field}.blocks"),
        msg.blocks.len(),
        U32_BYTES,
        n,
        "block",
    )?;
    check_column(
        &format!("{field}.cells"),
        msg.cells.len(),
        CELLS_BYTES,
        n,
        "block",
    )?;
    Ok(msg
        .slots
        .chunks_exact(U32_BYTES)
        .zip(msg.blocks.chunks_exact(U32_BYTES))
        .zip(msg.cells.chunks_exact(CELLS_BYTES))
        .map(|((s, b), c)| TouchedBlock {
            slot: le_u32(s),
            block: u64::from(le_u32(b)),
            cells: core::array::from_fn(|i| le_u32(&c[i * U32_BYTES..])),
        })
        .collect())
}

/// Packs touched blocks into columns.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `blocks[i].block` for a block index ≥ 2^32 (no layout
/// has one: slots are at most 2^32 blocks).
pub fn encode_blocks(blocks: &[TouchedBlock]) -> Result<proto::TouchedBlocks> {
    let mut slots = Vec::with_capacity(blocks.len() * U32_BYTES);
    let mut idx = Vec::with_capacity(blocks.len() * U32_BYTES);
    let mut cells = Vec::with_capacity(blocks.len() * CELLS_BYTES);
    for (i, b) in blocks.iter().enumerate() {
        slots.extend_from_slice(&b.slot.to_le_bytes());
        idx.extend_from_slice(&block_u32(b.block, || format!("blocks[{i}].block"))?.to_le_bytes());
        for c in b.cells {
            cells.extend_from_slice(&c.to_le_bytes());
        }
    }
    Ok(proto::TouchedBlocks {
        slots: slots.into(),
        blocks: idx.into(),
        cells: cells.into(),
    })
}

fn block_u32(block: u64, field: impl FnOnce() -> String) -> Result<u32> {
    u32::try_from(block)
        .map_err(|_| Error::invalid(field(), format!("block {block} does not fit a u32")))
}

/// Decodes packed positions. `field` names the message in errors (`positions`).
///
/// # Errors
/// [`Error::InvalidArgument`] naming `<field>.slots` or `<field>.blocks` for bad lengths.
pub fn decode_positions(msg: &proto::Positions, field: &str) -> Result<Vec<(u32, u64)>> {
    let n = count_entries(&format!("{field}.slots"), msg.slots.len(), "position")?;
    check_column(
        &format!("{field}.blocks"),
        msg.blocks.len(),
        U32_BYTES,
        n,
        "position",
    )?;
    Ok(msg
        .slots
        .chunks_exact(U32_BYTES)
        .zip(msg.blocks.chunks_exact(U32_BYTES))
        .map(|(s, b)| (le_u32(s), u64::from(le_u32(b))))
        .collect())
}

/// Packs `(slot, block)` positions into columns.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `positions[i].block` for a block index ≥ 2^32.
pub fn encode_positions(positions: &[(u32, u64)]) -> Result<proto::Positions> {
    let mut slots = Vec::with_capacity(positions.len() * U32_BYTES);
    let mut blocks = Vec::with_capacity(positions.len() * U32_BYTES);
    for (i, &(s, b)) in positions.iter().enumerate() {
        slots.extend_from_slice(&s.to_le_bytes());
        blocks.extend_from_slice(&block_u32(b, || format!("positions[{i}].block"))?.to_le_bytes());
    }
    Ok(proto::Positions {
        slots: Bytes::from(slots),
        blocks: Bytes::from(blocks),
    })
}

/// A digest as its 8 canonical elements.
pub fn digest_to_proto(d: &Digest) -> proto::Digest {
    proto::Digest {
        elements: d.to_canonical().to_vec(),
    }
}

/// Reads 8 canonical elements starting at `values[0]` as a digest.
fn digest_from_slice(values: &[u32], field: &str) -> Result<Digest> {
    let arr: [u32; DIGEST_ELEMS] = values.try_into().map_err(|_| {
        Error::invalid(
            field,
            format!("{} elements, a digest has {DIGEST_ELEMS}", values.len()),
        )
    })?;
    Digest::from_canonical(arr).ok_or_else(|| {
        Error::invalid(
            field,
            format!("{arr:?} holds an element that is not canonical (>= p)"),
        )
    })
}

/// Reads a digest field. `field` names it in errors.
///
/// # Errors
/// [`Error::InvalidArgument`] if it is missing, does not hold 8 elements, or holds a
/// non-canonical element.
pub fn digest_from_proto(d: Option<&proto::Digest>, field: &str) -> Result<Digest> {
    let d = d.ok_or_else(|| Error::invalid(field, "missing"))?;
    digest_from_slice(&d.elements, field)
}

/// An opening on the wire: cells, then siblings flattened 8 elements each.
pub fn opening_to_proto(o: &Opening) -> proto::Opening {
    proto::Opening {
        slot: o.slot,
        block: o.block,
        cells: o.cells.to_vec(),
        siblings: o.siblings.iter().flat_map(|d| d.to_canonical()).collect(),
    }
}

/// Reads an opening. `field` names it in errors (e.g. `openings[3]`).
///
/// # Errors
/// [`Error::InvalidArgument`] naming `<field>.cells` (not 8) or `<field>.siblings` (length
/// not a multiple of 8, or a non-canonical element).
pub fn opening_from_proto(o: &proto::Opening, field: &str) -> Result<Opening> {
    let cells: [u32; BLOCK_CELLS] = o.cells.as_slice().try_into().map_err(|_| {
        Error::invalid(
            format!("{field}.cells"),
            format!("{} cells, a block has {BLOCK_CELLS}", o.cells.len()),
        )
    })?;
    if !o.siblings.len().is_multiple_of(DIGEST_ELEMS) {
        return Err(Error::invalid(
            format!("{field}.siblings"),
            format!(
                "{} elements is not a multiple of {DIGEST_ELEMS}",
                o.siblings.len()
            ),
        ));
    }
    let siblings = o
        .siblings
        .chunks_exact(DIGEST_ELEMS)
        .enumerate()
        .map(|(i, c)| digest_from_slice(c, &format!("{field}.siblings[{i}]")))
        .collect::<Result<_>>()?;
    Ok(Opening {
        slot: o.slot,
        block: o.block,
        cells,
        siblings,
    })
}

/// An upper bound on the encoded bytes of `n` openings with `siblings` digests each, as a
/// repeated field: lets a call refuse an over-limit response before it changes anything.
pub fn openings_encoded_bound(n: usize, siblings: usize) -> u64 {
    // slot ≤ 6, block ≤ 11, cells 2 + 32, siblings ≤ 4 + 32·s, entry tag + length ≤ 6.
    (n as u64).saturating_mul(61 + 32 * siblings as u64)
}

/// Bytes of one witness row on the wire: height u32, index u64, four digests, one flag
/// byte.
pub const WITNESS_ROW_BYTES: u64 = 4 + 8 + 4 * DIGEST_BYTES as u64 + 1;

/// An upper bound on the encoded bytes of a witness of `rows` rows inside its response:
/// the columns, plus a tag and a length of at most 10 varint bytes for each of the 7
/// columns and for the message itself.
pub fn witness_encoded_bound(rows: u64) -> u64 {
    rows.saturating_mul(WITNESS_ROW_BYTES) + 8 * 11
}

/// Rows per parallel task when packing or unpacking a witness.
const WITNESS_ROWS_PER_TASK: usize = 8192;

/// Writes a digest as 8 canonical u32 LE.
fn put_digest(d: &Digest, out: &mut [u8; DIGEST_BYTES]) {
    for (o, v) in out
        .as_chunks_mut::<U32_BYTES>()
        .0
        .iter_mut()
        .zip(d.to_canonical())
    {
        *o = v.to_le_bytes();
    }
}

/// A witness on the wire, in packed columns (`proto::Witness`): one parallel pass over
/// the rows writes all seven columns, straight into their unfilled capacity.
pub fn witness_to_proto(rows: &[WitnessRow]) -> proto::Witness {
    type Entry = (
        [u8; 4],
        ([u8; 8], ([u8; DIGEST_BYTES], ([u8; DIGEST_BYTES], Rest))),
    );
    type Rest = ([u8; DIGEST_BYTES], ([u8; DIGEST_BYTES], u8));
    let digest = |d: &Digest| {
        let mut out = [0u8; DIGEST_BYTES];
        put_digest(d, &mut out);
        out
    };
    type Digests = Vec<[u8; DIGEST_BYTES]>;
    type Columns = (
        Vec<[u8; 4]>,
        (Vec<[u8; 8]>, (Digests, (Digests, MoreColumns))),
    );
    type MoreColumns = (Digests, (Digests, Vec<u8>));
    let (heights, (indices, (old_left, (old_right, (new_left, (new_right, touched)))))): Columns =
        rows.par_iter()
            .with_min_len(WITNESS_ROWS_PER_TASK)
            .map(|r| -> Entry {
                (
                    r.height.to_le_bytes(),
                    (
                        r.index.to_le_bytes(),
                        (
                            digest(&r.old[0]),
                            (
                                digest(&r.old[1]),
                                (
                                    digest(&r.new[0]),
                                    (
                                        digest(&r.new[1]),
                                        u8::from(r.touched[0]) | (u8::from(r.touched[1]) << 1),
                                    ),
                                ),
                            ),
                        ),
                    ),
                )
            })
            .unzip();
    let bytes = |c: Vec<[u8; DIGEST_BYTES]>| Bytes::from(c.into_flattened());
    proto::Witness {
        heights: heights.into_flattened().into(),
        indices: indices.into_flattened().into(),
        old_left: bytes(old_left),
        old_right: bytes(old_right),
        new_left: bytes(new_left),
        new_right: bytes(new_right),
        touched: touched.into(),
    }
}

/// Reads a packed witness. `field` names it in errors (`witness`). Only the packing and
/// the values' ranges are checked; [`crate::tree::witness::check_witness`] checks that the
/// rows hold together. Rows are decoded in parallel.
///
/// # Errors
/// [`Error::InvalidArgument`] naming `<field>.heights` (length not a multiple of 4), the
/// column whose length does not match the row count, the first row of a digest column with
/// an element that is not canonical (`<field>.old_left[i]`), or `<field>.touched[i]` with a
/// bit other than 0 and 1 set.
pub fn witness_from_proto(w: &proto::Witness, field: &str) -> Result<Vec<WitnessRow>> {
    let n = count_entries(&format!("{field}.heights"), w.heights.len(), "row")?;
    check_column(&format!("{field}.indices"), w.indices.len(), 8, n, "row")?;
    let digest_columns = [
        ("old_left", &w.old_left),
        ("old_right", &w.old_right),
        ("new_left", &w.new_left),
        ("new_right", &w.new_right),
    ];
    for (name, column) in digest_columns {
        check_column(
            &format!("{field}.{name}"),
            column.len(),
            DIGEST_BYTES,
            n,
            "row",
        )?;
    }
    check_column(&format!("{field}.touched"), w.touched.len(), 1, n, "row")?;
    let heights = w.heights.as_chunks::<U32_BYTES>().0;
    let indices = w.indices.as_chunks::<8>().0;
    let digests = digest_columns.map(|(_, c)| c.as_chunks::<DIGEST_BYTES>().0);
    let digest = |c: usize, i: usize| -> Result<Digest> {
        let values = digests[c][i]
            .as_chunks::<U32_BYTES>()
            .0
            .iter()
            .map(|v| u32::from_le_bytes(*v));
        let mut arr = [0u32; DIGEST_ELEMS];
        for (a, v) in arr.iter_mut().zip(values) {
            *a = v;
        }
        Digest::from_canonical(arr).ok_or_else(|| {
            Error::invalid(
                format!("{field}.{}[{i}]", digest_columns[c].0),
                format!("{arr:?} holds an element that is not canonical (>= p)"),
            )
        })
    };
    let row = |i: usize| -> Result<WitnessRow> {
        let flags = w.touched[i];
        if flags > 3 {
            return Err(Error::invalid(
                format!("{field}.touched[{i}]"),
                format!("{flags:#04x} sets a bit other than 0 (left) and 1 (right)"),
            ));
        }
        Ok(WitnessRow {
            height: u32::from_le_bytes(heights[i]),
            index: u64::from_le_bytes(indices[i]),
            old: [digest(0, i)?, digest(1, i)?],
            new: [digest(2, i)?, digest(3, i)?],
            touched: [flags & 1 == 1, flags & 2 == 2],
        })
    };
    let bad = std::sync::atomic::AtomicBool::new(false);
    // Collected straight into the result's capacity; a bad row only raises the flag.
    let rows: Vec<WitnessRow> = (0..n)
        .into_par_iter()
        .with_min_len(WITNESS_ROWS_PER_TASK)
        .map(|i| {
            row(i).unwrap_or_else(|_| {
                bad.store(true, std::sync::atomic::Ordering::Relaxed);
                WitnessRow::BLANK
            })
        })
        .collect();
    match bad.into_inner() {
        false => Ok(rows),
        // Name the first bad row, whichever task found one.
        true => (0..n).map(row).collect(),
    }
}

fn cell_to_proto(c: CellType) -> proto::CellType {
    match c {
        CellType::U8 => proto::CellType::U8,
        CellType::U16 => proto::CellType::U16,
        CellType::Field => proto::CellType::Field,
    }
}

/// A validated layout on the wire, both heights set.
pub fn layout_to_proto(l: &MemoryLayout) -> proto::Layout {
    proto::Layout {
        address_spaces: l
            .address_spaces()
            .iter()
            .map(|s| proto::AddressSpace {
                cell: cell_to_proto(s.cell) as i32,
                num_cells: s.num_cells,
            })
            .collect(),
        address_space_height: Some(l.address_space_height()),
        address_height: Some(l.address_height()),
    }
}

/// Reads and validates a layout. `field` names it in errors (`layout`); the core
/// validation's field names (e.g. `address_spaces[1].num_cells`) get it as a prefix.
///
/// # Errors
/// [`Error::InvalidArgument`] if it is missing, a cell type is unset or unknown, or
/// [`MemoryLayout::new`] rejects it.
pub fn layout_from_proto(l: Option<&proto::Layout>, field: &str) -> Result<MemoryLayout> {
    let l = l.ok_or_else(|| Error::invalid(field, "missing"))?;
    let address_spaces = l
        .address_spaces
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let cell = match proto::CellType::try_from(s.cell) {
                Ok(proto::CellType::U8) => CellType::U8,
                Ok(proto::CellType::U16) => CellType::U16,
                Ok(proto::CellType::Field) => CellType::Field,
                _ => {
                    return Err(Error::invalid(
                        format!("{field}.address_spaces[{i}].cell"),
                        format!(
                            "{} is not one of CELL_TYPE_U8, CELL_TYPE_U16, CELL_TYPE_FIELD",
                            s.cell
                        ),
                    ))
                }
            };
            Ok(AddressSpace {
                cell,
                num_cells: s.num_cells,
            })
        })
        .collect::<Result<_>>()?;
    MemoryLayout::new(LayoutSpec {
        address_spaces,
        address_space_height: l.address_space_height,
        address_height: l.address_height,
    })
    .map_err(|e| match e {
        Error::InvalidArgument { field: f, message } => Error::InvalidArgument {
            field: format!("{field}.{f}"),
            message,
        },
        e => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::P;

    fn msg(slots: &[u8], blocks: &[u8], cells: &[u8]) -> proto::TouchedBlocks {
        proto::TouchedBlocks {
            slots: Bytes::copy_from_slice(slots),
            blocks: Bytes::copy_from_slice(blocks),
            cells: Bytes::copy_from_slice(cells),
        }
    }

    fn invalid_message(e: Error) -> String {
        match e {
            Error::InvalidArgument { .. } => e.to_string(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn witness_round_trips_and_names_bad_rows() {
        let d = |v: u32| Digest::from_canonical([v, 1, 2, 3, 4, 5, 6, P - 1]).unwrap();
        let rows: Vec<WitnessRow> = (0..20_000u32)
            .map(|i| WitnessRow {
                height: 1 + i % 7,
                index: (1u64 << 40) + u64::from(i),
                old: [d(i), d(i + 1)],
                new: [d(i + 2), d(i)],
                touched: [i % 2 == 0, i % 3 == 0],
            })
            .collect();
        let w = witness_to_proto(&rows);
        assert_eq!(w.heights.len(), 4 * rows.len());
        assert_eq!(&w.heights[4..8], &2u32.to_le_bytes());
        assert_eq!(&w.indices[8..16], &((1u64 << 40) + 1).to_le_bytes());
        assert_eq!(&w.old_left[32..36], &1u32.to_le_bytes());
        assert_eq!(&w.old_left[60..64], &(P - 1).to_le_bytes());
        assert_eq!(&w.touched[..4], &[3, 0, 1, 2]);
        assert_eq!(witness_from_proto(&w, "witness").unwrap(), rows);

        let mut bad = w.clone();
        let mut t = bad.touched.to_vec();
        t[12_345] = 4;
        bad.touched = t.into();
        let e = invalid_message(witness_from_proto(&bad, "witness").unwrap_err());
        assert!(
            e.contains("witness.touched[12345]") && e.contains("0x04"),
            "{e}"
        );
        let mut bad = w.clone();
        let mut c = bad.new_right.to_vec();
        c[32 * 15_000 + 4..32 * 15_000 + 8].copy_from_slice(&P.to_le_bytes());
        c[32 * 19_000..32 * 19_000 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        bad.new_right = c.into();
        let e = invalid_message(witness_from_proto(&bad, "witness").unwrap_err());
        assert!(
            e.contains("witness.new_right[15000]"),
            "the first bad row: {e}"
        );
        let mut bad = w;
        bad.indices = bad.indices.slice(..8);
        let e = invalid_message(witness_from_proto(&bad, "witness").unwrap_err());
        assert!(
            e.contains("witness.indices") && e.contains("8 bytes"),
            "{e}"
        );
        assert!(witness_from_proto(&proto::Witness::default(), "w")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn blocks_round_trip() {
        let blocks: Vec<TouchedBlock> = (0..1000u32)
            .map(|i| TouchedBlock {
                slot: i % 7,
                block: u64::from(i.wrapping_mul(2_654_435_761)),
                cells: core::array::from_fn(|j| i * 8 + j as u32),
            })
            .collect();
        let m = encode_blocks(&blocks).expect("encode");
        assert_eq!(m.slots.len(), 4000);
        assert_eq!(m.blocks.len(), 4000);
        assert_eq!(m.cells.len(), 32000);
        assert_eq!(decode_blocks(&m, "blocks").expect("decode"), blocks);
    }

    #[test]
    fn blocks_are_little_endian_columns() {
        let m = encode_blocks(&[TouchedBlock {
            slot: 0x0102_0304,
            block: 0x0a0b_0c0d,
            cells: [1, 2, 3, 4, 5, 6, 7, 0xdead_beef],
        }])
        .expect("encode");
        assert_eq!(&m.slots[..], &[4, 3, 2, 1]);
        assert_eq!(&m.blocks[..], &[0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(&m.cells[..4], &[1, 0, 0, 0]);
        assert_eq!(&m.cells[28..], &[0xef, 0xbe, 0xad, 0xde]);
    }

    #[test]
    fn empty_batch_decodes_empty() {
        assert!(decode_blocks(&proto::TouchedBlocks::default(), "blocks")
            .expect("decode")
            .is_empty());
    }

    #[test]
    fn bad_lengths_name_field_and_value() {
        let e = decode_blocks(&msg(&[0; 8], &[0; 8], &[0; 37]), "blocks").unwrap_err();
        assert_eq!(
            invalid_message(e),
            "invalid blocks.cells: 37 bytes is not 32 per block × 2 blocks"
        );
        let e = decode_blocks(&msg(&[0; 7], &[0; 8], &[0; 64]), "blocks").unwrap_err();
        assert_eq!(
            invalid_message(e),
            "invalid blocks.slots: 7 bytes is not a multiple of 4 (one u32 LE per block)"
        );
        let e = decode_blocks(&msg(&[0; 8], &[0; 4], &[0; 64]), "blocks").unwrap_err();
        assert_eq!(
            invalid_message(e),
            "invalid blocks.blocks: 4 bytes is not 4 per block × 2 blocks"
        );
        let e = decode_positions(
            &proto::Positions {
                slots: Bytes::from_static(&[0; 4]),
                blocks: Bytes::from_static(&[0; 12]),
            },
            "positions",
        )
        .unwrap_err();
        assert_eq!(
            invalid_message(e),
            "invalid positions.blocks: 12 bytes is not 4 per position × 1 positions"
        );
    }

    #[test]
    fn oversized_block_index_is_refused() {
        let b = TouchedBlock {
            slot: 0,
            block: 1 << 32,
            cells: [0; 8],
        };
        let e = encode_blocks(&[b]).unwrap_err();
        assert!(invalid_message(e).contains("blocks[0].block: block 4294967296"));
        let e = encode_positions(&[(0, 5), (1, u64::MAX)]).unwrap_err();
        assert!(invalid_message(e).contains("positions[1].block"));
    }

    #[test]
    fn positions_round_trip() {
        let p = vec![(0u32, 0u64), (3, 17), (u32::MAX, u64::from(u32::MAX))];
        let m = encode_positions(&p).expect("encode");
        assert_eq!(decode_positions(&m, "positions").expect("decode"), p);
    }

    #[test]
    fn digests_and_openings_round_trip_and_check() {
        let d = Digest::from_canonical([1, 2, 3, 4, 5, 6, 7, P - 1]).expect("canonical");
        let pd = digest_to_proto(&d);
        assert_eq!(pd.elements, vec![1, 2, 3, 4, 5, 6, 7, P - 1]);
        assert_eq!(digest_from_proto(Some(&pd), "root").expect("digest"), d);
        let e = digest_from_proto(None, "root").unwrap_err();
        assert_eq!(invalid_message(e), "invalid root: missing");
        let bad = proto::Digest {
            elements: vec![0, 0, 0, 0, 0, 0, 0, P],
        };
        assert!(
            invalid_message(digest_from_proto(Some(&bad), "root").unwrap_err())
                .starts_with("invalid root: ")
        );
        let short = proto::Digest {
            elements: vec![1; 7],
        };
        assert_eq!(
            invalid_message(digest_from_proto(Some(&short), "root").unwrap_err()),
            "invalid root: 7 elements, a digest has 8"
        );

        let o = Opening {
            slot: 2,
            block: 9,
            cells: [9, 8, 7, 6, 5, 4, 3, 2],
            siblings: vec![d, Digest::ZERO, d],
        };
        let po = opening_to_proto(&o);
        assert_eq!(po.siblings.len(), 24);
        assert_eq!(opening_from_proto(&po, "openings[0]").expect("opening"), o);
        assert!(
            prost::Message::encoded_len(&proto::GetOpeningsResponse {
                root: None,
                openings: vec![po.clone(); 10],
            }) as u64
                <= openings_encoded_bound(10, 3)
        );
        let mut bad = po.clone();
        bad.siblings.pop();
        assert_eq!(
            invalid_message(opening_from_proto(&bad, "openings[0]").unwrap_err()),
            "invalid openings[0].siblings: 23 elements is not a multiple of 8"
        );
        let mut bad = po;
        bad.cells.push(1);
        assert_eq!(
            invalid_message(opening_from_proto(&bad, "openings[0]").unwrap_err()),
            "invalid openings[0].cells: 9 cells, a block has 8"
        );
    }

    #[test]
    fn layouts_round_trip_and_name_fields() {
        let json = r#"{"address_spaces": [{"cell": "u16", "num_cells": 128},
            {"cell": "u8", "num_cells": 0}, {"cell": "field", "num_cells": 64}]}"#;
        let l = MemoryLayout::from_json(json).expect("layout");
        let p = layout_to_proto(&l);
        assert_eq!(p.address_space_height, Some(2));
        assert_eq!(p.address_height, Some(4));
        assert_eq!(layout_from_proto(Some(&p), "layout").expect("layout"), l);

        let mut bad = p.clone();
        bad.address_spaces[1].cell = 0;
        assert_eq!(
            invalid_message(layout_from_proto(Some(&bad), "layout").unwrap_err()),
            "invalid layout.address_spaces[1].cell: 0 is not one of CELL_TYPE_U8, \
             CELL_TYPE_U16, CELL_TYPE_FIELD"
        );
        let mut bad = p.clone();
        bad.address_spaces[2].num_cells = 12;
        assert!(
            invalid_message(layout_from_proto(Some(&bad), "layout").unwrap_err())
                .starts_with("invalid layout.address_spaces[2].num_cells: 12 ")
        );
        assert_eq!(
            invalid_message(layout_from_proto(None, "layout").unwrap_err()),
            "invalid layout: missing"
        );
    }
}
