//! Trace files (JSON Lines, optionally zstd). Filled in by the trace work.
