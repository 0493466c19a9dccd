//! `CudaTree`'s failure rules, on an emulated device that fails on demand: a batch whose
//! device allocation (staging, or the bigger arrays for the pages it creates) fails leaves
//! the tree, its image and its pages unchanged and usable; a launch or copy failure marks the
//! tree lost, so later updates and openings answer `Unavailable` instead of a wrong root, and
//! still leaves root, image and pages as before the batch.
//!
//! Also: sticky device faults on a context shared by several trees (every tree answers
//! `Unavailable` naming the fault and the tree that caused it; the process-wide context's
//! fault reaches the probe, `auto` and `GetServerInfo`), and the host-staging rules (every
//! allocation of a call before its first upload, no call returning with a copy pending,
//! the emulator catching a source changed or freed under a pending copy).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{four_spaces, image_with};
use memcommit::tree::cuda::{
    context_health, probe_device, CudaTree, Device, DevicePtr, EmulatedContext, EmulatedDevice,
};
use memcommit::tree::{Backend, MemoryTree, TouchedBlock};
use memcommit::{Error, Result};

/// An emulated device whose allocations, launches or device-to-device copies fail on
/// demand, and which logs its allocations, uploads and waits.
#[derive(Default)]
struct Flaky {
    inner: Arc<EmulatedDevice>,
    fail_alloc: AtomicBool,
    /// Allocations of at least this many bytes fail (0: none).
    fail_alloc_from: AtomicU64,
    fail_launch: AtomicBool,
    /// Launches after this many more fail (0: none; counts down).
    fail_launch_after: AtomicU64,
    fail_copy: AtomicBool,
    /// Launch calls so far.
    launches: AtomicU64,
    /// `alloc`, `upload` and `wait`, in call order.
    events: Mutex<Vec<&'static str>>,
}

impl Flaky {
    fn launch(&self) -> Result<()> {
        self.launches.fetch_add(1, Ordering::SeqCst);
        let after = self.fail_launch_after.load(Ordering::SeqCst);
        if after == 1 {
            self.fail_launch.store(true, Ordering::SeqCst);
        }
        if after > 0 {
            self.fail_launch_after.store(after - 1, Ordering::SeqCst);
        }
        if self.fail_launch.load(Ordering::SeqCst) {
            Err(Error::Unavailable("injected launch failure".into()))
        } else {
            Ok(())
        }
    }

    fn log(&self, event: &'static str) {
        self.events.lock().unwrap().push(event);
    }

    /// The events since the last call of this, clearing them.
    fn take_events(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

impl Device for Flaky {
    fn describe(&self) -> String {
        "flaky emulated device".into()
    }
    fn alloc(&self, bytes: u64) -> Result<DevicePtr> {
        self.log("alloc");
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
        self.log("upload");
        unsafe { self.inner.copy_to_device(dst, src) }
    }
    unsafe fn copy_device_to_device(&self, dst: DevicePtr, src: DevicePtr, n: u64) -> Result<()> {
        if self.fail_copy.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("injected copy failure".into()));
        }
        unsafe { self.inner.copy_device_to_device(dst, src, n) }
    }
    unsafe fn copy_to_host(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.log("wait");
        unsafe { self.inner.copy_to_host(dst, src) }
    }
    fn synchronize(&self) -> Result<()> {
        self.log("wait");
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

/// A four-spaces tree on `context`, its device labelled `label`.
fn tree_on(context: &EmulatedContext, label: &str) -> CudaTree<EmulatedDevice> {
    let (layout, leaves, root) = four_spaces();
    let t = CudaTree::build(
        EmulatedDevice::on_context(context).labelled(label),
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("build");
    assert_eq!(t.root(), root);
    t
}

/// The text of an `Unavailable` error; panics on any other.
fn unavailable(e: Error) -> String {
    match e {
        Error::Unavailable(m) => m,
        other => panic!("expected Unavailable, got {other}"),
    }
}

/// `text` contains every needle.
fn assert_names(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} not in {text:?}");
    }
}

#[test]
fn a_sticky_fault_in_one_trees_call_makes_every_tree_on_the_context_unavailable() {
    let (layout, leaves, root) = four_spaces();
    let context = EmulatedContext::new();
    let mut a = tree_on(&context, "tree a");
    let mut b = tree_on(&context, "tree b");
    let (image_a, image_b) = (a.image().clone(), b.image().clone());
    a.device().inject_sticky_fault(700).expect("700 is sticky");
    let ea = unavailable(a.update(&batch()).expect_err("the fault fails a's batch"));
    assert_names(
        &ea,
        &["CUDA_ERROR_ILLEGAL_ADDRESS", "caused by work of tree a"],
    );
    assert_eq!((a.root(), a.image()), (root, &image_a));
    // The innocent tree: the same fault, blamed on tree a; its root and image are intact.
    for e in [
        b.update(&batch_in_present_pages())
            .expect_err("b after the fault"),
        b.update(&batch()).expect_err("b again"),
        b.openings(&[(0, 3)]).expect_err("b's openings"),
    ] {
        let eb = unavailable(e);
        assert_names(
            &eb,
            &[
                "unusable since CUDA_ERROR_ILLEGAL_ADDRESS",
                "of tree a",
                "not caused by tree b",
            ],
        );
    }
    assert_eq!((b.root(), b.image()), (root, &image_b));
    assert_eq!(b.image().as_ref(), image_with(&layout, &leaves).as_ref());
    // The guilty tree keeps saying so.
    let again = unavailable(a.openings(&[(0, 3)]).expect_err("a is lost"));
    assert_names(&again, &["caused by work of tree a"]);
    // The fault as recorded: observed by a, with a alone in flight.
    let fault = context.health().fault().expect("recorded");
    assert_eq!(fault.observed_by, "tree a");
    assert_eq!(fault.suspects.len(), 1);
    assert_eq!(fault.suspects[0].label, "tree a");
    assert!(
        fault.suspects[0].work.contains(&"copy_to_device"),
        "{fault:?}"
    );
    // A new tree on the context is refused, naming the fault too.
    let ec = CudaTree::build(
        EmulatedDevice::on_context(&context).labelled("tree c"),
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .err()
    .expect("no new tree on a faulted context");
    assert_names(&unavailable(ec), &["of tree a", "not caused by tree c"]);
    // Another context is not affected.
    let fresh = tree_on(&EmulatedContext::new(), "tree d");
    assert_eq!(fresh.root(), root);
}

#[test]
fn a_fault_another_tree_observes_first_is_still_blamed_on_the_tree_that_caused_it() {
    let (_, _, root) = four_spaces();
    let context = EmulatedContext::new();
    let a = EmulatedDevice::on_context(&context).labelled("tree a");
    let mut b = tree_on(&context, "tree b");
    let image_b = b.image().clone();
    a.inject_sticky_fault(719).expect("sticky");
    let zero = a.alloc(64).expect("alloc");
    // SAFETY: `zero` holds 2 digests; the launch "faults" asynchronously and returns Ok, as
    // on a GPU.
    unsafe { a.zero_hashes(zero, 2) }.expect("the faulting launch itself returns success");
    // b calls first and sees the sticky error, but its own work was not in flight.
    let eb = unavailable(b.update(&batch()).expect_err("b sees the fault"));
    assert_names(
        &eb,
        &[
            "unusable since CUDA_ERROR_LAUNCH_FAILED",
            "during zero_hashes of tree a",
            "not caused by tree b",
        ],
    );
    assert_eq!((b.root(), b.image()), (root, &image_b));
    let ea = unavailable(a.synchronize().expect_err("a's wait fails"));
    assert_names(&ea, &["caused by work of tree a"]);
    let fault = context.health().fault().expect("recorded");
    assert_eq!(fault.observed_by, "tree b");
    assert_eq!(
        fault
            .suspects
            .iter()
            .map(|s| &s.label[..])
            .collect::<Vec<_>>(),
        ["tree a"]
    );
    // SAFETY: allocated above, not used again.
    unsafe { a.free(zero) };
}

#[test]
fn with_several_devices_in_flight_every_suspect_is_named() {
    let context = EmulatedContext::new();
    let a = EmulatedDevice::on_context(&context).labelled("tree a");
    let c = EmulatedDevice::on_context(&context).labelled("tree c");
    let (za, zc) = (a.alloc(64).expect("alloc"), c.alloc(64).expect("alloc"));
    a.inject_sticky_fault(716).expect("sticky");
    // SAFETY: 2 digests each; both launches stay in flight (no wait) until b observes.
    unsafe {
        a.zero_hashes(za, 2).expect("queued");
        c.zero_hashes(zc, 2)
            .expect_err("c's launch meets the raised fault");
    }
    // c's refused launch does not count, but c had nothing else in flight: one suspect.
    assert_eq!(
        context.health().fault().expect("recorded").suspects.len(),
        1
    );

    let context = EmulatedContext::new();
    let a = EmulatedDevice::on_context(&context).labelled("tree a");
    let c = EmulatedDevice::on_context(&context).labelled("tree c");
    let (za, zc) = (a.alloc(64).expect("alloc"), c.alloc(64).expect("alloc"));
    let staged = [3u8; 32];
    // SAFETY: as above; c's launch runs before a's faults, and neither waits; c's copy is
    // still pending at the fault (`staged` outlives it).
    unsafe {
        c.zero_hashes(zc, 2).expect("queued");
        c.copy_to_device(zc.offset(32), &staged).expect("queued");
        a.inject_sticky_fault(716).expect("sticky");
        a.zero_hashes(za, 2).expect("queued");
    }
    let b = EmulatedDevice::on_context(&context).labelled("tree b");
    let eb = unavailable(b.synchronize().expect_err("b observes"));
    assert_names(
        &eb,
        &[
            "CUDA_ERROR_MISALIGNED_ADDRESS",
            "2 devices had work in flight",
            "zero_hashes of tree a",
            "zero_hashes, copy_to_device of tree c",
            "not caused by tree b",
        ],
    );
    for d in [&a, &c] {
        let e = unavailable(d.synchronize().expect_err("suspect"));
        assert_names(&e, &[&format!("{} among the suspects", d.label())]);
    }
    // A dead stream drops its pending copies: freeing their target is no violation.
    assert_eq!(c.pending_copies(), 0);
    // SAFETY: allocated above, not used again.
    unsafe {
        a.free(za);
        c.free(zc);
    }
    assert!(c.staging_violations().is_empty());
}

#[test]
fn only_sticky_errors_can_be_injected() {
    let d = EmulatedDevice::with_seed(1);
    for code in [2, 209, 701] {
        assert!(matches!(
            d.inject_sticky_fault(code),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

#[test]
fn the_emulator_defers_copies_to_the_device_and_catches_a_changed_source() {
    let d = EmulatedDevice::with_seed(1);
    let buf = d.alloc(64).expect("alloc");
    let src: Vec<u8> = (0..64).collect();
    // SAFETY: `buf` holds 64 bytes; `src` outlives the wait below.
    unsafe { d.copy_to_device(buf, &src) }.expect("queued");
    assert_eq!(d.pending_copies(), 1, "the copy waits for the stream");
    let mut back = vec![0u8; 64];
    // SAFETY: as above.
    unsafe { d.copy_to_host(&mut back, buf) }.expect("copy back");
    assert_eq!((d.pending_copies(), &back), (0, &src));
    assert!(d.staging_violations().is_empty());

    // A source changed before the stream reaches the copy fails the next launch.
    let mut src = vec![7u8; 64];
    // SAFETY: `buf` holds 64 bytes; the source is changed on purpose while the copy is
    // pending (it stays alive), which the emulator must report.
    unsafe { d.copy_to_device(buf, &src) }.expect("queued");
    src[5] = 8;
    // SAFETY: one digest at `buf`, the value at `buf + 32`, inside the allocation.
    let err = unsafe { d.fill_digests(buf, buf.offset(32), 1) }.expect_err("changed source");
    assert_names(
        &unavailable(err),
        &["changed before the stream reached the copy"],
    );
    assert_eq!(d.staging_violations().len(), 1);

    // Freeing the destination of a pending copy is a violation too (the call did not wait).
    // SAFETY: `buf` holds 64 bytes; it is freed with the copy pending, on purpose.
    unsafe {
        d.copy_to_device(buf, &src).expect("queued");
        d.free(buf);
    }
    assert_eq!(d.pending_copies(), 0);
    let v = d.staging_violations();
    assert_eq!(v.len(), 2);
    assert_names(&v[1], &["freed with 1 copies into it still pending"]);
}

/// Checks the staging rules for the events of one call: every allocation before the first
/// upload, and nothing pending or violated when it returned.
fn assert_staged(t: &CudaTree<Flaky>, what: &str) {
    let events = t.device().take_events();
    if let Some(first_upload) = events.iter().position(|&e| e == "upload") {
        assert!(
            !events[first_upload..].contains(&"alloc"),
            "{what}: an allocation after the first upload: {events:?}"
        );
        assert!(
            events[first_upload..].contains(&"wait"),
            "{what}: returned without waiting: {events:?}"
        );
    }
    let inner = &t.device().inner;
    assert_eq!(
        inner.pending_copies(),
        0,
        "{what}: returned with a copy pending"
    );
    assert_eq!(inner.staging_violations(), Vec::<String>::new(), "{what}");
}

#[test]
fn every_call_allocates_before_uploading_and_waits_before_returning() {
    let (_, _, root) = four_spaces();
    // Successful calls, counting each call's launches.
    let launches = |t: &CudaTree<Flaky>| t.device().launches.swap(0, Ordering::SeqCst);
    let mut t = flaky_tree();
    assert_staged(&t, "build");
    let mut per_call = vec![launches(&t)];
    t.update(&batch()).expect("update creating a page");
    assert_staged(&t, "update creating a page");
    per_call.push(launches(&t));
    let mut t = flaky_tree();
    launches(&t);
    t.device().take_events();
    t.update(&batch_in_present_pages())
        .expect("update in place");
    assert_staged(&t, "update in place");
    per_call.push(launches(&t));
    t.openings(&[(0, 3), (1, 17)]).expect("openings");
    assert_staged(&t, "openings");
    per_call.push(launches(&t));
    // Every launch of each call failing in turn: build, both updates and openings.
    let mut failed = 0;
    for n in 1..40u64 {
        let (layout, leaves, _) = four_spaces();
        let device = Flaky::default();
        device.fail_launch_after.store(n, Ordering::SeqCst);
        let inner = Arc::clone(&device.inner);
        if CudaTree::build(device, layout, image_with(&layout_of_four(), &leaves), 3).is_err() {
            failed += 1;
        }
        assert_eq!(inner.pending_copies(), 0, "build failing at launch {n}");
        assert!(inner.staging_violations().is_empty(), "build at launch {n}");
        for (name, b) in [
            ("update creating a page", batch()),
            ("update in place", batch_in_present_pages()),
        ] {
            let mut t = flaky_tree();
            t.device().take_events();
            t.device().fail_launch_after.store(n, Ordering::SeqCst);
            failed += usize::from(t.update(&b).is_err());
            assert_staged(&t, &format!("{name} failing at launch {n}"));
        }
        let t = flaky_tree();
        t.device().take_events();
        t.device().fail_launch_after.store(n, Ordering::SeqCst);
        failed += usize::from(t.openings(&[(0, 3), (1, 17)]).is_err());
        assert_staged(&t, &format!("openings failing at launch {n}"));
    }
    // Build, both updates and openings each failed at every one of their launches (for
    // n up to 39) and at no other n.
    let expected: u64 = per_call.iter().map(|&l| l.min(39)).sum();
    assert_eq!(failed as u64, expected, "launches per call: {per_call:?}");
    // A failed device-to-device copy (growth) and failed allocations.
    let mut t = flaky_tree();
    t.device().take_events();
    t.device().fail_copy.store(true, Ordering::SeqCst);
    assert!(t.update(&batch()).is_err());
    assert_staged(&t, "update with a failed move");
    let mut t = flaky_tree();
    t.device().take_events();
    t.device().fail_alloc.store(true, Ordering::SeqCst);
    assert!(t.update(&batch()).is_err());
    assert!(t.openings(&[(0, 3)]).is_err());
    assert_staged(&t, "calls with failed allocations");
    assert_eq!(t.root(), root);
}

fn layout_of_four() -> memcommit::layout::MemoryLayout {
    four_spaces().0
}

/// The process-wide context's fault (the test hook: a member of [`context_health`] that
/// observes a sticky error) reaches the probe, backend selection and the server. This is
/// the only test here that touches the process-wide context; it poisons it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulted_process_context_turns_auto_to_the_cpu_and_cuda_unavailable() {
    {
        let guilty = context_health().member("tree 0f0f");
        guilty.begin("fill_digests").expect("healthy before");
        let _ = guilty.observe(
            "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered".into(),
            None,
        );
    }
    let why = probe_device().expect_err("a faulted device is not usable");
    assert_names(
        &why,
        &[
            "unusable since CUDA_ERROR_ILLEGAL_ADDRESS",
            "during fill_digests of tree 0f0f",
        ],
    );
    assert_eq!(Backend::Auto.resolve().expect("auto"), Backend::Cpu);
    let cuda = unavailable(Backend::Cuda.resolve().expect_err("cuda is unavailable"));
    assert_names(&cuda, &["CUDA_ERROR_ILLEGAL_ADDRESS", "tree 0f0f"]);
    let (layout, leaves, root) = four_spaces();
    let t = memcommit::tree::build(
        Backend::Auto,
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("auto builds on the cpu");
    assert_eq!((t.backend(), t.root()), (Backend::Cpu, root));

    let mut server = common::server::start(memcommit::service::Limits::default()).await;
    let info = server.client.server_info().await.expect("server info");
    assert_eq!(info.backend, "cpu");
    assert_names(
        &info.device,
        &["unusable: ", "CUDA_ERROR_ILLEGAL_ADDRESS", "tree 0f0f"],
    );
    assert_eq!(info.device_memory_total_bytes, 0);
    common::server::err(
        server
            .client
            .create_tree(&layout, Some(3), Backend::Cuda)
            .await,
        tonic::Code::Unavailable,
        &["CUDA_ERROR_ILLEGAL_ADDRESS", "tree 0f0f"],
    );
    let created = server
        .client
        .create_tree(&layout, Some(3), Backend::Auto)
        .await
        .expect("auto creates a cpu tree");
    let trees = server.client.list_trees().await.expect("list");
    let listed = trees
        .iter()
        .find(|t| t.tree_id == created.tree_id)
        .expect("listed");
    assert_eq!(listed.backend, "cpu");
    server.stop().await;
}
