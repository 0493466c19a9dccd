//! A device fault on a real GPU (feature `cuda`): a launch at an unmapped address poisons the
//! process's CUDA context on purpose, then every device tree must answer `Unavailable`
//! naming the fault and the tree that caused it, the probe must report the device unusable,
//! `auto` must choose the CPU, and new CUDA trees must be refused. The server does not reset
//! the context (docs/design.md, "CUDA"), so the device stays unusable after every tree is
//! dropped. The fault poisons the whole process: this must stay the only test in this file.
//! Without a usable device it prints `skipped: no CUDA device (<reason>)`.

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_fault_tests_need_feature_cuda() {
    println!(
        "skipped: no CUDA device (this build has no CUDA backend (build with --features cuda))"
    );
}

#[cfg(feature = "cuda")]
mod common;

#[cfg(feature = "cuda")]
#[test]
fn a_device_fault_makes_every_tree_unavailable_naming_the_tree_that_caused_it() {
    use common::{four_spaces, image_with};
    use memcommit::tree::cpu::CpuTree;
    use memcommit::tree::cuda::{context_health, probe_device, CudaDevice, CudaTree};
    use memcommit::tree::{self, Backend, MemoryTree, TouchedBlock};
    use memcommit::Error;

    let info = match probe_device() {
        Ok(info) => info,
        Err(why) => {
            println!("skipped: no CUDA device ({why})");
            return;
        }
    };
    assert!(
        info.kernel_check.contains("zero_hashes kernel ran"),
        "{info:?}"
    );
    let unavailable = |e: Error| match e {
        Error::Unavailable(m) => m,
        other => panic!("expected Unavailable, got {other}"),
    };
    let (layout, leaves, root) = four_spaces();
    let on_gpu = |label: &str| {
        let device = CudaDevice::labelled(label).expect("device");
        CudaTree::build(device, layout.clone(), image_with(&layout, &leaves), 3).expect("build")
    };
    let mut a = on_gpu("tree a");
    let mut b = on_gpu("tree b");
    // Both trees work, and agree with the CPU tree, before the fault.
    let batch = [TouchedBlock {
        slot: 1,
        block: 17,
        cells: [5; 8],
    }];
    let mut cpu = CpuTree::build(layout.clone(), image_with(&layout, &leaves), 3).expect("cpu");
    let expected = cpu.update(&batch).expect("cpu update");
    assert_eq!(b.update(&batch).expect("b update"), expected);
    let (root_b, image_b) = (b.root(), b.image().clone());

    // SAFETY: poisons this process's context on purpose; nothing else runs in this binary.
    let ea = unavailable(unsafe { a.device().poison_context_for_tests() }.expect_err("faults"));
    let fault = context_health().fault().expect("the fault is recorded");
    println!("fault: {}", fault.describe());
    assert!(
        ["CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED"]
            .iter()
            .any(|n| fault.error.starts_with(n)),
        "{fault:?}"
    );
    assert_eq!(fault.suspects.len(), 1, "{fault:?}");
    assert_eq!(fault.suspects[0].label, "tree a");
    assert!(
        fault.suspects[0].work.contains(&"fill_digests"),
        "{fault:?}"
    );
    assert!(ea.contains("caused by work of tree a"), "{ea}");

    for e in [
        b.update(&batch).expect_err("b after the fault"),
        b.openings(&[(0, 3)]).expect_err("b's openings"),
    ] {
        let eb = unavailable(e);
        for needle in [
            "unusable since CUDA_ERROR_",
            "fill_digests of tree a",
            "not caused by tree b",
        ] {
            assert!(eb.contains(needle), "{needle:?} not in {eb:?}");
        }
    }
    assert_eq!((b.root(), b.image()), (root_b, &image_b));
    let ea = unavailable(a.update(&batch).expect_err("a after the fault"));
    assert!(ea.contains("caused by work of tree a"), "{ea}");
    assert_eq!(a.root(), root);

    let why = probe_device().expect_err("the device is unusable");
    assert!(why.contains("tree a"), "{why}");
    assert_eq!(Backend::Auto.resolve().expect("auto"), Backend::Cpu);
    assert!(matches!(
        Backend::Cuda.resolve(),
        Err(Error::Unavailable(m)) if m.contains("tree a")
    ));
    let auto = tree::build(
        Backend::Auto,
        layout.clone(),
        image_with(&layout, &leaves),
        3,
    )
    .expect("auto builds on the cpu");
    assert_eq!((auto.backend(), auto.root()), (Backend::Cpu, root));
    assert!(CudaDevice::new().is_err());

    // No reset: dropping every device tree leaves the device unusable for the process.
    drop((a, b));
    assert!(probe_device().is_err());
    assert!(CudaDevice::labelled("tree c").is_err());
}
