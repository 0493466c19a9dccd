//! The witness case of `memcommit bench`: what asking for a batch's witness
//! ([`MemoryTree::update_with_witness`]) costs over the plain update, on one `field` slot
//! of `2^log_leaves` blocks, with the two runs of each batch interleaved in the same
//! process; and what its wire form costs to encode and decode, for the witness of a batch
//! that touches every block (`2^log_leaves − 1` rows).

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use serde::{Deserialize, Serialize};

use super::count::{below_base_permutations, update_permutations, witness_permutations};
use super::{layout_of, ms_since, random_batch, random_image, Timing};
use crate::error::Result;
use crate::layout::{CellType, BLOCK_CELLS};
use crate::service::codec;
use crate::tree::{self, Backend, MemoryTree};

/// One (backend, k, batch size) of the witness case.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessCase {
    /// Concrete backend.
    pub backend: Backend,
    /// `omitted_levels`.
    pub k: u32,
    /// Blocks of the slot (leaves).
    pub leaves: u64,
    /// Touched blocks per batch (random, distinct).
    pub batch: u64,
    /// The batch applied with [`MemoryTree::update`].
    pub update: Timing,
    /// The same batch applied with [`MemoryTree::update_with_witness`].
    pub with_witness: Timing,
    /// `with_witness.median_ms / update.median_ms`.
    pub ratio: f64,
    /// Witness rows per batch (averaged over the repeats).
    pub rows: u64,
    /// Permutations of the update per touched block.
    pub update_perms_per_block: f64,
    /// Permutations of the update and its witness per touched block (CPU count; the
    /// generic witness of other backends is not counted).
    pub with_witness_perms_per_block: f64,
    /// The bound on the latter: the update's count plus its count below level k again
    /// (the old path recomputed once), per touched block.
    pub bound_perms_per_block: f64,
    /// Encoded bytes of the witness on the wire, per row.
    pub wire_bytes_per_row: f64,
}

/// The wire cost of a witness that covers every block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessCodec {
    /// Concrete backend.
    pub backend: Backend,
    /// `omitted_levels`.
    pub k: u32,
    /// Rows of the witness (`leaves − 1`).
    pub rows: u64,
    /// Applying the batch of every block without a witness.
    pub update: Timing,
    /// `codec::witness_to_proto` and the protobuf encoding to bytes.
    pub encode: Timing,
    /// Protobuf decoding and `codec::witness_from_proto`.
    pub decode: Timing,
    /// Encoded bytes.
    pub wire_bytes: u64,
    /// `encode.median_ms / update.median_ms`.
    pub encode_vs_update: f64,
    /// `decode.median_ms / update.median_ms`.
    pub decode_vs_update: f64,
}

fn ratio(a: &Timing, b: &Timing) -> f64 {
    if b.median_ms > 0.0 {
        a.median_ms / b.median_ms
    } else {
        0.0
    }
}

/// Times batches of each size in `batches` at `k` on `backend`, `repeats` times each, the
/// plain update and the update with its witness alternating which goes first. With
/// `codec`, also times the wire form of a witness of every block.
///
/// # Errors
/// Whatever the build or an update returns.
#[allow(clippy::too_many_arguments)]
pub fn run_case(
    log_leaves: u32,
    k: u32,
    backend: Backend,
    batches: &[u64],
    repeats: usize,
    seed: u64,
    codec_case: bool,
    mut progress: impl FnMut(&str),
) -> Result<(Vec<WitnessCase>, Option<WitnessCodec>)> {
    let cell = CellType::Field;
    let leaves = 1u64 << log_leaves;
    let layout = layout_of(leaves * (BLOCK_CELLS * cell.bytes()) as u64, cell)?;
    let image = Arc::new(random_image(&layout, seed)?);
    let mut tree = tree::build(backend, layout.clone(), image, k)?;
    let mut rows = Vec::new();
    for (i, &n) in batches.iter().enumerate() {
        let n = n.clamp(1, leaves);
        progress(&format!("witness {} k={k} batch {n}", backend.name()));
        let (mut plain, mut witnessed) = (Vec::new(), Vec::new());
        let (mut row_count, mut perms, mut extra, mut below, mut wire) = (0, 0, 0, 0, 0);
        for r in 0..repeats {
            let batch = random_batch(leaves, n, cell, seed + 1000 * i as u64 + r as u64);
            for first in [r % 2 == 0, r % 2 == 1] {
                let t = Instant::now();
                if first {
                    tree.update(&batch)?;
                    plain.push(ms_since(t));
                } else {
                    let (_, w) = tree.update_with_witness(&batch)?;
                    witnessed.push(ms_since(t));
                    row_count += w.len() as u64;
                    wire += codec::witness_to_proto(&w).encoded_len() as u64;
                }
            }
            perms += update_permutations(&layout, tree.image(), k, &batch);
            extra += witness_permutations(&layout, k, &batch);
            below += below_base_permutations(&layout, k, &batch);
        }
        let (update, with_witness) = (Timing::of(&plain), Timing::of(&witnessed));
        let per_block = |p: u64| p as f64 / (n * repeats as u64) as f64;
        rows.push(WitnessCase {
            backend: tree.backend(),
            k,
            leaves,
            batch: n,
            ratio: ratio(&with_witness, &update),
            update,
            with_witness,
            rows: row_count / repeats as u64,
            update_perms_per_block: per_block(perms),
            with_witness_perms_per_block: per_block(perms + extra),
            bound_perms_per_block: per_block(perms + below),
            wire_bytes_per_row: wire as f64 / row_count.max(1) as f64,
        });
    }
    let codec_row = match codec_case {
        true => {
            progress(&format!("witness {} k={k} wire form", backend.name()));
            Some(time_codec(tree.as_mut(), leaves, cell, repeats, seed)?)
        }
        false => None,
    };
    Ok((rows, codec_row))
}

/// Encodes and decodes the witness of a batch of every block, against that batch's plain
/// update time.
fn time_codec(
    tree: &mut dyn MemoryTree,
    leaves: u64,
    cell: CellType,
    repeats: usize,
    seed: u64,
) -> Result<WitnessCodec> {
    let batch = random_batch(leaves, leaves, cell, seed ^ 0x5eed);
    let mut update = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        tree.update(&batch)?;
        update.push(ms_since(t));
    }
    let (_, rows) = tree.update_with_witness(&batch)?;
    let (mut encode, mut decode) = (Vec::new(), Vec::new());
    let mut wire_bytes = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let bytes = prost::bytes::Bytes::from(codec::witness_to_proto(&rows).encode_to_vec());
        encode.push(ms_since(t));
        wire_bytes = bytes.len() as u64;
        // From a shared buffer, as tonic decodes: the columns are not copied.
        let t = Instant::now();
        let message = crate::service::proto::Witness::decode(bytes)
            .map_err(|e| crate::Error::invalid("witness", e.to_string()))?;
        let back = codec::witness_from_proto(&message, "witness")?;
        decode.push(ms_since(t));
        if back.len() != rows.len() {
            return Err(crate::Error::invalid(
                "witness",
                "rows lost in the round trip",
            ));
        }
    }
    let (update, encode, decode) = (
        Timing::of(&update),
        Timing::of(&encode),
        Timing::of(&decode),
    );
    Ok(WitnessCodec {
        backend: tree.backend(),
        k: tree.omitted_levels(),
        rows: rows.len() as u64,
        encode_vs_update: ratio(&encode, &update),
        decode_vs_update: ratio(&decode, &update),
        update,
        encode,
        decode,
        wire_bytes,
    })
}
