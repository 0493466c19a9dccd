//! Poseidon2-16 over BabyBear, exactly Plonky3 0.8.0's `default_babybear_poseidon2_16()`
//! (width 16, S-box x^7, 4+4 full and 13 partial rounds, Horizen Labs RC16 constants), which
//! is also OpenVM's memory hasher.
//!
//! - `compress(l, r) = perm(l ‖ r)[0..8]`: Plonky3's `TruncatedPermutation<_, 2, 8, 16>`.
//! - `leaf_hash(cells) = compress(cells, [0; 8])`: Plonky3's `PaddingFreeSponge<_, 16, 8, 8>`
//!   on 8 elements.
//!
//! The scalar functions hash one input; the `*_many` functions run [`LANES`] permutations at
//! once on p3's packed field (AVX2 with `target-cpu=x86-64-v3`, see `.cargo/config.toml`).

use std::fmt;
use std::sync::LazyLock;

use p3_baby_bear::{default_babybear_poseidon2_16, BabyBear, Poseidon2BabyBear};
use p3_field::{Field, PackedValue, PrimeCharacteristicRing, PrimeField32};
use p3_symmetric::Permutation;

/// The BabyBear field, p = 2^31 − 2^27 + 1.
pub type F = BabyBear;
/// p3's packed BabyBear for this build target.
pub type Packed = <F as Field>::Packing;
/// Permutations computed together by one packed permutation call.
pub const LANES: usize = <Packed as PackedValue>::WIDTH;
/// The permutation's state width, in field elements.
pub const WIDTH: usize = 16;
/// Field elements in a digest.
pub const DIGEST_ELEMS: usize = 8;
/// Bytes a digest takes in memory (8 × 4), host or device.
pub const DIGEST_BYTES: u64 = 32;
/// The BabyBear modulus.
pub const P: u32 = 0x7800_0001;

static PERM: LazyLock<Poseidon2BabyBear<WIDTH>> = LazyLock::new(default_babybear_poseidon2_16);

/// The shared permutation instance (built once; its constants are p3 0.8.0's).
pub fn permutation() -> &'static Poseidon2BabyBear<WIDTH> {
    &PERM
}

/// A Merkle digest: 8 BabyBear elements. Compared and hashed by value; shown and serialised
/// as canonical integers (never Montgomery form).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Digest(pub [F; DIGEST_ELEMS]);

impl Digest {
    /// The all-zero digest.
    pub const ZERO: Digest = Digest([F::ZERO; DIGEST_ELEMS]);

    /// The canonical integers (each `< p`).
    pub fn to_canonical(&self) -> [u32; DIGEST_ELEMS] {
        self.0.map(|x| x.as_canonical_u32())
    }

    /// Parses canonical integers. Returns `None` if any value is `>= p`.
    pub fn from_canonical(values: [u32; DIGEST_ELEMS]) -> Option<Digest> {
        values
            .iter()
            .all(|&v| v < P)
            .then(|| Digest(values.map(F::new)))
    }
}

/// Digest JSON (docs/design.md Part 1): an array of 8 canonical integers.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_canonical().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let values = <[u32; DIGEST_ELEMS]>::deserialize(d)?;
        Digest::from_canonical(values).ok_or_else(|| {
            serde::de::Error::custom(format!("digest {values:?} has a value >= p = {P}"))
        })
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_canonical())
    }
}

/// Applies the Poseidon2-16 permutation to one state.
pub fn permute(state: [F; WIDTH]) -> [F; WIDTH] {
    PERM.permute(state)
}

/// `compress(left, right) = perm(left ‖ right)[0..8]`, no feed-forward.
pub fn compress(left: &Digest, right: &Digest) -> Digest {
    let mut state = [F::ZERO; WIDTH];
    state[..DIGEST_ELEMS].copy_from_slice(&left.0);
    state[DIGEST_ELEMS..].copy_from_slice(&right.0);
    truncate(&PERM.permute(state))
}

/// `leaf_hash(cells) = compress(cells, [0; 8])`: the digest of one block of 8 cells.
pub fn leaf_hash(cells: &[F; DIGEST_ELEMS]) -> Digest {
    compress(&Digest(*cells), &Digest::ZERO)
}

fn truncate(state: &[F; WIDTH]) -> Digest {
    let mut d = [F::ZERO; DIGEST_ELEMS];
    d.copy_from_slice(&state[..DIGEST_ELEMS]);
    Digest(d)
}

/// Runs `out.len()` truncated permutations: `out[i] = perm(state_i)[0..8]`, where
/// `fill(i, &mut state_i)` writes input `i` into a zeroed state. Groups of up to [`LANES`]
/// states go through the packed permutation; a lone state through the scalar one.
#[inline]
pub fn permute_many(out: &mut [Digest], fill: impl Fn(usize, &mut [F; WIDTH])) {
    permute_many_scaled::<false>(out, fill)
}

/// [`leaf_hash`] of blocks given as canonical cell values: `out[i] = leaf_hash(cells_i)`
/// where `fill(i, &mut cells_i)` writes block `i`'s 8 cells, each `< p`. The cells skip
/// the scalar conversion to Montgomery form: they are taken as Montgomery words and fixed
/// up with one packed multiply per state word (8 multiplies per [`LANES`] leaves instead
/// of 8 scalar reductions per leaf).
#[inline]
pub fn leaf_hash_many_canonical(
    out: &mut [Digest],
    fill: impl Fn(usize, &mut [u32; DIGEST_ELEMS]),
) {
    permute_many_scaled::<true>(out, |i, state| {
        let mut cells = [0u32; DIGEST_ELEMS];
        fill(i, &mut cells);
        for (s, c) in state.iter_mut().zip(cells) {
            *s = from_monty_word(c);
        }
    })
}

/// The element whose Montgomery word is `word` (value `word · 2^-32 mod p`).
#[inline(always)]
fn from_monty_word(word: u32) -> F {
    debug_assert!(word < P);
    // SAFETY: `MontyField31` is `#[repr(transparent)]` over its `u32` Montgomery word (p3
    // documents this layout and relies on it itself), so every `u32` is a valid bit
    // pattern. Callers pass `word < p`, which keeps the field's canonical-word invariant.
    unsafe { core::mem::transmute::<u32, F>(word) }
}

/// `2^32 mod p` as a field element: an element read from Montgomery word `x`, times this,
/// is the element of integer value `x`.
fn monty_fixup() -> F {
    F::new(((1u64 << 32) % P as u64) as u32)
}

/// Below this many states a group goes through the scalar permutation. One packed call
/// costs about 1.5 scalar permutations (1.27 µs vs 0.86 µs on the 2-core EPYC dev machine,
/// `cargo bench -- perm`), so two states already pay for padding the unused lanes.
const MIN_PACKED_GROUP: usize = 2;

#[inline(always)]
fn permute_many_scaled<const FIX_MONTY: bool>(
    out: &mut [Digest],
    fill: impl Fn(usize, &mut [F; WIDTH]),
) {
    let fixup = monty_fixup();
    let mut lanes = [[F::ZERO; WIDTH]; LANES];
    for (g, group) in out.chunks_mut(LANES).enumerate() {
        if group.len() < MIN_PACKED_GROUP {
            let mut state = [F::ZERO; WIDTH];
            fill(g * LANES, &mut state);
            if FIX_MONTY {
                for s in &mut state[..DIGEST_ELEMS] {
                    *s *= fixup;
                }
            }
            group[0] = truncate(&PERM.permute(state));
            continue;
        }
        // A short last group leaves its unused lanes at zero and discards them.
        for (lane, state) in lanes.iter_mut().enumerate() {
            *state = [F::ZERO; WIDTH];
            if lane < group.len() {
                fill(g * LANES + lane, state);
            }
        }
        let mut packed: [Packed; WIDTH] =
            core::array::from_fn(|j| Packed::from_fn(|l| lanes[l][j]));
        if FIX_MONTY {
            let fixup = Packed::broadcast(fixup);
            for p in &mut packed[..DIGEST_ELEMS] {
                *p *= fixup;
            }
        }
        PERM.permute_mut(&mut packed);
        for (lane, d) in group.iter_mut().enumerate() {
            d.0 = core::array::from_fn(|j| packed[j].as_slice()[lane]);
        }
    }
}

/// Compresses adjacent pairs: `out[i] = compress(children[2i], children[2i+1])`.
///
/// # Panics
/// If `children.len() != 2 * out.len()` (a caller bug, never input-dependent).
pub fn compress_pairs(children: &[Digest], out: &mut [Digest]) {
    assert_eq!(children.len(), 2 * out.len(), "compress_pairs: shape");
    permute_many(out, |i, s| {
        s[..DIGEST_ELEMS].copy_from_slice(&children[2 * i].0);
        s[DIGEST_ELEMS..].copy_from_slice(&children[2 * i + 1].0);
    });
}

/// Leaf-hashes blocks: `out[i] = leaf_hash(blocks[i])`.
///
/// # Panics
/// If the lengths differ (a caller bug).
pub fn leaf_hash_many(blocks: &[[F; DIGEST_ELEMS]], out: &mut [Digest]) {
    assert_eq!(blocks.len(), out.len(), "leaf_hash_many: shape");
    permute_many(out, |i, s| s[..DIGEST_ELEMS].copy_from_slice(&blocks[i]));
}

/// Zero hashes `zero[0..=MAX_ZERO_HEIGHT]`: `zero[0] = leaf_hash([0; 8])` and
/// `zero[h+1] = compress(zero[h], zero[h])`. `zero[h]` is the root of an all-zero subtree of
/// height `h` (OpenVM's convention for untouched memory).
pub fn zero_hashes() -> &'static [Digest] {
    static ZERO: LazyLock<Vec<Digest>> = LazyLock::new(|| {
        let mut z = vec![leaf_hash(&[F::ZERO; DIGEST_ELEMS])];
        for h in 0..MAX_ZERO_HEIGHT {
            let next = compress(&z[h], &z[h]);
            z.push(next);
        }
        z
    });
    &ZERO
}

/// The highest level with a precomputed zero hash; covers any valid layout's full height.
pub const MAX_ZERO_HEIGHT: usize = 64;
