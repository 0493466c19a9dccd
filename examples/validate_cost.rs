//! How much of an update is batch validation (duplicate detection dominates).
use std::time::Instant;

use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::{validate_batch, TouchedBlock};

fn main() {
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::U8,
            num_cells: 8 << 24,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    for n in [65536u64, 1 << 20] {
        let blocks: Vec<TouchedBlock> = (0..n)
            .map(|i| TouchedBlock {
                slot: 0,
                block: (i * 2654435761) % (1 << 24),
                cells: [1; 8],
            })
            .collect();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            validate_batch(&layout, &blocks).expect("valid");
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "validate_batch {n} blocks: {best:.2} ms ({:.0} ns/block)",
            best * 1e6 / n as f64
        );
    }
}
