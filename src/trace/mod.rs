//! Trace files (docs/design.md Part 1 "Formats", Traces): one tree's life as JSON Lines, zstd
//! compressed when the path ends in `.zst`.
//!
//! ```text
//! {"layout": {...}, "omitted_levels": 3}                       header (omitted_levels optional: K or "auto")
//! {"write": {"slot": 0, "offset": 4096, "hex": "00ff..."}}     zero or more, initial image
//! {"build": {}, "expect_root": [...]}                          exactly one: root step 0
//! {"update": {"blocks": [{"slot": 0, "block": 5, "cells": [...]}]}, "expect_root": [...]}
//! ```
//!
//! `expect_root` is optional on every `build` and `update` line. [`TraceWriter`] puts it at
//! the line level as above; [`TraceReader`] also accepts it inside the `build` / `update`
//! object (docs/design.md allows either reading), but not in both places. Unknown keys are
//! errors. Both ends stream: neither holds more than one line in memory.
//!
//! [`lackey`] converts `valgrind --tool=lackey --trace-mem=yes` output into a trace.

pub mod lackey;
mod line;
mod reader;
mod writer;

pub use reader::TraceReader;
pub use writer::{TraceWriter, DEFAULT_ZSTD_LEVEL};

use crate::hash::Digest;
use crate::layout::MemoryLayout;
use crate::tree::TouchedBlock;

/// The first line of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceHeader {
    /// The memory layout the trace's tree is built for.
    pub layout: MemoryLayout,
    /// `omitted_levels` for the tree (`None`: the consumer's default, normally
    /// [`crate::tree::DEFAULT_OMITTED_LEVELS`]; `auto`: the consumer picks it with
    /// [`crate::tree::choose_omitted_levels`]). It never changes a root.
    pub omitted_levels: Option<crate::tree::OmittedLevels>,
}

/// One line after the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// Raw little-endian cell bytes written into the initial image of `slot` at byte
    /// `offset`. Before the build only; offset and length are multiples of the cell size
    /// and the write lies within the slot.
    Write {
        /// Address-space slot.
        slot: u32,
        /// Byte offset in the slot's raw memory.
        offset: u64,
        /// The bytes (`hex` on disk).
        data: Vec<u8>,
    },
    /// Builds the tree over the image written so far: root step 0. Exactly once.
    Build {
        /// The root the build must produce, when recorded.
        expect_root: Option<Digest>,
    },
    /// One update batch (the next root step). After the build only; a valid batch in the
    /// sense of [`crate::tree::validate_batch`].
    Update {
        /// Touched blocks with their new cells, in any order.
        blocks: Vec<TouchedBlock>,
        /// The root after the batch, when recorded.
        expect_root: Option<Digest>,
    },
}

impl TraceEvent {
    /// The recorded root of a build or update (`None` for writes and unrecorded steps).
    pub fn expect_root(&self) -> Option<Digest> {
        match self {
            TraceEvent::Write { .. } => None,
            TraceEvent::Build { expect_root } | TraceEvent::Update { expect_root, .. } => {
                *expect_root
            }
        }
    }
}

/// Whether `path` names a zstd-compressed trace (its name ends in `.zst`).
pub fn is_zstd_path(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "zst")
}
