//! The tree registry: tree ids → trees, with the tree-count and memory reservations.
//!
//! Each tree's mutable state sits behind its own `tokio::sync::Mutex`, so calls on one tree
//! are serialised while calls on different trees run in parallel. The registry's own map is
//! a short-held `std::sync::Mutex` that is never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::image::MemoryImage;
use crate::layout::MemoryLayout;
use crate::tree::{Backend, MemoryTree, MemoryUsage};

use super::limits::Limits;

/// Where a tree is in its life, behind the tree's mutex.
pub(crate) enum State {
    /// Created; the initial image is being written. The image is an `Arc` only so that a
    /// failed build can keep it; nothing else holds it.
    Created { image: Arc<MemoryImage> },
    /// Built; updates and openings are allowed.
    Built(Box<dyn MemoryTree>),
    /// Dropped while a call waited on the mutex.
    Dropped,
    /// A backend panicked mid-call; the tree's contents are unknown.
    Poisoned,
}

/// What `ListTrees` reports without taking the tree's mutex (a long build must not block
/// it); updated by every call that changes the tree.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Summary {
    /// The root once built.
    pub root: Option<Digest>,
    /// Update batches applied since the build.
    pub updates: u64,
    /// Bytes held, from the tree (or the image before the build).
    pub usage: MemoryUsage,
}

/// One tree: immutable facts, the mutable state, and its summary.
pub(crate) struct TreeHandle {
    pub id: String,
    /// The layout, both heights resolved.
    pub layout: MemoryLayout,
    /// The concrete backend (never `Auto`).
    pub backend: Backend,
    pub omitted_levels: u32,
    /// Bytes reserved against `max_total_bytes`.
    pub reserved_bytes: u64,
    pub state: Arc<tokio::sync::Mutex<State>>,
    summary: Mutex<Summary>,
}

/// Locks a std mutex, recovering from poison: every value guarded here is updated by a
/// single assignment, so a panicking holder cannot leave it half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TreeHandle {
    pub fn summary(&self) -> Summary {
        *lock(&self.summary)
    }

    pub fn set_summary(&self, s: Summary) {
        *lock(&self.summary) = s;
    }
}

#[derive(Default)]
struct Inner {
    trees: HashMap<String, Arc<TreeHandle>>,
    /// Trees counted against `max_trees`: live ones plus reservations in flight.
    reserved_trees: usize,
    /// Bytes counted against `max_total_bytes`.
    reserved_bytes: u64,
}

/// The server's trees and their reservations.
pub(crate) struct Registry {
    limits: Limits,
    inner: Mutex<Inner>,
}

/// A tree slot and bytes held against the limits until the tree is inserted; released on
/// drop otherwise (e.g. when allocating the image fails).
pub(crate) struct Reservation<'a> {
    registry: &'a Registry,
    bytes: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.registry.release(self.bytes);
        }
    }
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Registry {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Reserves one tree and `bytes` against the limits.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] naming `max_trees` or `max_total_bytes` and its value.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation<'_>> {
        let mut inner = lock(&self.inner);
        if inner.reserved_trees >= self.limits.max_trees {
            return Err(Error::ResourceExhausted(format!(
                "max_trees = {}: {} trees already exist; drop one first",
                self.limits.max_trees, inner.reserved_trees
            )));
        }
        let total = inner.reserved_bytes.saturating_add(bytes);
        if total > self.limits.max_total_bytes {
            return Err(Error::ResourceExhausted(format!(
                "max_total_bytes = {}: the tree needs {bytes} bytes and {} are already reserved",
                self.limits.max_total_bytes, inner.reserved_bytes
            )));
        }
        inner.reserved_trees += 1;
        inner.reserved_bytes = total;
        Ok(Reservation {
            registry: self,
            bytes,
            armed: true,
        })
    }

    fn release(&self, bytes: u64) {
        let mut inner = lock(&self.inner);
        inner.reserved_trees = inner.reserved_trees.saturating_sub(1);
        inner.reserved_bytes = inner.reserved_bytes.saturating_sub(bytes);
    }

    /// Adds a tree, turning its reservation into the tree's own.
    pub fn insert(&self, mut reservation: Reservation<'_>, tree: Arc<TreeHandle>) {
        reservation.armed = false;
        lock(&self.inner).trees.insert(tree.id.clone(), tree);
    }

    /// Builds a handle for a new tree in state `Created`.
    pub fn handle(
        id: String,
        layout: MemoryLayout,
        backend: Backend,
        omitted_levels: u32,
        reserved_bytes: u64,
        image: MemoryImage,
    ) -> Arc<TreeHandle> {
        let usage = MemoryUsage {
            host_raw_bytes: image.total_bytes(),
            ..MemoryUsage::default()
        };
        Arc::new(TreeHandle {
            id,
            layout,
            backend,
            omitted_levels,
            reserved_bytes,
            state: Arc::new(tokio::sync::Mutex::new(State::Created {
                image: Arc::new(image),
            })),
            summary: Mutex::new(Summary {
                usage,
                ..Summary::default()
            }),
        })
    }

    /// The tree named `id`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty id; [`Error::NotFound`] for an unknown one.
    pub fn get(&self, id: &str) -> Result<Arc<TreeHandle>> {
        if id.is_empty() {
            return Err(Error::invalid("tree_id", "empty"));
        }
        lock(&self.inner)
            .trees
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Removes the tree named `id` from the map (so new calls get `NOT_FOUND`), waits for a
    /// call in progress on it, frees it and releases its reservation. Returns the bytes
    /// released.
    ///
    /// # Errors
    /// As [`Registry::get`].
    pub async fn remove(&self, id: &str) -> Result<u64> {
        let tree = self.get(id)?;
        if lock(&self.inner).trees.remove(id).is_none() {
            // A concurrent DropTree removed it first.
            return Err(not_found(id));
        }
        // Calls already queued on the mutex find `Dropped`.
        let old = std::mem::replace(&mut *tree.state.lock().await, State::Dropped);
        // Freeing a large image unmaps many pages; keep it off the reactor, and release the
        // reservation only once the memory is back. A panic while dropping still releases.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        self.release(tree.reserved_bytes);
        Ok(tree.reserved_bytes)
    }

    /// Every tree, ordered by id.
    pub fn trees(&self) -> Vec<Arc<TreeHandle>> {
        let mut v: Vec<_> = lock(&self.inner).trees.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Bytes reserved over all trees.
    pub fn reserved_bytes(&self) -> u64 {
        lock(&self.inner).reserved_bytes
    }
}

/// The error for an unknown or dropped tree.
pub(crate) fn not_found(id: &str) -> Error {
    Error::NotFound(format!("tree_id {id:?}: no such tree"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_trees: usize, max_total_bytes: u64) -> Limits {
        Limits {
            max_trees,
            max_total_bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn reservations_count_and_release() {
        let r = Registry::new(limits(2, 100));
        let a = r.reserve(60).expect("first");
        let e = r.reserve(41).err().expect("over bytes");
        assert_eq!(
            e.to_string(),
            "resource exhausted: max_total_bytes = 100: the tree needs 41 bytes and 60 are \
             already reserved"
        );
        let b = r.reserve(40).expect("second");
        let e = r.reserve(0).err().expect("over trees");
        assert!(e.to_string().contains("max_trees = 2"), "{e}");
        drop(a);
        assert_eq!(r.reserved_bytes(), 40);
        drop(b);
        assert_eq!(r.reserved_bytes(), 0);
        r.reserve(100).expect("all released");
    }
}
