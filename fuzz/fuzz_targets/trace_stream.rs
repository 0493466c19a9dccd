//! A whole trace stream through `TraceReader`: zstd-decompressed first when the input starts
//! with the zstd frame magic (as a `.zst` file would), else plain JSON Lines.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memcommit_fuzz::read_trace;

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

fuzz_target!(|data: &[u8]| {
    read_trace(data.to_vec(), data.starts_with(&ZSTD_MAGIC));
});
