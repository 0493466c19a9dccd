//! A fixed CPU update workload for instruction counting: builds one u8 address space of
//! `2^LOG_LEAVES` blocks, every page written, then applies `REPEATS` batches of `BATCH` distinct blocks spread
//! over the slot. Under `valgrind --tool=callgrind`, two runs that differ only in `REPEATS`
//! give the instructions of the extra batches alone (the build cancels out), whatever the
//! machine's load; `scripts/update-cost.sh` does that for two commits.
//!
//! Usage: `update_cost LOG_LEAVES K BATCH REPEATS` (defaults 16 3 64 8).

use std::sync::Arc;

use memcommit::image::MemoryImage;
use memcommit::layout::{AddressSpace, CellType, LayoutSpec, MemoryLayout};
use memcommit::tree::{self, Backend, TouchedBlock};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .map_or(default, |a| a.parse().expect("arguments are integers"))
}

fn main() {
    let (log_leaves, k, batch, repeats) = (arg(1, 16), arg(2, 3), arg(3, 64), arg(4, 8));
    let leaves = 1u64 << log_leaves;
    let layout = MemoryLayout::new(LayoutSpec {
        address_spaces: vec![AddressSpace {
            cell: CellType::U8,
            num_cells: 8 * leaves,
        }],
        address_space_height: None,
        address_height: None,
    })
    .expect("layout");
    // Every page written, so updates land in present pages (the image's content does not
    // change the instruction count).
    let mut image = MemoryImage::zeroed(&layout).expect("image");
    image
        .write(0, 0, &vec![1u8; 8 * leaves as usize])
        .expect("write");
    let image = Arc::new(image);
    let mut tree = tree::build(Backend::Cpu, layout, image, k as u32).expect("build");
    // A stride coprime to the leaf count visits distinct, scattered blocks.
    let stride = (2_654_435_761 % leaves) | 1;
    for r in 0..repeats {
        let blocks: Vec<TouchedBlock> = (0..batch)
            .map(|i| TouchedBlock {
                slot: 0,
                block: ((r * batch + i) * stride) % leaves,
                cells: [(r % 251) as u32 + 1; 8],
            })
            .collect();
        tree.update(&blocks).expect("update");
    }
    println!("{:?}", tree.root());
}
