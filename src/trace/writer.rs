//! [`TraceWriter`]: writes a trace file line by line, with the reader's checks, so that
//! what it writes always reads back.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::line::{
    check_event, check_header, BuildOut, Empty, HeaderOut, Sequence, UpdateBodyOut, UpdateOut,
    WriteBodyOut, WriteOut,
};
use super::{is_zstd_path, TraceEvent, TraceHeader};
use crate::error::{Error, Result};
use crate::layout::MemoryLayout;

/// The zstd level [`TraceWriter::create`] uses for `.zst` paths (zstd's own default: fast,
/// and within a few tens of percent of the best ratio on trace JSON).
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

enum Sink {
    Plain(BufWriter<File>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Plain(w) => w,
            Sink::Zstd(w) => w,
        }
    }

    /// Flushes and, for zstd, ends the frame.
    fn close(self) -> io::Result<()> {
        match self {
            Sink::Plain(mut w) => w.flush(),
            Sink::Zstd(w) => w.finish()?.flush(),
        }
    }
}

/// Writes a trace: plain JSON Lines, or zstd when the path ends in `.zst`. Each event is
/// checked as [`super::TraceReader`] checks it (order, writes against the layout, update
/// batches), so a finished file always reads back. [`TraceWriter::finish`] must be called:
/// a `.zst` file dropped without it lacks the end of its frame.
pub struct TraceWriter {
    path: PathBuf,
    sink: Option<Sink>,
    layout: MemoryLayout,
    sequence: Sequence,
    /// Lines written so far (the header is line 1).
    line: u64,
}

impl TraceWriter {
    /// Creates (or truncates) `path` and writes the header line; `.zst` paths are
    /// compressed at [`DEFAULT_ZSTD_LEVEL`].
    ///
    /// # Errors
    /// [`Error::Io`] naming the path; [`Error::InvalidArgument`] naming
    /// `line 1: omitted_levels` for a value above [`crate::tree::MAX_OMITTED_LEVELS`].
    pub fn create(path: &Path, header: &TraceHeader) -> Result<TraceWriter> {
        Self::create_with_level(path, header, DEFAULT_ZSTD_LEVEL)
    }

    /// [`TraceWriter::create`] with zstd level `level` (1..=22, higher is smaller and
    /// slower; ignored for plain paths).
    ///
    /// # Errors
    /// As [`TraceWriter::create`]; a level zstd rejects is an [`Error::Io`].
    pub fn create_with_level(path: &Path, header: &TraceHeader, level: i32) -> Result<TraceWriter> {
        check_header(header.omitted_levels, 1)?;
        let io_err = |e| Error::io(path.display().to_string(), e);
        let file = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_err)?);
        let sink = if is_zstd_path(path) {
            let mut encoder = zstd::stream::write::Encoder::new(file, level).map_err(io_err)?;
            // A content checksum turns a corrupted file into a read error, not bad events.
            encoder.include_checksum(true).map_err(io_err)?;
            Sink::Zstd(encoder)
        } else {
            Sink::Plain(file)
        };
        let mut writer = TraceWriter {
            path: path.to_path_buf(),
            sink: Some(sink),
            layout: header.layout.clone(),
            sequence: Sequence::default(),
            line: 0,
        };
        writer.put(&HeaderOut {
            layout: &header.layout,
            omitted_levels: header.omitted_levels,
        })?;
        Ok(writer)
    }

    /// Appends one event as one line.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `line N: <field>` (N being the line this event
    /// would have been) for an event out of order or not valid for the layout; nothing is
    /// written then. [`Error::Io`] naming the path; the file is then not a valid trace.
    pub fn write(&mut self, event: &TraceEvent) -> Result<()> {
        let line = self.line + 1;
        self.sequence.accept(event, line)?;
        check_event(&self.layout, event, line)?;
        match event {
            TraceEvent::Write { slot, offset, data } => self.put(&WriteOut {
                write: WriteBodyOut {
                    slot: *slot,
                    offset: *offset,
                    hex: hex::encode(data),
                },
            }),
            TraceEvent::Build { expect_root } => self.put(&BuildOut {
                build: Empty {},
                expect_root: *expect_root,
            }),
            TraceEvent::Update {
                blocks,
                expect_root,
            } => self.put(&UpdateOut {
                update: UpdateBodyOut { blocks },
                expect_root: *expect_root,
            }),
        }
    }

    /// Flushes the file and ends the zstd frame.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path; [`Error::InvalidArgument`] naming `line N: build` when
    /// no build was written (the file is still closed, but is not a valid trace).
    pub fn finish(mut self) -> Result<()> {
        if let Some(sink) = self.sink.take() {
            sink.close()
                .map_err(|e| Error::io(self.path.display().to_string(), e))?;
        }
        self.sequence.finish(self.line)
    }

    /// Serialises `value` as the next line.
    fn put<T: serde::Serialize>(&mut self, value: &T) -> Result<()> {
        let Some(sink) = self.sink.as_mut() else {
            return Err(Error::FailedPrecondition(format!(
                "trace writer for {} is already finished",
                self.path.display()
            )));
        };
        let w = sink.writer();
        serde_json::to_writer(&mut *w, value)
            .map_err(io::Error::from)
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| Error::io(self.path.display().to_string(), e))?;
        self.line += 1;
        Ok(())
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if self.sink.is_some() {
            tracing::warn!(
                path = %self.path.display(),
                "trace writer dropped without finish(): the file may be incomplete"
            );
        }
    }
}
