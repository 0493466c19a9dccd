//! `memcommit bench`'s sweep at small sizes, under criterion, for regression tracking
//! (issue 4): one address space of 2^16 and 2^18 raw bytes, cells u8 / u16 / field,
//! `omitted_levels` 0 to 5, update batches of 0.1 % and 1 % of the blocks, on the CPU
//! tree, the CUDA tree when this build has `--features cuda` and a device is usable, and
//! the reference tree at 2^16 bytes only. Inputs are `memcommit::bench`'s deterministic
//! images and batches, so runs compare like with like.
//!
//! Names are `sweep/{backend}_{cell}_2^{log2 bytes}B/{build|update_0.1%|update_1%}/k{k}`;
//! run one slice with e.g. `cargo bench --bench sweep -- 'cpu_u16_2\^18B/update'`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memcommit::bench::{blocks_of, layout_of, random_batch, random_image};
use memcommit::layout::CellType;
use memcommit::tree::{self, Backend};

const LOG_BYTES: [u32; 2] = [16, 18];
const CELLS: [CellType; 3] = [CellType::U8, CellType::U16, CellType::Field];
const TOUCHED: [(f64, &str); 2] = [(0.001, "update_0.1%"), (0.01, "update_1%")];

fn backends() -> Vec<Backend> {
    // cuda resolves only in a cuda build with a usable device.
    [Backend::Cpu, Backend::Cuda, Backend::Reference]
        .into_iter()
        .filter(|b| b.resolve().is_ok())
        .collect()
}

fn bench_sweep(c: &mut Criterion) {
    let mut group = c.benchmark_group("sweep");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for log_bytes in LOG_BYTES {
        let bytes = 1u64 << log_bytes;
        for cell in CELLS {
            let layout = layout_of(bytes, cell).expect("layout");
            let blocks = blocks_of(bytes, cell);
            let image = Arc::new(random_image(&layout, u64::from(log_bytes)).expect("image"));
            for backend in backends() {
                // The scalar, sparse reference only at the smallest size.
                if backend == Backend::Reference && log_bytes > LOG_BYTES[0] {
                    continue;
                }
                let name = format!("{}_{}_2^{log_bytes}B", backend.name(), cell.name());
                for k in 0..=5u32 {
                    group.throughput(Throughput::Elements(blocks));
                    group.bench_function(
                        BenchmarkId::new(format!("{name}/build"), format!("k{k}")),
                        |b| {
                            b.iter(|| {
                                tree::build(backend, layout.clone(), image.clone(), k)
                                    .expect("build")
                                    .root()
                            })
                        },
                    );
                    let mut t =
                        tree::build(backend, layout.clone(), image.clone(), k).expect("build");
                    for (fraction, label) in TOUCHED {
                        let n = ((fraction * blocks as f64).round() as u64).clamp(1, blocks);
                        let batch = random_batch(blocks, n, cell, n + u64::from(k));
                        group.throughput(Throughput::Elements(n));
                        group.bench_function(
                            BenchmarkId::new(format!("{name}/{label}"), format!("k{k}")),
                            |b| b.iter(|| t.update(black_box(&batch)).expect("update")),
                        );
                    }
                }
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_sweep);
criterion_main!(benches);
