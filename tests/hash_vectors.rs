//! Layer 1: the Rust hash reproduces every vector in `shared/vectors`.

mod common;

use common::{digest, u32s, vectors};
use memcommit::hash::{
    compress, compress_pairs, leaf_hash, leaf_hash_many, permute, zero_hashes, Digest, F, LANES,
};
use p3_field::{PrimeCharacteristicRing, PrimeField32};

fn perm_of(input: [u32; 16]) -> Vec<u32> {
    permute(input.map(F::new))
        .iter()
        .map(|x| x.as_canonical_u32())
        .collect()
}

#[test]
fn permutation_vectors() {
    let v = vectors();
    assert_eq!(perm_of([0; 16]), u32s(&v["perm_zero"]));
    assert_eq!(
        perm_of(core::array::from_fn(|i| i as u32)),
        u32s(&v["perm_0_to_15"])
    );
}

#[test]
fn montgomery_form_of_perm_matches_vector() {
    // The vector's Montgomery words are x·2^32 mod p of the canonical outputs.
    let v = vectors();
    let mont: Vec<u32> = v["montgomery"]["perm_0_to_15_montgomery_hex"]
        .as_str()
        .expect("hex string")
        .split_whitespace()
        .map(|h| u32::from_str_radix(h, 16).expect("hex"))
        .collect();
    let canonical = perm_of(core::array::from_fn(|i| i as u32));
    let p = 2013265921u64;
    let to_mont: Vec<u32> = canonical
        .iter()
        .map(|&x| ((u64::from(x) << 32) % p) as u32)
        .collect();
    assert_eq!(to_mont, mont);
}

#[test]
fn leaf_hash_and_zero_hash_vectors() {
    let v = vectors();
    let cells: [F; 8] = core::array::from_fn(|i| F::new(i as u32));
    assert_eq!(leaf_hash(&cells), digest(&v["leaf_hash_0_to_7"]));
    let zeros = v["zero_hashes_0_to_8"].as_array().expect("array");
    for (h, z) in zeros.iter().enumerate() {
        assert_eq!(zero_hashes()[h], digest(z), "zero[{h}]");
    }
    assert_eq!(zero_hashes()[28], digest(&v["zero_hash_28"]));
    // zero[0] is the permutation of the zero state, truncated.
    assert_eq!(
        zero_hashes()[0].to_canonical().to_vec(),
        u32s(&v["perm_zero"])[..8].to_vec()
    );
}

#[test]
fn packed_batches_equal_scalar_calls() {
    // Lengths around the lane count exercise both the packed groups and the scalar tail.
    for n in [1, LANES - 1, LANES, LANES + 3, 5 * LANES + 1] {
        let blocks: Vec<[F; 8]> = (0..n)
            .map(|i| core::array::from_fn(|j| F::new((i * 8 + j) as u32 * 7919)))
            .collect();
        let mut leaves = vec![Digest::ZERO; n];
        leaf_hash_many(&blocks, &mut leaves);
        for (b, d) in blocks.iter().zip(&leaves) {
            assert_eq!(*d, leaf_hash(b));
        }
        let mut parents = vec![Digest::ZERO; n / 2];
        compress_pairs(&leaves[..2 * (n / 2)], &mut parents);
        for (i, d) in parents.iter().enumerate() {
            assert_eq!(*d, compress(&leaves[2 * i], &leaves[2 * i + 1]));
        }
    }
}

#[test]
fn digest_canonical_round_trip_rejects_non_canonical() {
    let d = Digest::from_canonical([1, 2, 3, 4, 5, 6, 7, 2013265920]).expect("canonical");
    assert_eq!(d.to_canonical(), [1, 2, 3, 4, 5, 6, 7, 2013265920]);
    assert!(Digest::from_canonical([0, 0, 0, 0, 0, 0, 0, 2013265921]).is_none());
    assert_eq!(Digest::ZERO.0[0], F::ZERO);
}

#[test]
fn canonical_leaf_hashing_equals_converted_leaf_hashing() {
    // Lane-count edge cases again, with values up to p - 1 so the Montgomery fix-up sees
    // the whole canonical range.
    for n in [1, LANES, LANES + 5, 3 * LANES] {
        let cells: Vec<[u32; 8]> = (0..n)
            .map(|i| core::array::from_fn(|j| 2013265920 - (i * 8 + j) as u32 * 104729))
            .collect();
        let mut out = vec![Digest::ZERO; n];
        memcommit::hash::leaf_hash_many_canonical(&mut out, |i, c| *c = cells[i]);
        for (c, d) in cells.iter().zip(&out) {
            assert_eq!(*d, leaf_hash(&c.map(F::new)));
        }
    }
    let v = vectors();
    let mut out = [Digest::ZERO; 1];
    memcommit::hash::leaf_hash_many_canonical(&mut out, |_, c| {
        *c = core::array::from_fn(|j| j as u32)
    });
    assert_eq!(out[0], digest(&v["leaf_hash_0_to_7"]));
}
