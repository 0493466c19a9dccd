//! [`TraceReader`]: streams a trace file line by line, checking it as it goes.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::line::{
    at_line, check_event, check_header, event_error, header_error, EventIn, HeaderIn, Sequence,
};
use super::{is_zstd_path, TraceEvent, TraceHeader};
use crate::error::{Error, Result};
use crate::hash::Digest;

/// Reads a trace (plain JSON Lines, or zstd when the path ends in `.zst`) one line at a
/// time; only the current line is held in memory.
///
/// Iterating yields the events after the header. Each is checked before it is yielded:
/// its JSON shape (unknown keys, types, 8 cells per block, digest values `< p`), the order
/// (writes, exactly one build, then updates), each write against the layout (slot, offset
/// and length multiples of the cell size, within the slot, `field` cells `< p`) and each
/// update as [`crate::tree::validate_batch`] would. Whitespace-only lines are skipped; line
/// numbers count every physical line. After the first error the iterator ends.
///
/// Errors are [`Error::InvalidArgument`] whose field reads `line N: <field>`, e.g.
/// `line 7: update.blocks[2].cells`, and [`Error::Io`] whose context names the path (and the
/// line, once reading has started).
pub struct TraceReader {
    lines: Lines,
    header: TraceHeader,
    sequence: Sequence,
    done: bool,
}

/// The input, one line at a time.
struct Lines {
    path: PathBuf,
    input: Box<dyn BufRead + Send>,
    /// The number of the last line read (1-based).
    line: u64,
    buf: String,
}

impl Lines {
    /// Reads the next non-blank line into `buf`; `false` at the end of the file.
    fn next(&mut self) -> Result<bool> {
        loop {
            self.buf.clear();
            let n = self.input.read_line(&mut self.buf).map_err(|e| {
                Error::io(
                    format!("{}: line {}", self.path.display(), self.line + 1),
                    e,
                )
            })?;
            if n == 0 {
                return Ok(false);
            }
            self.line += 1;
            if !self.buf.trim().is_empty() {
                return Ok(true);
            }
        }
    }
}

impl TraceReader {
    /// Opens `path` and reads its header line.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be opened or read (or is not valid zstd);
    /// [`Error::InvalidArgument`] naming `line N: layout` / `line N: omitted_levels` (or an
    /// unknown key) for a bad header, or `line 1` for an empty file.
    pub fn open(path: &Path) -> Result<TraceReader> {
        let file = File::open(path).map_err(|e| Error::io(path.display().to_string(), e))?;
        let input: Box<dyn BufRead + Send> = if is_zstd_path(path) {
            let decoder = zstd::stream::read::Decoder::new(file)
                .map_err(|e| Error::io(path.display().to_string(), e))?;
            Box::new(BufReader::with_capacity(1 << 20, decoder))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, file))
        };
        Self::from_reader(path, input)
    }

    /// Reads a trace from `input` (plain JSON Lines; decompress first if needed) and reads
    /// its header line. `path` only names the input in errors and in [`Self::path`].
    ///
    /// # Errors
    /// As [`Self::open`], less the errors of opening a file.
    pub fn from_reader(path: &Path, input: Box<dyn BufRead + Send>) -> Result<TraceReader> {
        let mut lines = Lines {
            path: path.to_path_buf(),
            input,
            line: 0,
            buf: String::new(),
        };
        if !lines.next()? {
            return Err(at_line(
                1,
                "",
                "empty trace: the first line must be the header {\"layout\": {...}}",
            ));
        }
        let header: HeaderIn = serde_json::from_str(&lines.buf)
            .map_err(|e| header_error(&lines.buf, lines.line, e))?;
        check_header(header.omitted_levels, lines.line)?;
        Ok(TraceReader {
            lines,
            header: TraceHeader {
                layout: header.layout,
                omitted_levels: header.omitted_levels,
            },
            sequence: Sequence::default(),
            done: false,
        })
    }

    /// The header (layout and `omitted_levels`).
    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    /// The path the trace was opened from.
    pub fn path(&self) -> &Path {
        &self.lines.path
    }

    /// The 1-based number of the line the last event came from (for messages such as
    /// "expect_root mismatch on line N").
    pub fn line(&self) -> u64 {
        self.lines.line
    }

    fn next_event(&mut self) -> Result<Option<TraceEvent>> {
        let line = &mut self.lines;
        if !line.next()? {
            self.sequence.finish(line.line)?;
            return Ok(None);
        }
        let parsed: EventIn =
            serde_json::from_str(&line.buf).map_err(|e| event_error(&line.buf, line.line, e))?;
        let event = to_event(parsed, line.line)?;
        self.sequence.accept(&event, line.line)?;
        check_event(&self.header.layout, &event, line.line)?;
        Ok(Some(event))
    }
}

impl Iterator for TraceReader {
    type Item = Result<TraceEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.next_event();
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result.transpose()
    }
}

/// The one event a parsed line holds.
fn to_event(e: EventIn, line: u64) -> Result<TraceEvent> {
    match (e.write, e.build, e.update) {
        (Some(w), None, None) => {
            if e.expect_root.is_some() {
                return Err(at_line(
                    line,
                    "expect_root",
                    "only build and update lines carry expect_root",
                ));
            }
            let data = hex::decode(&w.hex)
                .map_err(|err| at_line(line, "write.hex", format!("not valid hex: {err}")))?;
            Ok(TraceEvent::Write {
                slot: w.slot,
                offset: w.offset,
                data,
            })
        }
        (None, Some(b), None) => Ok(TraceEvent::Build {
            expect_root: one_root(e.expect_root, b.expect_root, "build", line)?,
        }),
        (None, None, Some(u)) => Ok(TraceEvent::Update {
            expect_root: one_root(e.expect_root, u.expect_root, "update", line)?,
            blocks: u.blocks.into_iter().map(Into::into).collect(),
        }),
        (None, None, None) => Err(at_line(
            line,
            "",
            "no event: a line after the header holds one of `write`, `build`, `update`",
        )),
        (w, b, u) => {
            let found: Vec<&str> = [("`write`", w.is_some()), ("`build`", b.is_some())]
                .into_iter()
                .chain([("`update`", u.is_some())])
                .filter_map(|(name, present)| present.then_some(name))
                .collect();
            Err(at_line(
                line,
                "",
                format!("a line holds one event, found {}", found.join(" and ")),
            ))
        }
    }
}

/// `expect_root` from the line level or from inside the event object, not both.
fn one_root(
    outer: Option<Digest>,
    inner: Option<Digest>,
    event: &str,
    line: u64,
) -> Result<Option<Digest>> {
    match (outer, inner) {
        (Some(_), Some(_)) => Err(at_line(
            line,
            "expect_root",
            format!("given both at the line level and inside `{event}`; give it once"),
        )),
        (o, i) => Ok(o.or(i)),
    }
}
