//! Layer 5: `CudaTree<CudaDevice>` on a real GPU (feature `cuda`), against the vectors, the
//! reference tree (the same random cases as the CPU and emulated property tests) and, on a
//! 2^26-leaf layout, the CPU tree. Without a usable device each device test prints
//! `skipped: no CUDA device (<reason>)` and returns; without feature `cuda` the file holds a
//! single test that says so.

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_tests_need_feature_cuda() {
    println!(
        "skipped: no CUDA device (this build has no CUDA backend (build with --features cuda))"
    );
}

#[cfg(feature = "cuda")]
mod common;

#[cfg(feature = "cuda")]
mod device {
    use std::sync::Arc;

    use super::common::random::{batch_from, layout, paged_batch_from, paged_layout};
    use super::common::{check_openings, device_cases, four_spaces, image_with};
    use memcommit::image::MemoryImage;
    use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
    use memcommit::tree::cpu::CpuTree;
    use memcommit::tree::cuda::{probe_device, CudaDevice, CudaTree, Device};
    use memcommit::tree::{self, Backend, MemoryTree, TouchedBlock};
    use memcommit::Error;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    /// A fresh device (its own stream), or `None` after printing why the test is skipped.
    fn device() -> Option<CudaDevice> {
        match probe_device() {
            Ok(_) => Some(CudaDevice::new().expect("a device after a successful probe")),
            Err(why) => {
                println!("skipped: no CUDA device ({why})");
                None
            }
        }
    }

    /// The GPU device's counters for the shared cases: exact allocations, no sync count.
    const GPU: device_cases::Extras<CudaDevice> = device_cases::Extras {
        stray_bytes: |t| {
            let usage = t.memory_usage();
            t.device().allocated_bytes() - usage.device_node_bytes - usage.device_raw_bytes
        },
        host_syncs: |_| None,
        permutations: || None,
    };

    /// Cases per property test: `MEMCOMMIT_DEVICE_CASES`, else 128. `.gpu/run-all.sh` lowers
    /// it under compute-sanitizer, which runs kernels one to two orders of magnitude slower.
    fn cases() -> u32 {
        std::env::var("MEMCOMMIT_DEVICE_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128)
    }

    fn on_gpu(layout: &MemoryLayout, image: Arc<MemoryImage>, k: u32) -> CudaTree<CudaDevice> {
        let device = CudaDevice::new().expect("device");
        CudaTree::build(device, layout.clone(), image, k).expect("device build")
    }

    #[test]
    fn probe_and_backend_selection_agree() {
        let Some(device) = device() else {
            return;
        };
        let info = probe_device().expect("probed");
        assert!(
            info.total_bytes > 0 && info.free_bytes <= info.total_bytes,
            "{info:?}"
        );
        assert!(info.compute_capability.0 >= 8, "{info:?}");
        // The probe ran the zero-hash kernel and compared it with the CPU's digests.
        assert!(
            info.kernel_check
                .contains("zero_hashes kernel ran: 33 digests"),
            "{info:?}"
        );
        assert!(device.describe().contains(&info.name));
        let (free, total) = device.memory_info().expect("mem_get_info");
        assert_eq!(total, info.total_bytes);
        assert!(free <= total);
        assert_eq!(Backend::Auto.resolve().expect("auto"), Backend::Cuda);
        assert_eq!(Backend::Cuda.resolve().expect("cuda"), Backend::Cuda);
        let (layout, leaves, root) = four_spaces();
        let t = tree::build(
            Backend::Cuda,
            layout.clone(),
            image_with(&layout, &leaves),
            3,
        )
        .expect("tree::build on cuda");
        assert_eq!((t.backend(), t.root()), (Backend::Cuda, root));
    }

    #[test]
    fn zero_hash_vectors_through_the_zero_hash_kernel() {
        let Some(device) = device() else {
            return;
        };
        device_cases::zero_hash_vectors(&device);
        assert_eq!(device.allocated_bytes(), 0);
    }

    #[test]
    fn four_spaces_vector_at_every_k() {
        if device().is_none() {
            return;
        }
        device_cases::four_spaces_vector_at_every_k(on_gpu, |t, _| {
            let usage = t.memory_usage();
            assert_eq!(
                t.device().allocated_bytes(),
                usage.device_node_bytes + usage.device_raw_bytes,
                "only the node and raw arrays outlive a call"
            );
        });
    }

    #[test]
    fn single_u8_space_vector() {
        if device().is_none() {
            return;
        }
        device_cases::single_u8_space_vector(on_gpu);
    }

    #[test]
    fn updates_reach_the_four_spaces_root_from_zero() {
        if device().is_none() {
            return;
        }
        device_cases::updates_reach_the_four_spaces_root_from_zero(on_gpu);
    }

    #[test]
    fn openvm_layout_with_512_scattered_pages_costs_its_pages_on_the_device() {
        if device().is_none() {
            return;
        }
        device_cases::openvm_layout_with_512_scattered_pages(on_gpu, &GPU);
    }

    #[test]
    fn a_tall_slot_at_k_below_at_and_above_the_page_level_equals_the_cpu_tree() {
        if device().is_none() {
            return;
        }
        device_cases::tall_slot_at_every_k(on_gpu);
    }

    #[test]
    fn a_dense_batch_repeated_20_times_gives_the_cpu_roots() {
        if device().is_none() {
            return;
        }
        device_cases::dense_batch_repeats(on_gpu, 20);
    }

    #[test]
    fn launches_of_1_255_256_and_257_tasks_equal_the_cpu_tree() {
        if device().is_none() {
            return;
        }
        device_cases::launch_counts(on_gpu);
    }

    #[test]
    fn k_20_build_and_one_block_update_equal_the_cpu_tree_timed() {
        if device().is_none() {
            return;
        }
        // 2^24 blocks (128 MiB of u8 cells): 16 stored nodes at level 20.
        let (build, update) = device_cases::largest_k(on_gpu, 24);
        println!("cuda k = 20 over 2^24 blocks: build {build:?}, 1-block update {update:?}");
    }

    #[test]
    fn out_of_memory_is_resource_exhausted() {
        let Some(device) = device() else {
            return;
        };
        // 1 PiB: more than any GPU has.
        let err = device.alloc(1 << 50).expect_err("1 PiB");
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
        // The device still works afterwards.
        let buf = device.alloc(64).expect("small alloc");
        // SAFETY: allocated above, freed once.
        unsafe { device.free(buf) };
        device.synchronize().expect("sync");
    }

    #[test]
    fn device_tree_equals_reference_on_random_cases() {
        if device().is_none() {
            return;
        }
        let strategy = (
            layout(),
            0u32..=6,
            prop::collection::vec(any::<u64>(), 0..40),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u64>(), 0..40),
                    any::<bool>(),
                    any::<u8>(),
                ),
                1..5,
            ),
        );
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            ..Config::default()
        });
        let result = runner.run(&strategy, |(layout, k, image_seeds, batches)| {
            let batches = batches
                .into_iter()
                .map(|(seeds, invalid, how)| {
                    let rotated: Vec<u64> = seeds.iter().map(|s| s.rotate_left(7)).collect();
                    let extra = batch_from(&layout, &rotated)
                        .iter()
                        .take(3)
                        .map(|b| (b.slot, b.block))
                        .collect();
                    (batch_from(&layout, &seeds), invalid.then_some(how), extra)
                })
                .collect();
            let image = batch_from(&layout, &image_seeds);
            device_cases::check_against_reference(on_gpu, &GPU, &layout, k, &image, batches)
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// The paged cases of `tests/cuda_emulated.rs`: slots taller than a page and with sparse
    /// levels, few pages present, k from 0 to 12.
    #[test]
    fn device_tree_over_pages_equals_reference_on_random_cases() {
        if device().is_none() {
            return;
        }
        let strategy = (
            paged_layout(),
            prop_oneof![0u32..=8, 9u32..=12],
            prop::collection::vec(any::<u64>(), 0..16),
            prop::collection::vec(
                (
                    prop::collection::vec(any::<u64>(), 0..24),
                    any::<u8>(),
                    any::<u8>(),
                ),
                1..4,
            ),
        );
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            ..Config::default()
        });
        let result = runner.run(&strategy, |(layout, k, image_seeds, batches)| {
            let batches = batches
                .into_iter()
                .map(|(seeds, invalid, how)| {
                    let rotated: Vec<u64> = seeds.iter().map(|s| s.rotate_left(13)).collect();
                    let extra = paged_batch_from(&layout, &rotated)
                        .iter()
                        .take(4)
                        .map(|b| (b.slot, b.block))
                        .collect();
                    let corrupt = (invalid % 8 == 0).then_some(how);
                    (paged_batch_from(&layout, &seeds), corrupt, extra)
                })
                .collect();
            let image = paged_batch_from(&layout, &image_seeds);
            device_cases::check_against_reference(on_gpu, &GPU, &layout, k, &image, batches)
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }

    /// xorshift64: a cheap deterministic stream for the large image and batches.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn layout_with_2_pow_26_leaves_equals_the_cpu_tree() {
        if device().is_none() {
            return;
        }
        // Slot 0: 2^26 blocks of u8 cells (512 MiB); slot 1: a small u16 slot with a vertical
        // path; slot 2 empty.
        let layout = MemoryLayout::new(LayoutSpec {
            address_spaces: vec![
                AddressSpace {
                    cell: CellType::U8,
                    num_cells: 1 << 29,
                },
                AddressSpace {
                    cell: CellType::U16,
                    num_cells: 1 << 13,
                },
                AddressSpace {
                    cell: CellType::U8,
                    num_cells: 0,
                },
            ],
            address_space_height: None,
            address_height: None,
        })
        .expect("layout");
        assert_eq!(layout.address_height(), 26);
        let mut image = MemoryImage::zeroed(&layout).expect("image");
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut chunk = vec![0u8; 1 << 20];
        for at in (0..1usize << 29).step_by(chunk.len()) {
            for w in chunk.chunks_exact_mut(8) {
                w.copy_from_slice(&next(&mut state).to_le_bytes());
            }
            image.write(0, at as u64, &chunk).expect("write slot 0");
        }
        let image = Arc::new(image);
        let k = 3;
        let mut dev = on_gpu(&layout, image.clone(), k);
        let mut cpu = CpuTree::build(layout.clone(), image, k).expect("cpu build");
        assert_eq!(dev.root(), cpu.root(), "build");

        let blocks = 1u64 << 26;
        let cells = |state: &mut u64, cell: CellType| -> [u32; 8] {
            core::array::from_fn(|_| (next(state) % (u64::from(cell.max_value()) + 1)) as u32)
        };
        // Scattered blocks; a dense run crossing many level-k nodes; the edges of each slot.
        let mut batches: Vec<Vec<TouchedBlock>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        batches.push(
            (0..4096)
                .filter_map(|_| {
                    let block = next(&mut state) % blocks;
                    seen.insert(block).then(|| TouchedBlock {
                        slot: 0,
                        block,
                        cells: cells(&mut state, CellType::U8),
                    })
                })
                .collect(),
        );
        let start = next(&mut state) % (blocks - (1 << 16));
        batches.push(
            (start..start + (1 << 16))
                .map(|block| TouchedBlock {
                    slot: 0,
                    block,
                    cells: cells(&mut state, CellType::U8),
                })
                .collect(),
        );
        batches.push(vec![
            TouchedBlock {
                slot: 0,
                block: 0,
                cells: [255; 8],
            },
            TouchedBlock {
                slot: 0,
                block: blocks - 1,
                cells: [1; 8],
            },
            TouchedBlock {
                slot: 1,
                block: 1023,
                cells: [65535; 8],
            },
        ]);
        for (i, batch) in batches.iter().enumerate() {
            let root = dev.update(batch).expect("device update");
            assert_eq!(root, cpu.update(batch).expect("cpu update"), "batch {i}");
            let mut positions: Vec<(u32, u64)> =
                batch.iter().take(8).map(|b| (b.slot, b.block)).collect();
            positions.extend((0..8).map(|_| (0, next(&mut state) % blocks)));
            positions.push((1, 0));
            check_openings(&layout, &dev, &cpu, &positions);
        }
        assert_eq!(dev.image(), cpu.image());
    }
}
