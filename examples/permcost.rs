//! Single-thread cost of the hashing primitives, in ns per permutation (a quick check that
//! is less sensitive to a loaded second core than the 2-thread criterion builds).
use std::time::Instant;

use memcommit::hash::{leaf_hash_many_canonical, permute_many, Digest, F, LANES};

fn main() {
    let n = 64 * LANES;
    let raw: Vec<u32> = (0..8 * n as u32).map(|i| i * 7919).collect();
    let mut out = vec![Digest::ZERO; n];
    let reps = 3000;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..reps {
            permute_many(&mut out, |i, s| {
                for j in 0..8 {
                    s[j] = F::new(raw[8 * i + j]);
                }
            });
        }
        let converted = t.elapsed().as_nanos() as f64 / (reps * n) as f64;
        let t = Instant::now();
        for _ in 0..reps {
            leaf_hash_many_canonical(&mut out, |i, c| c.copy_from_slice(&raw[8 * i..8 * i + 8]));
        }
        let canonical = t.elapsed().as_nanos() as f64 / (reps * n) as f64;
        println!("leaf hash: F::new per cell {converted:.1} ns, canonical + packed fix-up {canonical:.1} ns ({:.1}% less)", 100.0 * (1.0 - canonical / converted));
    }
}
