//! The JSON shape of one trace line, the checks shared by the reader and the writer (event
//! order, writes against the layout, update batches), and the slow path that names the bad
//! field when a line does not deserialise.
//!
//! Lines are parsed straight into typed structs (fast on million-block batches). serde_json
//! errors do not say where in the line they happened, so on failure the line is parsed again
//! as a `serde_json::Value` and walked to find the field; that only runs once, on error.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::TraceEvent;
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::layout::{check_cell, CellType, MemoryLayout, BLOCK_CELLS};
use crate::tree::{check_omitted_levels, validate_batch, OmittedLevels, TouchedBlock};

// ---- reading ------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HeaderIn {
    pub layout: MemoryLayout,
    #[serde(default)]
    pub omitted_levels: Option<OmittedLevels>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventIn {
    #[serde(default)]
    pub write: Option<WriteIn>,
    #[serde(default)]
    pub build: Option<BuildIn>,
    #[serde(default)]
    pub update: Option<UpdateIn>,
    #[serde(default)]
    pub expect_root: Option<Digest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteIn {
    pub slot: u32,
    pub offset: u64,
    pub hex: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BuildIn {
    #[serde(default)]
    pub expect_root: Option<Digest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateIn {
    pub blocks: Vec<BlockIn>,
    #[serde(default)]
    pub expect_root: Option<Digest>,
}

/// `TouchedBlock` derives Deserialize without `deny_unknown_fields`; traces reject them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BlockIn {
    slot: u32,
    block: u64,
    cells: [u32; BLOCK_CELLS],
}

impl From<BlockIn> for TouchedBlock {
    fn from(b: BlockIn) -> Self {
        TouchedBlock {
            slot: b.slot,
            block: b.block,
            cells: b.cells,
        }
    }
}

// ---- writing ------------------------------------------------------------------------------

#[derive(Serialize)]
pub(super) struct HeaderOut<'a> {
    pub layout: &'a MemoryLayout,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub omitted_levels: Option<OmittedLevels>,
}

#[derive(Serialize)]
pub(super) struct WriteOut {
    pub write: WriteBodyOut,
}

#[derive(Serialize)]
pub(super) struct WriteBodyOut {
    pub slot: u32,
    pub offset: u64,
    pub hex: String,
}

#[derive(Serialize)]
pub(super) struct BuildOut {
    pub build: Empty,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_root: Option<Digest>,
}

#[derive(Serialize)]
pub(super) struct Empty {}

#[derive(Serialize)]
pub(super) struct UpdateOut<'a> {
    pub update: UpdateBodyOut<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_root: Option<Digest>,
}

#[derive(Serialize)]
pub(super) struct UpdateBodyOut<'a> {
    /// `TouchedBlock` serialises as `{"slot", "block", "cells"}`, the trace's block shape.
    pub blocks: &'a [TouchedBlock],
}

// ---- checks shared by reader and writer ---------------------------------------------------

/// An [`Error::InvalidArgument`] whose field is `line N: <field>`.
pub(super) fn at_line(line: u64, field: &str, message: impl Into<String>) -> Error {
    let field = if field.is_empty() {
        format!("line {line}")
    } else {
        format!("line {line}: {field}")
    };
    Error::invalid(field, message)
}

/// Where a trace is in its event sequence: writes, then one build, then updates.
#[derive(Default)]
pub(super) struct Sequence {
    build_line: Option<u64>,
}

impl Sequence {
    /// Checks that `event` may come next and records it.
    pub fn accept(&mut self, event: &TraceEvent, line: u64) -> Result<()> {
        match (event, self.build_line) {
            (TraceEvent::Write { .. }, Some(b)) => Err(at_line(
                line,
                "write",
                format!("write after the build on line {b}: writes set the initial image and must come before the build"),
            )),
            (TraceEvent::Build { .. }, Some(b)) => Err(at_line(
                line,
                "build",
                format!("second build (the first is on line {b}); a trace has exactly one"),
            )),
            (TraceEvent::Update { .. }, None) => Err(at_line(
                line,
                "update",
                "update before the build: the build must come first",
            )),
            (TraceEvent::Build { .. }, None) => {
                self.build_line = Some(line);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks that the trace, ending after line `last_line`, had its build.
    pub fn finish(&self, last_line: u64) -> Result<()> {
        if self.build_line.is_none() {
            return Err(at_line(
                last_line,
                "build",
                format!(
                    "the trace ends after line {last_line} without a build line; \
                     {{\"build\": {{}}}} must appear once, after the writes"
                ),
            ));
        }
        Ok(())
    }
}

/// Checks the header's `omitted_levels`; the header is on line `line`.
pub(super) fn check_header(omitted_levels: Option<OmittedLevels>, line: u64) -> Result<()> {
    if let Some(OmittedLevels::Fixed(k)) = omitted_levels {
        check_omitted_levels(k).map_err(|e| prefixed(e, line, ""))?;
    }
    Ok(())
}

/// Checks a write or update against `layout` (build lines have nothing to check): a write
/// like [`crate::image::MemoryImage::write`], an update like [`validate_batch`]. Errors name
/// `line N: write.<field>` or `line N: update.blocks[i].<field>`.
pub(super) fn check_event(layout: &MemoryLayout, event: &TraceEvent, line: u64) -> Result<()> {
    match event {
        TraceEvent::Write { slot, offset, data } => check_write(layout, *slot, *offset, data, line),
        TraceEvent::Build { .. } => Ok(()),
        TraceEvent::Update { blocks, .. } => {
            validate_batch(layout, blocks).map_err(|e| prefixed(e, line, "update."))
        }
    }
}

fn check_write(
    layout: &MemoryLayout,
    slot: u32,
    offset: u64,
    data: &[u8],
    line: u64,
) -> Result<()> {
    let at = |f: &str| format!("write.{f}");
    let space = layout
        .space(slot, || at("slot"))
        .map_err(|e| prefixed(e, line, ""))?;
    let (cell, w, len) = (space.cell, space.cell.bytes() as u64, data.len() as u64);
    if !offset.is_multiple_of(w) {
        return Err(at_line(
            line,
            &at("offset"),
            format!(
                "{offset} is not a multiple of the {w}-byte {} cell",
                cell.name()
            ),
        ));
    }
    if len % w != 0 {
        return Err(at_line(
            line,
            &at("hex"),
            format!(
                "{len} bytes is not a multiple of the {w}-byte {} cell",
                cell.name()
            ),
        ));
    }
    if offset
        .checked_add(len)
        .is_none_or(|end| end > space.raw_bytes())
    {
        return Err(at_line(
            line,
            &at("offset"),
            format!(
                "{len} bytes at offset {offset} run past the end of slot {slot} ({} bytes)",
                space.raw_bytes()
            ),
        ));
    }
    if cell == CellType::Field {
        for (i, c) in data.chunks_exact(4).enumerate() {
            let byte = offset + 4 * i as u64;
            check_cell(cell, cell.read(c), || {
                format!("write.hex (cell at byte {byte})")
            })
            .map_err(|e| prefixed(e, line, ""))?;
        }
    }
    Ok(())
}

/// Prefixes the field of an [`Error::InvalidArgument`] with `line N: <prefix>`.
pub(super) fn prefixed(e: Error, line: u64, prefix: &str) -> Error {
    match e {
        Error::InvalidArgument { field, message } => {
            at_line(line, &format!("{prefix}{field}"), message)
        }
        other => other,
    }
}

// ---- naming the bad field of a line that does not deserialise -----------------------------

/// `(field path, message)` of the first problem found.
type Bad = (String, String);

/// The error for the header, line `line`, that failed to deserialise with `err`.
pub(super) fn header_error(text: &str, line: u64, err: serde_json::Error) -> Error {
    let (field, message) = locate(text, err, locate_header);
    at_line(line, &field, message)
}

/// The error for event line `line` that failed to deserialise with `err`.
pub(super) fn event_error(text: &str, line: u64, err: serde_json::Error) -> Error {
    let (field, message) = locate(text, err, locate_event);
    at_line(line, &field, message)
}

/// Parses `text` as a `Value` and walks it with `find`; falls back to serde's own message
/// (which carries a column) at the line level.
fn locate(text: &str, err: serde_json::Error, find: fn(&Value) -> Result<(), Bad>) -> Bad {
    match serde_json::from_str::<Value>(text) {
        Err(syntax) => (String::new(), format!("not valid JSON: {syntax}")),
        Ok(v) => find(&v)
            .err()
            .unwrap_or_else(|| (String::new(), err.to_string())),
    }
}

fn locate_header(v: &Value) -> Result<(), Bad> {
    let map = object(v, "", &["layout", "omitted_levels"], &["layout"])?;
    typed::<MemoryLayout>(&map["layout"], "layout")?;
    if let Some(k) = map.get("omitted_levels") {
        typed::<Option<OmittedLevels>>(k, "omitted_levels")?;
    }
    Ok(())
}

fn locate_event(v: &Value) -> Result<(), Bad> {
    let map = object(v, "", &["write", "build", "update", "expect_root"], &[])?;
    if let Some(w) = map.get("write") {
        let w = object(
            w,
            "write",
            &["slot", "offset", "hex"],
            &["slot", "offset", "hex"],
        )?;
        typed::<u32>(&w["slot"], "write.slot")?;
        typed::<u64>(&w["offset"], "write.offset")?;
        typed::<String>(&w["hex"], "write.hex")?;
    }
    if let Some(b) = map.get("build") {
        let b = object(b, "build", &["expect_root"], &[])?;
        if let Some(r) = b.get("expect_root") {
            typed::<Option<Digest>>(r, "build.expect_root")?;
        }
    }
    if let Some(u) = map.get("update") {
        let u = object(u, "update", &["blocks", "expect_root"], &["blocks"])?;
        let Some(blocks) = u["blocks"].as_array() else {
            return Err((
                "update.blocks".into(),
                format!("expected an array, found {}", kind(&u["blocks"])),
            ));
        };
        for (i, b) in blocks.iter().enumerate() {
            let path = format!("update.blocks[{i}]");
            let b = object(
                b,
                &path,
                &["slot", "block", "cells"],
                &["slot", "block", "cells"],
            )?;
            typed::<u32>(&b["slot"], &format!("{path}.slot"))?;
            typed::<u64>(&b["block"], &format!("{path}.block"))?;
            typed::<[u32; BLOCK_CELLS]>(&b["cells"], &format!("{path}.cells"))?;
        }
        if let Some(r) = u.get("expect_root") {
            typed::<Option<Digest>>(r, "update.expect_root")?;
        }
    }
    if let Some(r) = map.get("expect_root") {
        typed::<Option<Digest>>(r, "expect_root")?;
    }
    Ok(())
}

/// `v` as an object with only `allowed` keys and every `required` one.
fn object<'a>(
    v: &'a Value,
    path: &str,
    allowed: &[&str],
    required: &[&str],
) -> Result<&'a Map<String, Value>, Bad> {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    let Some(map) = v.as_object() else {
        return Err((
            path.into(),
            format!("expected an object, found {}", kind(v)),
        ));
    };
    let expected = allowed
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err((
            join(k),
            format!("unknown field `{k}`, expected one of {expected}"),
        ));
    }
    if let Some(k) = required.iter().find(|k| !map.contains_key(**k)) {
        return Err((join(k), "missing field".into()));
    }
    Ok(map)
}

fn typed<T: DeserializeOwned>(v: &Value, path: &str) -> Result<(), Bad> {
    T::deserialize(v)
        .map(drop)
        .map_err(|e| (path.to_string(), e.to_string()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
