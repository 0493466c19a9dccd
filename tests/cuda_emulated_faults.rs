//! `CudaTree`'s failure rules, on an emulated device that fails on demand: a batch whose
//! device allocation (staging, or the bigger arrays for the pages it creates) fails leaves
//! the tree, its image and its pages unchanged and usable; a launch or copy failure marks the
//! tree lost, so later updates and openings answer `Unavailable` instead of a wrong root, and
//! still leaves root, image and pages as before the batch.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{four_spaces, image_with};
use memcommit::tree::cuda::{CudaTree, Device, DevicePtr, EmulatedDevice};
use memcommit::tree::{MemoryTree, TouchedBlock};
use memcommit::{Error, Result};

/// An emulated device whose allocations, launches or device-to-device copies fail on
/// demand.
#[derive(Default)]
struct Flaky {
    inner: Arc<EmulatedDevice>,
    fail_alloc: AtomicBool,
    /// Allocations of at least this many bytes fail (0: none).
    fail_alloc_from: AtomicU64,
    fail_launch: AtomicBool,
    fail_copy: AtomicBool,
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
        let from = self.fail_alloc_from.load(Ordering::SeqCst);
        if self.fail_alloc.load(Ordering::SeqCst) || (from > 0 && bytes >= from) {
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
    unsafe fn copy_device_to_device(&self, dst: DevicePtr, src: DevicePtr, n: u64) -> Result<()> {
        if self.fail_copy.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("injected copy failure".into()));
        }
        unsafe { self.inner.copy_device_to_device(dst, src, n) }
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
    unsafe fn fill_digests(&self, out: DevicePtr, value: DevicePtr, count: u64) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.fill_digests(out, value, count) }
    }
    unsafe fn scatter(
        &self,
        raw: DevicePtr,
        t: DevicePtr,
        bytes: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.scatter(raw, t, bytes, count) }
    }
    #[allow(clippy::too_many_arguments)]
    unsafe fn hash_tasks(
        &self,
        r: DevicePtr,
        f: DevicePtr,
        n: DevicePtr,
        t: DevicePtr,
        count: u64,
        threads: u64,
        levels: u32,
    ) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.hash_tasks(r, f, n, t, count, threads, levels) }
    }
    unsafe fn fused(&self, a: &memcommit::tree::cuda::FusedArgs) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.fused(a) }
    }
    unsafe fn page_round(
        &self,
        n: DevicePtr,
        s: DevicePtr,
        l: DevicePtr,
        count: u64,
        step: u32,
    ) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.page_round(n, s, l, count, step) }
    }
    unsafe fn compress_pairs(
        &self,
        c: DevicePtr,
        p: DevicePtr,
        t: DevicePtr,
        count: u64,
    ) -> Result<()> {
        self.launch()?;
        unsafe { self.inner.compress_pairs(c, p, t, count) }
    }
    unsafe fn openings(
        &self,
        nodes: DevicePtr,
        fold: DevicePtr,
        zero: DevicePtr,
        tasks: DevicePtr,
        listed: DevicePtr,
        count: u64,
        top_offset: u64,
        address_height: u32,
        address_space_height: u32,
        out: DevicePtr,
    ) -> Result<()> {
        self.launch()?;
        unsafe {
            self.inner.openings(
                nodes,
                fold,
                zero,
                tasks,
                listed,
                count,
                top_offset,
                address_height,
                address_space_height,
                out,
            )
        }
    }
}

/// Block 17 of slot 1 lies in its page 0, absent in the `four_spaces` image (only block
/// 1023, in page 1, is written there): the batch creates a page.
fn batch() -> Vec<TouchedBlock> {
    vec![TouchedBlock {
        slot: 1,
        block: 17,
        cells: [5; 8],
    }]
}

/// A batch in present pages only (slot 1's page 1, slot 0's only page): no growth.
fn batch_in_present_pages() -> Vec<TouchedBlock> {
    vec![
        TouchedBlock {
            slot: 1,
            block: 600,
            cells: [7; 8],
        },
        TouchedBlock {
            slot: 0,
            block: 3,
            cells: [9; 8],
        },
    ]
}

fn flaky_tree() -> CudaTree<Flaky> {
    let (layout, leaves, _) = four_spaces();
    CudaTree::build(
        Flaky::default(),
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("build")
}

/// Device bytes the tree holds equal what the emulator has allocated: no scratch outlives a
/// call, and a move to bigger arrays freed the old ones.
fn assert_only_the_arrays_are_allocated(t: &CudaTree<Flaky>) {
    let usage = t.memory_usage();
    assert_eq!(
        t.device().inner.allocated_bytes(),
        usage.device_node_bytes + usage.device_raw_bytes.next_multiple_of(16)
    );
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
    assert_only_the_arrays_are_allocated(&t);
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
    assert_eq!(t.image(), &image, "the host image write is undone");
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

#[test]
fn growth_allocation_failure_leaves_tree_image_and_pages_unchanged() {
    let (_, _, root) = four_spaces();
    let mut t = flaky_tree();
    let image = t.image().clone();
    let usage = t.memory_usage();
    // The batch needs a bigger node array (and raw array); the small staging lists still fit.
    t.device().fail_alloc_from.store(
        usage.device_raw_bytes.min(usage.device_node_bytes),
        Ordering::SeqCst,
    );
    let err = t.update(&batch()).expect_err("no memory for the new page");
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert_eq!(t.root(), root);
    assert_eq!(t.image(), &image);
    assert_eq!(t.image().present_pages(1), 1, "the page is not created");
    assert_eq!(t.memory_usage(), usage);
    assert_only_the_arrays_are_allocated(&t);
    // Usable once memory is back, and equal to a tree built over the new image.
    t.device().fail_alloc_from.store(0, Ordering::SeqCst);
    let new_root = t.update(&batch()).expect("update");
    assert_eq!(t.image().present_pages(1), 2);
    let (layout, _, _) = four_spaces();
    let fresh = CudaTree::build(Flaky::default(), layout, t.image().clone(), 3).expect("build");
    assert_eq!(new_root, fresh.root());
    assert_only_the_arrays_are_allocated(&t);
}

#[test]
fn a_failed_device_part_leaves_root_image_and_pages_as_before() {
    let (_, _, root) = four_spaces();
    for fail in ["launch", "copy"] {
        for (name, b) in [
            ("creating", batch()),
            ("in place", batch_in_present_pages()),
        ] {
            if fail == "copy" && name == "in place" {
                continue; // nothing is copied device to device without growth
            }
            let mut t = flaky_tree();
            let image = t.image().clone();
            let pages = image.total_pages();
            let flag = match fail {
                "launch" => &t.device().fail_launch,
                _ => &t.device().fail_copy,
            };
            flag.store(true, Ordering::SeqCst);
            let err = t.update(&b).expect_err("device failure");
            assert!(matches!(err, Error::Unavailable(_)), "{fail} {name}: {err}");
            assert_eq!(t.root(), root, "{fail} {name}");
            assert_eq!(t.image(), &image, "{fail} {name}");
            assert_eq!(t.image().total_pages(), pages, "{fail} {name}");
            // The tree is lost, and keeps only arrays it owns (the batch's are freed).
            assert!(matches!(t.update(&b), Err(Error::Unavailable(_))));
            assert_only_the_arrays_are_allocated(&t);
        }
    }
}

/// Runs one `compress_pairs` launch on `device` over a node array starting as `nodes`
/// (8 words a digest), tasks `(parent, left, right)`; returns the array afterwards.
fn pair_launch(device: &EmulatedDevice, nodes: &[u32], tasks: &[[u64; 3]]) -> Result<Vec<u32>> {
    let node_bytes: Vec<u8> = nodes.iter().flat_map(|w| w.to_le_bytes()).collect();
    let task_bytes: Vec<u8> = tasks
        .iter()
        .flatten()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let n = device.alloc(node_bytes.len() as u64)?;
    let t = device.alloc(task_bytes.len() as u64)?;
    let mut out = vec![0u8; node_bytes.len()];
    // SAFETY: both buffers were just allocated with these sizes; the launch's own checks
    // are what the callers test.
    let run = unsafe {
        device
            .copy_to_device(n, &node_bytes)
            .and_then(|()| device.copy_to_device(t, &task_bytes))
            .and_then(|()| device.compress_pairs(n, n, t, tasks.len() as u64))
            .and_then(|()| device.copy_to_host(&mut out, n))
    };
    // SAFETY: allocated above, not used again.
    unsafe {
        device.free(n);
        device.free(t);
    }
    run?;
    Ok(out
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Nodes 0 and 1 hold distinct digests, 2 and 3 zero words.
fn four_nodes() -> Vec<u32> {
    (0..32).map(|i| if i < 16 { i + 1 } else { 0 }).collect()
}

#[test]
fn the_emulator_runs_a_launchs_threads_in_a_seeded_shuffled_order() {
    let device = EmulatedDevice::with_seed(7);
    assert_eq!(device.seed(), 7);
    // What each order of two dependent tasks (t0: 2 = c(0, 1); t1: 3 = c(2, 2)) gives,
    // from one-task launches.
    let after_t0 = pair_launch(&device, &four_nodes(), &[[2, 0, 1]]).expect("t0");
    let in_order = pair_launch(&device, &after_t0, &[[3, 2, 2]]).expect("t1 after t0");
    let stale = pair_launch(&device, &four_nodes(), &[[3, 2, 2]]).expect("t1 first");
    let (fresh, old) = (&in_order[24..32], &stale[24..32]);
    assert_ne!(fresh, old);
    let mut seen = [false; 2];
    for seed in 0..32 {
        let device = EmulatedDevice::with_seed(seed);
        let got = pair_launch(&device, &four_nodes(), &[[2, 0, 1], [3, 2, 2]]).expect("both");
        assert_eq!(got[16..24], after_t0[16..24], "seed {seed}");
        if &got[24..32] == fresh {
            seen[0] = true;
        } else {
            assert_eq!(&got[24..32], old, "seed {seed}");
            seen[1] = true;
        }
        // The same seed gives the same order.
        let again = pair_launch(
            &EmulatedDevice::with_seed(seed),
            &four_nodes(),
            &[[2, 0, 1], [3, 2, 2]],
        );
        assert_eq!(again.expect("again"), got, "seed {seed}");
    }
    assert_eq!(seen, [true, true], "both orders of the two threads occur");
}

#[test]
fn the_emulator_fails_a_launch_whose_thread_reaches_outside_its_allocation() {
    let device = EmulatedDevice::with_seed(1);
    // Four digests: node 3 is the last inside, node 4 the first outside; u64::MAX also
    // checks that the byte offset cannot wrap.
    for task in [
        [4, 0, 1],
        [2, 0, 4],
        [2, 4, 1],
        [2, 0, u64::MAX],
        [u64::MAX, 0, 1],
    ] {
        let err =
            pair_launch(&device, &four_nodes(), &[[3, 0, 1], task]).expect_err("out of bounds");
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("outside its allocation"), "{text}");
        assert!(text.contains("MEMCOMMIT_EMU_SEED=1"), "{text}");
    }
    let inside = pair_launch(&device, &four_nodes(), &[[3, 0, 1]]).expect("inside");
    assert_ne!(inside[24..32], [0; 8]);
}
