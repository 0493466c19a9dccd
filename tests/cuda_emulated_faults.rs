//! `CudaTree`'s failure rules, on an emulated device that fails on demand: a batch whose
//! staging allocation fails leaves the tree unchanged; a launch failure marks the tree lost,
//! so later updates and openings answer `Unavailable` instead of a wrong root.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{four_spaces, image_with};
use memcommit::tree::cuda::{CudaTree, Device, DevicePtr, EmulatedDevice};
use memcommit::tree::{MemoryTree, TouchedBlock};
use memcommit::{Error, Result};

/// An emulated device whose allocations or launches fail while the flags are set.
#[derive(Default)]
struct Flaky {
    inner: Arc<EmulatedDevice>,
    fail_alloc: AtomicBool,
    fail_launch: AtomicBool,
}

impl Flaky {
    fn launch(&self) -> Result<()> {
        if self.fail_launch.load(Ordering::SeqCst) {
            Err(Error::Unavailable("injected launch failure".into()))
        } else {
            Ok(())
        }
    }
}

impl Device for Flaky {
    fn describe(&self) -> String {
        "flaky emulated device".into()
    }
    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        if self.fail_alloc.load(Ordering::SeqCst) {
            return Err(Error::ResourceExhausted("injected".into()));
        }
        self.inner.alloc(bytes)
    }
    unsafe fn free(&self, ptr: DevicePtr) {
        unsafe { self.inner.free(ptr) }
    }
    unsafe fn copy_to_device(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        unsafe { self.inner.copy_to_device(dst, src) }
    }
    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        unsafe { self.inner.copy_to_host(dst, src) }
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    unsafe fn zero_hashes(&self, zero: DevicePtr, count: u32) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.zero_hashes(zero, count) }
    }
    unsafe fn build_base(
        &self,
        raw: DevicePtr,
        cell: u32,
        levels: u32,
        out: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.build_base(raw, cell, levels, out, count) }
    }
    unsafe fn compress_level(&self, c: DevicePtr, p: DevicePtr, count: u64) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.compress_level(c, p, count) }
    }
    unsafe fn vertical(&self, n: DevicePtr, z: DevicePtr, t: DevicePtr, count: u64) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.vertical(n, z, t, count) }
    }
    unsafe fn scatter(&self, raw: DevicePtr, t: DevicePtr, count: u64) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.scatter(raw, t, count) }
    }
    unsafe fn hash_tasks(
        &self,
        r: DevicePtr,
        t: DevicePtr,
        count: u64,
        n: DevicePtr,
    ) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.hash_tasks(r, t, count, n) }
    }
    unsafe fn compress_pairs(&self, n: DevicePtr, t: DevicePtr, count: u64) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.compress_pairs(n, t, count) }
    }
    unsafe fn openings(
        &self,
        raw: DevicePtr,
        nodes: DevicePtr,
        zero: DevicePtr,
        tasks: DevicePtr,
        count: u64,
        top_offset: u64,
        address_height: u32,
        address_space_height: u32,
        out: DevicePtr,
    ) -> Result<()> {
        self.launch()?;
        unsafe {
            self.inner.openings(
                raw,
                nodes,
                zero,
                tasks,
                count,
                top_offset,
                address_height,
                address_space_height,
                out,
            )
        }
    }
}

fn batch() -> Vec<TouchedBlock> {
    vec![TouchedBlock {
        slot: 1,
        block: 17,
        cells: [5; 8],
    }]
}

#[test]
fn failed_staging_allocation_leaves_the_tree_unchanged() {
    let (layout, leaves, root) = four_spaces();
    let mut t = CudaTree::build(
        Flaky::default(),
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("build");
    let image = t.image().clone();
    t.device().fail_alloc.store(true, Ordering::SeqCst);
    let err = t.update(&batch()).expect_err("no memory for the batch");
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert_eq!(t.root(), root);
    assert_eq!(t.image(), &image);
    // The tree is still usable once memory is back.
    t.device().fail_alloc.store(false, Ordering::SeqCst);
    let new_root = t.update(&batch()).expect("update");
    assert_ne!(new_root, root);
    assert_eq!(
        t.device().inner.allocated_bytes(),
        (t.memory_usage().device_node_bytes + t.memory_usage().device_raw_bytes)
            .next_multiple_of(16),
        "staging buffers are freed after each call"
    );
}

#[test]
fn launch_failure_marks_the_tree_lost() {
    let (layout, leaves, root) = four_spaces();
    let mut t = CudaTree::build(
        Flaky::default(),
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("build");
    let image = t.image().clone();
    t.device().fail_launch.store(true, Ordering::SeqCst);
    assert!(matches!(t.update(&batch()), Err(Error::Unavailable(_))));
    assert_eq!(t.root(), root, "root stays the last good one");
    assert_eq!(
        t.image(),
        &image,
        "host raw memory is written only after success"
    );
    t.device().fail_launch.store(false, Ordering::SeqCst);
    assert!(matches!(t.update(&batch()), Err(Error::Unavailable(_))));
    assert!(matches!(t.openings(&[(0, 0)]), Err(Error::Unavailable(_))));
}

#[test]
fn failed_build_frees_its_buffers() {
    let (layout, leaves, _) = four_spaces();
    let device = Flaky::default();
    let inner = device.inner.clone();
    device.fail_launch.store(true, Ordering::SeqCst);
    let err = CudaTree::build(device, layout.clone(), image_with(&layout, &leaves), 3)
        .err()
        .expect("launch fails");
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert_eq!(inner.allocated_bytes(), 0);
}
