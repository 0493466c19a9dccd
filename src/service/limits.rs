//! Server limits: trees, memory per tree and in total (host and device), batch size,
//! message size, and the per-request timeout.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::tree::Backend;

/// Default [`Limits::max_message_bytes`]: 256 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Default [`Limits::max_trees`].
pub const DEFAULT_MAX_TREES: usize = 64;
/// Default [`Limits::max_host_bytes`]: 16 GiB.
pub const DEFAULT_MAX_HOST_BYTES: u64 = 16 << 30;
/// The old name of [`DEFAULT_MAX_HOST_BYTES`] (the limit was `max_total_bytes`).
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = DEFAULT_MAX_HOST_BYTES;
/// Default [`Limits::max_device_bytes`]: 16 GiB.
pub const DEFAULT_MAX_DEVICE_BYTES: u64 = 16 << 30;
/// Default [`Limits::max_tree_bytes`]: 16 GiB, so by default one tree may take the whole
/// host budget.
pub const DEFAULT_MAX_TREE_BYTES: u64 = 16 << 30;
/// Default [`Limits::max_blocks_per_batch`]: 2^22 (4,194,304) blocks, a 160 MiB request.
pub const DEFAULT_MAX_BLOCKS_PER_BATCH: usize = 1 << 22;
/// Default [`Limits::request_timeout`]: 60 s.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What one server accepts. Exceeding a limit returns `RESOURCE_EXHAUSTED` (the timeout:
/// `DEADLINE_EXCEEDED`) with a message naming the limit and its value, e.g.
/// `max_blocks_per_batch = 1000: batch has 1001 blocks`. Nothing changes on the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request or response message, in bytes (tonic's max decoding and encoding
    /// sizes). A 1M-block `UpdateBlocks` request is 40 MB.
    pub max_message_bytes: usize,
    /// Most trees alive at once (created and not dropped).
    pub max_trees: usize,
    /// Most bytes one tree may reserve, host and device together ([`MemoryEstimate`]).
    pub max_tree_bytes: u64,
    /// Most host bytes reserved over all trees. A tree reserves its host estimate
    /// ([`MemoryEstimate`]) as its pages appear; `DropTree` releases it. Formerly
    /// `max_total_bytes`.
    pub max_host_bytes: u64,
    /// Most device bytes reserved over all trees, as for `max_host_bytes` (CPU trees
    /// reserve none).
    pub max_device_bytes: u64,
    /// Most blocks in one `UpdateBlocks` batch, and most positions in one `GetOpenings`;
    /// checked from the packed column lengths before the blocks are decoded.
    pub max_blocks_per_batch: usize,
    /// How long a call may wait before its work starts: for the tree's lock and, for
    /// `UpdateBlocks`, the decode of its batch. Work that has started (a build, a batch
    /// being applied, a `WriteMemory` chunk being written) is never cut off, so a batch is
    /// applied whole or not at all. `None`: no limit.
    pub request_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_trees: DEFAULT_MAX_TREES,
            max_tree_bytes: DEFAULT_MAX_TREE_BYTES,
            max_host_bytes: DEFAULT_MAX_HOST_BYTES,
            max_device_bytes: DEFAULT_MAX_DEVICE_BYTES,
            max_blocks_per_batch: DEFAULT_MAX_BLOCKS_PER_BATCH,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }
}

/// The bytes a tree reserves, split by where they live: at `CreateTree` the empty tree's,
/// growing as pages are written, and at `BuildTree` the built tree's exact need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Host bytes (stored digests and raw memory of CPU trees).
    pub host_bytes: u64,
    /// Device bytes (0 for CPU trees; the device backend reports its own).
    pub device_bytes: u64,
}

impl MemoryEstimate {
    /// Host and device bytes together.
    pub fn total(&self) -> u64 {
        self.host_bytes.saturating_add(self.device_bytes)
    }

    /// `self` less `other`, part by part, never below zero.
    pub fn minus(self, other: MemoryEstimate) -> MemoryEstimate {
        MemoryEstimate {
            host_bytes: self.host_bytes.saturating_sub(other.host_bytes),
            device_bytes: self.device_bytes.saturating_sub(other.device_bytes),
        }
    }

    /// `self` and `other` added up, part by part.
    pub fn plus(self, other: MemoryEstimate) -> MemoryEstimate {
        MemoryEstimate {
            host_bytes: self.host_bytes.saturating_add(other.host_bytes),
            device_bytes: self.device_bytes.saturating_add(other.device_bytes),
        }
    }
}

impl Limits {
    /// Refuses a batch of `n` entries (`what`: `blocks` or `positions`) over
    /// `max_blocks_per_batch`.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] naming `max_blocks_per_batch` and its value.
    pub fn check_batch(&self, n: usize, what: &str) -> Result<()> {
        if n > self.max_blocks_per_batch {
            return Err(Error::ResourceExhausted(format!(
                "max_blocks_per_batch = {}: batch has {n} {what}",
                self.max_blocks_per_batch
            )));
        }
        Ok(())
    }

    /// Refuses a tree whose estimate exceeds `max_tree_bytes`.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] naming `max_tree_bytes` and its value.
    pub fn check_tree(&self, e: &MemoryEstimate) -> Result<()> {
        if e.total() > self.max_tree_bytes {
            return Err(Error::ResourceExhausted(format!(
                "max_tree_bytes = {}: the tree needs {} bytes ({} host, {} device)",
                self.max_tree_bytes,
                e.total(),
                e.host_bytes,
                e.device_bytes
            )));
        }
        Ok(())
    }
}

/// What a new tree on `backend` reserves, from its stored-digest and raw-memory bytes:
/// everything on the host for CPU and reference trees; for the device tree the split of
/// `CudaTree::memory_usage` (digests and a raw copy on the device, the image on the host).
pub(crate) fn estimate(backend: Backend, node_bytes: u64, raw_bytes: u64) -> MemoryEstimate {
    match backend {
        Backend::Cuda => MemoryEstimate {
            host_bytes: raw_bytes,
            device_bytes: node_bytes.saturating_add(raw_bytes),
        },
        Backend::Auto | Backend::Cpu | Backend::Reference => MemoryEstimate {
            host_bytes: node_bytes.saturating_add(raw_bytes),
            device_bytes: 0,
        },
    }
}

/// `request_timeout` as it appears in messages: `250 ms`, `60 s`.
pub(crate) fn timeout_text(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_and_tree_checks_name_the_limit() {
        let l = Limits {
            max_blocks_per_batch: 1000,
            max_tree_bytes: 100,
            ..Limits::default()
        };
        l.check_batch(1000, "blocks").expect("at the limit");
        assert_eq!(
            l.check_batch(1001, "blocks").unwrap_err().to_string(),
            "resource exhausted: max_blocks_per_batch = 1000: batch has 1001 blocks"
        );
        let e = MemoryEstimate {
            host_bytes: 60,
            device_bytes: 41,
        };
        assert_eq!(
            l.check_tree(&e).unwrap_err().to_string(),
            "resource exhausted: max_tree_bytes = 100: the tree needs 101 bytes (60 host, 41 \
             device)"
        );
        assert_eq!(timeout_text(Duration::from_millis(250)), "250 ms");
        assert_eq!(timeout_text(Duration::from_secs(60)), "60 s");
    }
}
