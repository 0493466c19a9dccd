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
