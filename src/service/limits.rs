//! Server limits: message size, tree count and reserved memory.

/// Default [`Limits::max_message_bytes`]: 256 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Default [`Limits::max_trees`].
pub const DEFAULT_MAX_TREES: usize = 64;
/// Default [`Limits::max_total_bytes`]: 16 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 16 << 30;

/// What one server accepts. Exceeding any limit returns `RESOURCE_EXHAUSTED` with a message
/// naming the limit and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request or response message, in bytes (tonic's max decoding and encoding
    /// sizes). A 1M-block `UpdateBlocks` request is 40 MB.
    pub max_message_bytes: usize,
    /// Most trees alive at once (created and not dropped).
    pub max_trees: usize,
    /// Most bytes reserved over all trees. `CreateTree` reserves the tree's estimate
    /// (`tree::node_bytes + MemoryLayout::raw_bytes`); `DropTree` releases it.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_trees: DEFAULT_MAX_TREES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}
