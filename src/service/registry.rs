//! The tree registry: tree ids → trees, with the tree-count and memory reservations.
//!
//! A tree's reservation follows its present pages: `CreateTree` reserves the empty tree,
//! `WriteMemory` and `UpdateBlocks` grow it before writing pages that were absent
//! ([`Registry::resize`]), and `BuildTree` sets it to the built tree's exact need.
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

use super::limits::{Limits, MemoryEstimate};
use super::proto;

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
    /// Present pages of the image.
    pub pages: u64,
    /// `omitted_levels`: the tree's k once built; before that the requested k, or for
    /// `auto_omitted_levels` the provisional [`crate::tree::DEFAULT_OMITTED_LEVELS`] that
    /// reservations use until `BuildTree` chooses k from the present pages.
    pub omitted_levels: u32,
}

/// One tree: immutable facts, the mutable state, and its summary.
pub(crate) struct TreeHandle {
    pub id: String,
    /// The layout, both heights resolved.
    pub layout: MemoryLayout,
    /// The concrete backend (never `Auto`).
    pub backend: Backend,
    /// Whether the server chooses `omitted_levels` (`auto_omitted_levels`), at `BuildTree`.
    pub omitted_levels_auto: bool,
    /// `auto_omitted_levels`' budget from the request, if it gave one.
    pub memory_budget: Option<u64>,
    /// Bytes reserved against the memory limits; changed only under the registry's lock.
    reserved: Mutex<MemoryEstimate>,
    pub state: Arc<tokio::sync::Mutex<State>>,
    summary: Mutex<Summary>,
    /// The last batch `UpdateBlocks` applied, for recognising its retry; written under the
    /// state's mutex.
    last_batch: Mutex<Option<LastBatch>>,
}

/// What the server remembers of a tree's last applied batch: enough to recognise a retry
/// of it (`UpdateBlocks.expected_old_root`) and answer it without applying it twice.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LastBatch {
    /// A hash of the batch's packed columns as they came on the wire.
    pub contents: [u8; 32],
    /// The root before and after it.
    pub old_root: Digest,
    pub new_root: Digest,
    /// Its witness on the wire, when the call asked for one: a retry's reply carries it
    /// again (the columns are shared, not copied). At most one reply's worth of bytes.
    pub witness: Option<proto::Witness>,
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

    /// Bytes reserved against the limits now.
    pub fn reserved(&self) -> MemoryEstimate {
        *lock(&self.reserved)
    }

    /// The last batch applied, if any since the build.
    pub fn last_batch(&self) -> Option<LastBatch> {
        lock(&self.last_batch).clone()
    }

    pub fn set_last_batch(&self, b: Option<LastBatch>) {
        *lock(&self.last_batch) = b;
    }
}

#[derive(Default)]
struct Inner {
    trees: HashMap<String, Arc<TreeHandle>>,
    /// Trees counted against `max_trees`: live ones plus reservations in flight.
    reserved_trees: usize,
    /// Bytes counted against `max_host_bytes` and `max_device_bytes`.
    reserved: MemoryEstimate,
}

/// The server's trees and their reservations.
pub(crate) struct Registry {
    limits: Limits,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("trees", &self.len())
            .finish_non_exhaustive()
    }
}

/// A tree slot and bytes held against the limits until the tree is inserted; released on
/// drop otherwise (e.g. when allocating the image fails).
pub(crate) struct Reservation<'a> {
    registry: &'a Registry,
    bytes: MemoryEstimate,
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
    /// [`Error::ResourceExhausted`] naming `max_tree_bytes`, `max_trees`, `max_host_bytes`
    /// or `max_device_bytes` and its value.
    pub fn reserve(&self, bytes: MemoryEstimate) -> Result<Reservation<'_>> {
        self.limits.check_tree(&bytes)?;
        let mut inner = lock(&self.inner);
        if inner.reserved_trees >= self.limits.max_trees {
            return Err(Error::ResourceExhausted(format!(
                "max_trees = {}: {} trees already exist; drop one first",
                self.limits.max_trees, inner.reserved_trees
            )));
        }
        inner.reserved = self.add_checked(inner.reserved, bytes, "the tree needs")?;
        inner.reserved_trees += 1;
        Ok(Reservation {
            registry: self,
            bytes,
            armed: true,
        })
    }

    /// `reserved + more`, or the error naming the server-wide limit it would pass; `needs`
    /// says who asks (e.g. `the tree needs`).
    fn add_checked(
        &self,
        reserved: MemoryEstimate,
        more: MemoryEstimate,
        needs: &str,
    ) -> Result<MemoryEstimate> {
        let host = reserved.host_bytes.saturating_add(more.host_bytes);
        if host > self.limits.max_host_bytes {
            return Err(Error::ResourceExhausted(format!(
                "max_host_bytes = {}: {needs} {} host bytes and {} are already reserved",
                self.limits.max_host_bytes, more.host_bytes, reserved.host_bytes
            )));
        }
        let device = reserved.device_bytes.saturating_add(more.device_bytes);
        if device > self.limits.max_device_bytes {
            return Err(Error::ResourceExhausted(format!(
                "max_device_bytes = {}: {needs} {} device bytes and {} are already reserved",
                self.limits.max_device_bytes, more.device_bytes, reserved.device_bytes
            )));
        }
        Ok(MemoryEstimate {
            host_bytes: host,
            device_bytes: device,
        })
    }

    /// Sets tree `t`'s reservation to `bytes`: a decrease always succeeds; an increase is
    /// checked against `max_tree_bytes`, `max_host_bytes` and `max_device_bytes` first.
    /// `what` names the cause in the error (e.g. `3 new pages`); an error reads
    /// `max_host_bytes = N: tree ID (3 new pages) needs B host bytes and R are already
    /// reserved`.
    ///
    /// # Errors
    /// [`Error::ResourceExhausted`] naming the limit and its value; nothing changes then.
    pub fn resize(&self, t: &TreeHandle, bytes: MemoryEstimate, what: &str) -> Result<()> {
        self.adjust(t, |_| bytes, what)
    }

    /// Grows tree `t`'s reservation by `extra`, checked as [`Registry::resize`].
    ///
    /// # Errors
    /// As [`Registry::resize`].
    pub fn grow(&self, t: &TreeHandle, extra: MemoryEstimate, what: &str) -> Result<()> {
        self.adjust(t, |r| r.plus(extra), what)
    }

    /// Shrinks tree `t`'s reservation by `less` (never below zero).
    pub fn shrink(&self, t: &TreeHandle, less: MemoryEstimate) {
        // A decrease always succeeds.
        let _ = self.adjust(t, |r| r.minus(less), "a release");
    }

    /// Sets tree `t`'s reservation to `to(its reservation now)`, both read and written
    /// under the registry's lock, so concurrent changes to one tree compose.
    fn adjust(
        &self,
        t: &TreeHandle,
        to: impl FnOnce(MemoryEstimate) -> MemoryEstimate,
        what: &str,
    ) -> Result<()> {
        let mut inner = lock(&self.inner);
        let mut reserved = lock(&t.reserved);
        let bytes = to(*reserved);
        let extra = bytes.minus(*reserved);
        if extra.total() > 0 {
            if bytes.total() > self.limits.max_tree_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "max_tree_bytes = {}: tree {} ({what}) would need {} bytes ({} host, {} \
                     device)",
                    self.limits.max_tree_bytes,
                    t.id,
                    bytes.total(),
                    bytes.host_bytes,
                    bytes.device_bytes
                )));
            }
            self.add_checked(
                inner.reserved,
                extra,
                &format!("tree {} ({what}) needs", t.id),
            )?;
        }
        inner.reserved = inner.reserved.minus(*reserved).plus(bytes);
        *reserved = bytes;
        Ok(())
    }

    fn release(&self, bytes: MemoryEstimate) {
        let mut inner = lock(&self.inner);
        inner.reserved_trees = inner.reserved_trees.saturating_sub(1);
        inner.reserved.host_bytes = inner.reserved.host_bytes.saturating_sub(bytes.host_bytes);
        inner.reserved.device_bytes = inner
            .reserved
            .device_bytes
            .saturating_sub(bytes.device_bytes);
    }

    /// Adds a tree, turning its reservation into the tree's own.
    pub fn insert(&self, mut reservation: Reservation<'_>, tree: Arc<TreeHandle>) {
        reservation.armed = false;
        lock(&self.inner).trees.insert(tree.id.clone(), tree);
    }

    /// Builds a handle for a new tree in state `Created`, with `omitted_levels` (the
    /// provisional k under `auto`) and `auto`'s budget when `auto` is `Some`.
    pub fn handle(
        id: String,
        layout: MemoryLayout,
        backend: Backend,
        (omitted_levels, auto): (u32, Option<Option<u64>>),
        reserved: MemoryEstimate,
        image: MemoryImage,
    ) -> Arc<TreeHandle> {
        let usage = MemoryUsage {
            host_raw_bytes: image.total_bytes(),
            ..MemoryUsage::default()
        };
        let image_pages = image.total_pages();
        Arc::new(TreeHandle {
            id,
            layout,
            backend,
            omitted_levels_auto: auto.is_some(),
            memory_budget: auto.flatten(),
            reserved: Mutex::new(reserved),
            state: Arc::new(tokio::sync::Mutex::new(State::Created {
                image: Arc::new(image),
            })),
            summary: Mutex::new(Summary {
                usage,
                pages: image_pages,
                omitted_levels,
                ..Summary::default()
            }),
            last_batch: Mutex::new(None),
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
        let reserved = tree.reserved();
        self.release(reserved);
        Ok(reserved.total())
    }

    /// Every tree, ordered by id.
    pub fn trees(&self) -> Vec<Arc<TreeHandle>> {
        let mut v: Vec<_> = lock(&self.inner).trees.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Bytes reserved over all trees, host and device together.
    pub fn reserved_bytes(&self) -> u64 {
        lock(&self.inner).reserved.total()
    }

    /// Bytes reserved over all trees, host and device apart.
    pub fn reserved(&self) -> MemoryEstimate {
        lock(&self.inner).reserved
    }

    /// Trees alive (inserted and not removed).
    pub fn len(&self) -> usize {
        lock(&self.inner).trees.len()
    }

    /// Present pages over all trees, from their summaries.
    pub fn pages(&self) -> u64 {
        let trees: Vec<_> = lock(&self.inner).trees.values().cloned().collect();
        trees.iter().map(|t| t.summary().pages).sum()
    }

    /// The bytes all trees hold, from their summaries, as `GetServerInfo` adds them up.
    pub fn used(&self) -> MemoryUsage {
        let trees: Vec<_> = lock(&self.inner).trees.values().cloned().collect();
        trees
            .iter()
            .map(|t| t.summary().usage)
            .fold(MemoryUsage::default(), |a, u| MemoryUsage {
                host_node_bytes: a.host_node_bytes + u.host_node_bytes,
                host_raw_bytes: a.host_raw_bytes + u.host_raw_bytes,
                device_node_bytes: a.device_node_bytes + u.device_node_bytes,
                device_raw_bytes: a.device_raw_bytes + u.device_raw_bytes,
            })
    }
}

/// The error for an unknown or dropped tree.
pub(crate) fn not_found(id: &str) -> Error {
    Error::NotFound(format!("tree_id {id:?}: no such tree"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_trees: usize, max_host_bytes: u64) -> Limits {
        Limits {
            max_trees,
            max_host_bytes,
            max_device_bytes: 50,
            max_tree_bytes: 120,
            ..Limits::default()
        }
    }

    fn host(bytes: u64) -> MemoryEstimate {
        MemoryEstimate {
            host_bytes: bytes,
            device_bytes: 0,
        }
    }

    fn device(bytes: u64) -> MemoryEstimate {
        MemoryEstimate {
            host_bytes: 0,
            device_bytes: bytes,
        }
    }

    #[test]
    fn reservations_count_and_release() {
        let r = Registry::new(limits(2, 100));
        let a = r.reserve(host(60)).expect("first");
        let e = r.reserve(host(41)).err().expect("over bytes");
        assert_eq!(
            e.to_string(),
            "resource exhausted: max_host_bytes = 100: the tree needs 41 host bytes and 60 are \
             already reserved"
        );
        let b = r.reserve(host(40)).expect("second");
        let e = r.reserve(host(0)).err().expect("over trees");
        assert!(e.to_string().contains("max_trees = 2"), "{e}");
        drop(a);
        assert_eq!(r.reserved_bytes(), 40);
        drop(b);
        assert_eq!(r.reserved_bytes(), 0);
        r.reserve(host(100)).expect("all released");
    }

    #[test]
    fn device_bytes_are_counted_apart() {
        let r = Registry::new(limits(4, 100));
        let a = r.reserve(device(30)).expect("device");
        let e = r.reserve(device(21)).err().expect("over device bytes");
        assert_eq!(
            e.to_string(),
            "resource exhausted: max_device_bytes = 50: the tree needs 21 device bytes and 30 \
             are already reserved"
        );
        // Host bytes are a separate budget.
        let b = r.reserve(host(100)).expect("host");
        assert_eq!(r.reserved_bytes(), 130);
        let e = r
            .reserve(MemoryEstimate {
                host_bytes: 0,
                device_bytes: 121,
            })
            .err()
            .expect("over one tree's bytes");
        assert!(e.to_string().contains("max_tree_bytes = 120"), "{e}");
        drop((a, b));
        assert_eq!(r.reserved_bytes(), 0);
    }
}
