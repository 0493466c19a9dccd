//! The update witness: the Merkle-chip rows a prover needs to prove that a batch took the
//! memory from its old root to its new one (OpenVM's `MemoryMerkleChip`, built by
//! `MerkleTree::finalize` in openvm-circuit 2.0.2). Conventions: docs/design.md,
//! "Update witness".
//!
//! The whole memory is one binary tree of height `H = address_space_height +
//! address_height`. Heap indices: the root is 1, node `i` has children `2i` and `2i + 1`, and
//! the leaf of `(slot, block)` is `2^H + (slot << address_height | block)`. A batch's witness
//! has one row per parent of a touched node (heights 1..=H), ordered by height, then index.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::hash::{compress, leaf_hash, Digest, F};
use crate::layout::MemoryLayout;
use crate::tree::{block_key, validate_batch, MemoryTree, TouchedBlock};

/// One row of a batch's witness: a node with a touched block below it, with its children
/// before and after the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WitnessRow {
    /// Height above the leaves, 1..=H (H = `address_space_height + address_height`).
    pub height: u32,
    /// Heap index: `2^(H - height) + position in its level` (the root is 1).
    pub index: u64,
    /// The children's digests before the batch, `[left, right]`.
    pub old: [Digest; 2],
    /// The children's digests after the batch, `[left, right]`.
    pub new: [Digest; 2],
    /// Whether each child is touched: a touched block (even one whose cells did not
    /// change) or a node with one below it, `[left, right]`.
    pub touched: [bool; 2],
}

/// Rows in the witness of `blocks` on `layout`: the nodes with a touched block below them,
/// heights 1..=H. Counted from the blocks' positions alone (a sort, then one pass), so a
/// caller can bound the witness's size before applying the batch. Repeated positions count
/// once.
pub fn witness_rows(layout: &MemoryLayout, blocks: &[TouchedBlock]) -> u64 {
    let mut keys: Vec<u64> = blocks.iter().map(block_key).collect();
    keys.sort_unstable();
    keys.dedup();
    rows_per_height(layout, &keys).iter().sum::<usize>() as u64
}

/// Rows per height (index 0, the leaves, is 0) of the witness of the sorted distinct block
/// keys `keys` ([`block_key`]). Over the sorted leaves, height `l` has one node, plus one for
/// each adjacent pair that differs above bit `l`; no rows without keys.
pub fn rows_per_height(layout: &MemoryLayout, keys: &[u64]) -> Vec<usize> {
    let ah = layout.address_height();
    let h = (layout.address_space_height() + ah) as usize;
    let mut counts = vec![0usize; h + 1];
    if keys.is_empty() {
        return counts;
    }
    let leaf = |k: u64| ((k >> 32) << ah) | (k & 0xffff_ffff);
    // diff[m] counts pairs whose leaves first agree at height m.
    let mut diff = vec![0usize; h + 2];
    for w in keys.windows(2) {
        diff[(64 - (leaf(w[0]) ^ leaf(w[1])).leading_zeros()) as usize] += 1;
    }
    let mut differing = keys.len() - 1;
    for (l, count) in counts.iter_mut().enumerate().skip(1) {
        differing -= diff[l];
        *count = 1 + differing;
    }
    counts
}

/// The JSON form of docs/design.md's `replay --json --witness`: `{"height": h, "index": i,
/// "old": [[8], [8]], "new": [[8], [8]], "touched": [0|1, 0|1]}`, digests as canonical
/// integers, `[left, right]`.
impl serde::Serialize for WitnessRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut row = s.serialize_struct("WitnessRow", 5)?;
        row.serialize_field("height", &self.height)?;
        row.serialize_field("index", &self.index)?;
        row.serialize_field("old", &self.old)?;
        row.serialize_field("new", &self.new)?;
        row.serialize_field("touched", &self.touched.map(u8::from))?;
        row.end()
    }
}

impl WitnessRow {
    /// A placeholder row (height 0, zero digests), for buffers filled in place.
    pub const BLANK: WitnessRow = WitnessRow {
        height: 0,
        index: 0,
        old: [Digest::ZERO; 2],
        new: [Digest::ZERO; 2],
        touched: [false; 2],
    };
}

/// Checks that `rows` is a consistent witness of a transition from `old_root` to
/// `new_root` in a tree of height `height`: ordered by height then index, at most one row
/// per node; each row's parent digests (`compress` of its children) appear as the
/// matching child of the row above it, and the top row's are the roots; an untouched child
/// is the same before and after; a touched child above height 1 has its own row. An empty
/// witness needs `old_root == new_root`, unless `height` is 0 (the root is the one leaf).
///
/// # Errors
/// [`Error::InvalidArgument`] naming the first row (`witness[i]`) that breaks a rule.
pub fn check_witness(
    rows: &[WitnessRow],
    height: u32,
    old_root: &Digest,
    new_root: &Digest,
) -> Result<()> {
    let bad = |i: usize, m: String| Error::invalid(format!("witness[{i}]"), m);
    if rows.is_empty() {
        // A tree of height 0 is one leaf, its root: no node has children to show.
        return match height == 0 || old_root == new_root {
            true => Ok(()),
            false => Err(Error::invalid("witness", "empty, but the roots differ")),
        };
    }
    // (height, index) → (old parent, new parent), of the rows seen so far.
    let mut parents = std::collections::HashMap::new();
    let mut last = (0u32, 0u64);
    for (i, r) in rows.iter().enumerate() {
        if r.height == 0 || r.height > height {
            return Err(bad(i, format!("height {} outside 1..={height}", r.height)));
        }
        let level = height - r.height;
        if r.index >> level != 1 {
            return Err(bad(
                i,
                format!("index {} is not a node at height {}", r.index, r.height),
            ));
        }
        if (r.height, r.index) <= last {
            return Err(bad(i, "not after the row before it (height, index)".into()));
        }
        last = (r.height, r.index);
        for side in 0..2 {
            let child = (r.height - 1, 2 * r.index + side as u64);
            if !r.touched[side] && r.old[side] != r.new[side] {
                return Err(bad(i, format!("untouched child {side} changed")));
            }
            match parents.remove(&child) {
                Some((old, new)) => {
                    if (old, new) != (r.old[side], r.new[side]) {
                        return Err(bad(i, format!("child {side} is not its row's digest")));
                    }
                    if !r.touched[side] {
                        return Err(bad(i, format!("child {side} has a row but is untouched")));
                    }
                }
                None if r.touched[side] && r.height > 1 => {
                    return Err(bad(i, format!("touched child {side} has no row")));
                }
                None => {}
            }
        }
        let old = compress(&r.old[0], &r.old[1]);
        let new = compress(&r.new[0], &r.new[1]);
        parents.insert((r.height, r.index), (old, new));
    }
    if let Some(&(h, index)) = parents.keys().find(|&&(h, _)| h != height) {
        return Err(Error::invalid(
            "witness",
            format!("the node at height {h}, index {index} has no parent row"),
        ));
    }
    match parents.get(&(height, 1)) {
        Some(&(old, new)) if (old, new) == (*old_root, *new_root) => Ok(()),
        Some(_) => Err(Error::invalid(
            "witness",
            "its top row does not give the roots",
        )),
        None => Err(Error::invalid("witness", "no row for the root")),
    }
}

/// Applies `blocks` to `tree` (any backend) and returns the new root with the batch's
/// witness, built from openings of the touched blocks before and after the batch: along a
/// touched block's path, the child on the path is the path's digest (folded up from the
/// block's leaf hash) and the other child is the opening's sibling. Every backend thus gives
/// the same rows as [`crate::tree::reference::ReferenceTree::update_with_witness`]. It costs
/// two openings and two path folds per touched block on top of the update.
///
/// # Errors
/// As [`MemoryTree::update`]; an invalid batch changes nothing.
pub fn from_openings<T: MemoryTree + ?Sized>(
    tree: &mut T,
    blocks: &[TouchedBlock],
) -> Result<(Digest, Vec<WitnessRow>)> {
    validate_batch(tree.layout(), blocks)?;
    let positions: Vec<(u32, u64)> = blocks.iter().map(|b| (b.slot, b.block)).collect();
    let before = tree.openings(&positions)?;
    let root = tree.update(blocks)?;
    let after = tree.openings(&positions)?;
    let layout = tree.layout();
    let h = layout.address_space_height() + layout.address_height();
    let mut rows: BTreeMap<(u32, u64), WitnessRow> = BTreeMap::new();
    for (old, new) in before.iter().zip(&after) {
        let leaf = ((old.slot as u64) << layout.address_height()) | old.block;
        let mut path = [
            leaf_hash(&old.cells.map(F::new)),
            leaf_hash(&new.cells.map(F::new)),
        ];
        for l in 1..=h {
            let child = leaf >> (l - 1);
            let side = (child & 1) as usize;
            let row = rows.entry((l, child >> 1)).or_insert(WitnessRow {
                height: l,
                index: (1u64 << (h - l)) + (child >> 1),
                old: [Digest::ZERO; 2],
                new: [Digest::ZERO; 2],
                touched: [false; 2],
            });
            row.touched[side] = true;
            for (when, (opening, node)) in [(old, path[0]), (new, path[1])].into_iter().enumerate()
            {
                let sibling = opening.siblings[l as usize - 1];
                let children = if side == 0 {
                    [node, sibling]
                } else {
                    [sibling, node]
                };
                // A sibling that is itself touched has its own path; both give its digest.
                let row_children = if when == 0 {
                    &mut row.old
                } else {
                    &mut row.new
                };
                row_children[side] = children[side];
                if !row.touched[1 - side] {
                    row_children[1 - side] = children[1 - side];
                }
                path[when] = compress(&children[0], &children[1]);
            }
        }
    }
    Ok((root, rows.into_values().collect()))
}
