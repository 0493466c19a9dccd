// BabyBear, p = 2^31 - 2^27 + 1, in 32-bit Montgomery form (R = 2^32), as Plonky3's
// p3-monty-31 0.8.0 stores it: a field element x is held as the word x * 2^32 mod p, always
// reduced (< p). Every value crossing an interface (cells, digests read back) is canonical;
// only device-resident state (nodes, constants) is in Montgomery form.
//
// The arithmetic is written for the GPU's integer pipes (docs/design.md "CUDA"): a reduction
// from [0, 2p) is `min(r, r - p)` as unsigned (an add and an IMNMX, no compare-and-select), and
// the Montgomery reduction adds m·p instead of subtracting it, so its high word is one IMAD.HI
// with the 64-bit product as addend and needs no borrow. The `_lazy` variants skip the final reduction and return a
// value < 2p; a caller uses one only where it states why the next operation tolerates it.
// Results are the same field elements, canonical, as p3's (tests/cuda_emulated.rs).
#pragma once

#include "hd.h"

namespace mc {

// The modulus p.
constexpr uint32_t P = 0x78000001u;
// p^-1 mod 2^32 (p3's MONTY_MU).
constexpr uint32_t MU = 0x88000001u;
// -p^-1 mod 2^32: m = x * NEG_MU makes x + m * p a multiple of 2^32.
constexpr uint32_t NEG_MU = 0u - MU;
static_assert(P * MU == 1u, "MU is p^-1 mod 2^32");
// R^2 mod p = 2^64 mod p: multiplying a canonical value by it yields its Montgomery word.
constexpr uint32_t R2 = 0x45dddde3u;
// R mod p: the Montgomery word of 1.
constexpr uint32_t ONE = 0x0ffffffeu;
// (p + 1) / 2: halving an odd x is (x + p) / 2 = (x >> 1) + (p + 1) / 2.
constexpr uint32_t HALF_P_PLUS_1 = (P + 1) / 2;

// The Montgomery word of canonical `x`, usable in constant initialisers (no runtime cost).
#define MC_TO_MONTY_CONST(x) ((uint32_t)((((uint64_t)(x)) << 32) % 0x78000001ull))

// Unsigned minimum: one IMNMX.U32 (sm_80) / VIMNMX (sm_90) on the device. Written as PTX
// because nvcc 11.8 turns `min(r, r - p)` in C++ into a compare and a select (two ALU
// instructions instead of one). The host build uses a plain compare.
MC_HD uint32_t min_u32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
    uint32_t r;
    asm("min.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return a < b ? a : b;
#endif
}

// r mod p for r < 2p: when r < p, r - p wraps to above 2^32 - p > r, so the minimum is r;
// otherwise r - p < p < r.
MC_HD uint32_t reduce_once(uint32_t r) { return min_u32(r, r - P); }

// x * 2^-32 mod p as a value < 2p, for x < p * 2^32 (REDC without its final subtract):
// with m = x * NEG_MU mod 2^32, x + m * p is a multiple of 2^32, and
// x + m * p < p * 2^32 + (2^32 - 1) * p < 2p * 2^32 (< 2^64: no overflow), so
// (x + m * p) / 2^32 < 2p.
MC_HD uint32_t monty_reduce_lazy(uint64_t x) {
    uint32_t m = (uint32_t)x * NEG_MU;
#if defined(__CUDA_ARCH__)
    // The high word of m * p + x as a carry chain (the low half's sum is 0 mod 2^32; only its
    // carry matters), which ptxas fuses into one IMAD.HI.U32 taking x as its 64-bit addend.
    // nvcc 11.8 compiles the C++ form below into that IMAD.HI plus a spare IADD3.
    uint32_t r;
    asm("{\n\t.reg .u32 low;\n\t"
        "mad.lo.cc.u32 low, %1, %2, %3;\n\t"
        "madc.hi.u32 %0, %1, %2, %4;\n\t}"
        : "=r"(r)
        : "r"(m), "r"(P), "r"((uint32_t)x), "r"((uint32_t)(x >> 32)));
    return r;
#else
    return (uint32_t)(((uint64_t)m * P + x) >> 32);
#endif
}

// x * 2^-32 mod p for x < p * 2^32 (p3's `monty_reduce`): result < p.
MC_HD uint32_t monty_reduce(uint64_t x) { return reduce_once(monty_reduce_lazy(x)); }

// Montgomery product: words a, b < p give the word of (a * b), < p.
MC_HD uint32_t mul(uint32_t a, uint32_t b) { return monty_reduce((uint64_t)a * b); }

// Montgomery product < 2p, for a * b < p * 2^32, e.g. a < 2p and b < p (a * b < 2p * p and
// 2p < 2^32).
MC_HD uint32_t mul_lazy(uint32_t a, uint32_t b) { return monty_reduce_lazy((uint64_t)a * b); }

// a + b mod p, for a, b < p (the sum is < 2p < 2^32).
MC_HD uint32_t add(uint32_t a, uint32_t b) { return reduce_once(a + b); }

// a - b mod p, for a, b < p: when a >= b, d = a - b < p and d + p >= p; when a < b, d wraps
// to above 2^32 - p > p while d + p wraps to p - (b - a) < p. Either way the minimum is right.
MC_HD uint32_t sub(uint32_t a, uint32_t b) {
    uint32_t d = a - b;
    return min_u32(d, d + P);
}

// x / 2 mod p for x < p: x >> 1 when x is even, (x + p) / 2 = (x >> 1) + (p + 1) / 2 when odd
// (< p since x <= p - 2 then). Valid on Montgomery words too, as halving is linear.
MC_HD uint32_t halve(uint32_t x) { return (x >> 1) + (x & 1u) * HALF_P_PLUS_1; }

// The Montgomery word of canonical `x` (< p).
MC_HD uint32_t to_monty(uint32_t x) { return mul(x, R2); }

// The canonical value of Montgomery word `w` (< p).
MC_HD uint32_t from_monty(uint32_t w) { return monty_reduce(w); }

// x^7, the Poseidon2 S-box for BabyBear (7 is the smallest d with gcd(d, p - 1) = 1), for
// x < p. x^3 stays lazy (< 2p): its only use is the last product, whose other factor x^4 is
// < p, so x^3 * x^4 < 2p * p < p * 2^32 and `mul` still lands in [0, p). x^2 must be reduced,
// as it is squared (2p * 2p exceeds p * 2^32).
MC_HD uint32_t pow7(uint32_t x) {
    uint32_t x2 = mul(x, x);
    uint32_t x3 = mul_lazy(x2, x);
    uint32_t x4 = mul(x2, x2);
    return mul(x3, x4);
}

}  // namespace mc
