// BabyBear, p = 2^31 - 2^27 + 1, in 32-bit Montgomery form (R = 2^32), as Plonky3's
// p3-monty-31 0.8.0 stores it: a field element x is held as the word x * 2^32 mod p, always
// reduced (< p). Every value crossing an interface (cells, digests read back) is canonical;
// only device-resident state (nodes, constants) is in Montgomery form.
#pragma once

#include "hd.h"

namespace mc {

// The modulus p.
constexpr uint32_t P = 0x78000001u;
// p^-1 mod 2^32 (p3's MONTY_MU).
constexpr uint32_t MU = 0x88000001u;
// R^2 mod p = 2^64 mod p: multiplying a canonical value by it yields its Montgomery word.
constexpr uint32_t R2 = 0x45dddde3u;
// R mod p: the Montgomery word of 1.
constexpr uint32_t ONE = 0x0ffffffeu;

// The Montgomery word of canonical `x`, usable in constant initialisers (no runtime cost).
#define MC_TO_MONTY_CONST(x) ((uint32_t)((((uint64_t)(x)) << 32) % 0x78000001ull))

// x * 2^-32 mod p for x < p * 2^32 (p3's `monty_reduce`): result < p.
MC_HD uint32_t monty_reduce(uint64_t x) {
    uint32_t t = (uint32_t)x * MU;
    uint64_t u = (uint64_t)t * P;
    uint32_t hi = (uint32_t)((x - u) >> 32);
    return x < u ? hi + P : hi;
}

// Montgomery product: words a, b < p give the word of (a * b).
MC_HD uint32_t mul(uint32_t a, uint32_t b) { return monty_reduce((uint64_t)a * b); }

// a + b mod p, for a, b < p (the sum fits 32 bits since p < 2^31).
MC_HD uint32_t add(uint32_t a, uint32_t b) {
    uint32_t s = a + b;
    return s >= P ? s - P : s;
}

// a - b mod p, for a, b < p.
MC_HD uint32_t sub(uint32_t a, uint32_t b) { return a >= b ? a - b : a + P - b; }

// The Montgomery word of canonical `x` (< p).
MC_HD uint32_t to_monty(uint32_t x) { return mul(x, R2); }

// The canonical value of Montgomery word `w` (< p).
MC_HD uint32_t from_monty(uint32_t w) { return monty_reduce(w); }

// x^7, the Poseidon2 S-box for BabyBear (7 is the smallest d with gcd(d, p - 1) = 1).
MC_HD uint32_t pow7(uint32_t x) {
    uint32_t x2 = mul(x, x);
    uint32_t x3 = mul(x2, x);
    uint32_t x4 = mul(x2, x2);
    return mul(x3, x4);
}

}  // namespace mc
