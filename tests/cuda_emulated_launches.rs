//! Issue 14's launch-shape cases on the kernel emulator: the dense batch repeated, launch
//! sizes around one CUDA block (1, 255, 256, 257 tasks), and the largest `omitted_levels`.
//! The same bodies run on a GPU from `tests/cuda_device.rs`; here they check the cases
//! themselves and the kernels' logic in a shuffled thread order on any machine.

mod common;

use std::sync::Arc;

use common::device_cases;
use memcommit::image::MemoryImage;
use memcommit::layout::MemoryLayout;
use memcommit::tree::cuda::{CudaTree, EmulatedDevice, SEED_VAR};

/// An emulated tree; prints the thread-order seed so a failure can be replayed.
fn emulated(layout: &MemoryLayout, image: Arc<MemoryImage>, k: u32) -> CudaTree<EmulatedDevice> {
    let device = EmulatedDevice::new();
    println!("emulated device: {SEED_VAR}={}", device.seed());
    CudaTree::build(device, layout.clone(), image, k).expect("emulated build")
}

#[test]
fn a_dense_batch_repeated_20_times_gives_the_cpu_roots() {
    device_cases::dense_batch_repeats(emulated, 20);
}

#[test]
fn launches_of_1_255_256_and_257_tasks_equal_the_cpu_tree() {
    device_cases::launch_counts(emulated);
}

#[test]
fn k_20_build_and_one_block_update_equal_the_cpu_tree() {
    // 2^20 blocks: one stored node at level 20 per slot, the whole slot from raw memory.
    let (build, update) = device_cases::largest_k(emulated, 20);
    println!("emulated k = 20 over 2^20 blocks: build {build:?}, 1-block update {update:?}");
}

/// Kernel launches and uploaded bytes of one update on OpenVM's default layout at k = 3, for
/// 1 block, 1,024 scattered blocks and 65,536 adjacent blocks of the RAM slot (pages already
/// present), on the emulator, which counts what a GPU would run. Prints the figures that
/// docs/benchmarks.md quotes. A 1-block batch must take exactly three launches: the scatter,
/// the base recompute and the fused tail (page rounds, pair rounds, vertical path and top
/// tree in one block), where one launch per level took 29.
#[test]
fn launches_and_upload_bytes_per_update_on_the_openvm_layout() {
    use memcommit::tree::cpu::CpuTree;
    use memcommit::tree::{MemoryTree, TouchedBlock};
    // OpenVM's default layout (openvm-circuit 2.0.2 MemoryConfig::default()).
    let layout = memcommit::trace::lackey::openvm_layout().expect("OpenVM's layout");
    let k = 3;
    let mut state = 0x5DEE_CE66_D1CE_4E5Bu64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let cells = |v: u64| core::array::from_fn(|i| ((v >> (8 * i)) & 0xff) as u32);
    // 2,048 present pages of slot 1 (8 MiB), scattered over its 2^26 blocks.
    let pages: Vec<u64> = (0..2048).map(|i| (i * 61) % (1 << 17)).collect();
    let image: Vec<TouchedBlock> = pages
        .iter()
        .map(|&p| TouchedBlock {
            slot: 1,
            block: p << 9,
            cells: cells(next()),
        })
        .collect();
    let image = common::image_with(&layout, &image);
    let batches: [(&str, Vec<TouchedBlock>); 3] = [
        ("1 block", vec![(pages[7] << 9) + 5]),
        (
            "1,024 scattered blocks",
            (0..1024)
                .map(|i| (pages[2 * i] << 9) + (i as u64 % 512))
                .collect(),
        ),
        (
            "65,536 adjacent blocks",
            (0..65536u64)
                .map(|i| (pages[i as usize / 512] << 9) + i % 512)
                .collect(),
        ),
    ]
    .map(|(what, blocks): (&str, Vec<u64>)| {
        let mut blocks = blocks;
        blocks.sort_unstable();
        blocks.dedup();
        (
            what,
            blocks
                .into_iter()
                .map(|block| TouchedBlock {
                    slot: 1,
                    block,
                    cells: cells(next()),
                })
                .collect(),
        )
    });
    let mut dev = emulated(&layout, image.clone(), k);
    let mut cpu = CpuTree::build(layout.clone(), image, k).expect("cpu");
    for (what, batch) in &batches {
        let (launches, uploaded) = (
            dev.device().kernel_launches(),
            dev.device().uploaded_bytes(),
        );
        let root = dev.update(batch).expect("emulated update");
        assert_eq!(root, cpu.update(batch).expect("cpu update"), "{what}");
        let launches = dev.device().kernel_launches() - launches;
        let uploaded = dev.device().uploaded_bytes() - uploaded;
        println!(
            "update of {what} (k = 3, OpenVM layout): {launches} kernel launches, \
             {uploaded} bytes uploaded ({:.1} per block)",
            uploaded as f64 / batch.len() as f64
        );
        if batch.len() == 1 {
            assert_eq!(launches, 3, "{what}");
        }
    }
}
