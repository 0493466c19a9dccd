//! Digests as the device holds them: 8 Montgomery words each (`x · 2^32 mod p`, Plonky3's
//! internal form), converted to and from canonical [`Digest`]s on the host.

use crate::hash::{Digest, F, P};

/// `x · 2^-32 mod p` for `x < p · 2^32` (p3-monty-31's `monty_reduce`; the header's
/// `mc::monty_reduce`).
fn monty_reduce(x: u64) -> u32 {
    const MU: u32 = 0x8800_0001;
    let t = (x as u32).wrapping_mul(MU);
    let u = u64::from(t) * u64::from(P);
    let hi = (x.wrapping_sub(u) >> 32) as u32;
    if x < u {
        hi.wrapping_add(P)
    } else {
        hi
    }
}

/// The canonical value of Montgomery word `w < p`.
pub(crate) fn from_monty(w: u32) -> u32 {
    monty_reduce(u64::from(w))
}

/// The digest held as Montgomery words `w` (8 of them).
pub(crate) fn digest_from_words(w: &[u32]) -> Digest {
    Digest(core::array::from_fn(|i| F::new(from_monty(w[i]))))
}
