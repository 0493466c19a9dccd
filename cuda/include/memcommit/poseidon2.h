// Poseidon2-16 over BabyBear, equal to Plonky3 0.8.0's `default_babybear_poseidon2_16()`
// (OpenVM's memory hasher): initial external linear layer; 4 external rounds (add round
// constants, x^7 on all 16, external linear layer); 13 internal rounds (add a constant to
// state[0], x^7 on state[0], internal matrix 1 + diag(V)); 4 final external rounds.
// The external linear layer is p3's `mds_light_permutation` with `MDSMat4`.
//
// State and digests are Montgomery words. A digest is 8 words; a state is 16.
#pragma once

#include "field.h"
#include "poseidon2_constants.h"

namespace mc {

constexpr uint32_t WIDTH = 16;
constexpr uint32_t DIGEST_WORDS = 8;
constexpr uint32_t HALF_FULL_ROUNDS = 4;
constexpr uint32_t PARTIAL_ROUNDS = 13;

#define MC_MONTY_ITEM(x) MC_TO_MONTY_CONST(x),

// Montgomery forms of the constants, read by `permute`.
MC_CONST_TABLE(RC_INITIAL, MC_P2_RC_EXTERNAL_INITIAL(MC_MONTY_ITEM))
MC_CONST_TABLE(RC_FINAL, MC_P2_RC_EXTERNAL_FINAL(MC_MONTY_ITEM))
MC_CONST_TABLE(RC_INTERNAL, MC_P2_RC_INTERNAL(MC_MONTY_ITEM))
MC_CONST_TABLE(DIAGONAL, MC_P2_INTERNAL_DIAGONAL(MC_MONTY_ITEM))

// p3's `apply_mat4`: x <- M4 x with M4 = [[2,3,1,1],[1,2,3,1],[1,1,2,3],[3,1,1,2]].
MC_HD void mat4(uint32_t* x) {
    uint32_t t01 = add(x[0], x[1]);
    uint32_t t23 = add(x[2], x[3]);
    uint32_t t0123 = add(t01, t23);
    uint32_t t01123 = add(t0123, x[1]);
    uint32_t t01233 = add(t0123, x[3]);
    x[3] = add(t01233, add(x[0], x[0]));
    x[1] = add(t01123, add(x[2], x[2]));
    x[0] = add(t01123, t01);
    x[2] = add(t01233, t23);
}

// p3's `mds_light_permutation` for width 16: M4 on each group of four, then each element
// gains the sum of the elements in its position (mod 4) across the groups.
MC_HD void external_linear_layer(uint32_t* s) {
    for (uint32_t g = 0; g < WIDTH; g += 4) mat4(s + g);
    uint32_t sums[4];
    for (uint32_t k = 0; k < 4; ++k) {
        sums[k] = add(add(s[k], s[4 + k]), add(s[8 + k], s[12 + k]));
    }
    for (uint32_t i = 0; i < WIDTH; ++i) s[i] = add(s[i], sums[i % 4]);
}

// One external round with the 16 Montgomery constants `rc`.
MC_HD void external_round(uint32_t* s, const uint32_t* rc) {
    for (uint32_t i = 0; i < WIDTH; ++i) s[i] = pow7(add(s[i], rc[i]));
    external_linear_layer(s);
}

#define MC_P2_CANONICAL_ITEM(x) (uint32_t)(x),
// The entries `internal_round` applies without the table.
constexpr uint32_t DIAGONAL_CANONICAL[WIDTH] = {MC_P2_INTERNAL_DIAGONAL(MC_P2_CANONICAL_ITEM)};
static_assert(DIAGONAL_CANONICAL[0] == P - 2 && DIAGONAL_CANONICAL[1] == 1 &&
                  DIAGONAL_CANONICAL[2] == 2 && DIAGONAL_CANONICAL[3] == (P + 1) / 2 &&
                  DIAGONAL_CANONICAL[6] == (P - 1) / 2,
              "V = [-2, 1, 2, 1/2, _, _, -1/2, ...]");

// One internal round: state[0] gets the constant and the S-box, then s <- (1 + diag(V)) s,
// i.e. s[i] <- sum + V[i] * s[i], with V = [-2, 1, 2, 1/2, 3, 4, -1/2, -3, -4, 1/2^8, 1/4,
// 1/8, 1/2^27, -1/2^8, -1/16, -1/2^27] (poseidon2_constants.h). As in p3's
// `internal_layer_mat_mul`, the entries -2, 1, 2, 1/2 and -1/2 need no multiply:
// sum - 2 s0 = (s1 + ... + s15) - s0, and the others are adds, a double or a halving; the
// rest multiply by the Montgomery word of V[i]. Measured with scripts/sass-count.sh: the five
// save 91 instructions per permutation against multiplying; doing 3, 4, -3, -4 with adds too
// costs 52 more than multiplying (a product is 5 instructions, a reduced add 3). Every result
// is reduced (< p).
MC_HD void internal_round(uint32_t* s, uint32_t rc) {
    s[0] = pow7(add(s[0], rc));
    uint32_t part = s[1];
    for (uint32_t i = 2; i < WIDTH; ++i) part = add(part, s[i]);
    uint32_t sum = add(part, s[0]);
    s[0] = sub(part, s[0]);
    s[1] = add(sum, s[1]);
    s[2] = add(sum, add(s[2], s[2]));
    s[3] = add(sum, halve(s[3]));
    s[6] = sub(sum, halve(s[6]));
    for (uint32_t i = 4; i < WIDTH; ++i) {
        if (i == 6) continue;
        s[i] = add(sum, mul(MC_TABLE(DIAGONAL)[i], s[i]));
    }
}

#if !defined(__CUDACC__)
// Host build only (the kernel emulator): permutations run on the calling thread, so tests
// can compare the kernels' work with src/bench/count.rs. Not compiled for the device.
inline thread_local uint64_t host_permutations = 0;
#define MC_COUNT_PERMUTATION() (++::mc::host_permutations)
#else
#define MC_COUNT_PERMUTATION() ((void)0)
#endif

// The permutation, in place on 16 Montgomery words.
MC_HD void permute(uint32_t* s) {
    MC_COUNT_PERMUTATION();
    external_linear_layer(s);
    for (uint32_t r = 0; r < HALF_FULL_ROUNDS; ++r) external_round(s, MC_TABLE(RC_INITIAL) + WIDTH * r);
    for (uint32_t r = 0; r < PARTIAL_ROUNDS; ++r) internal_round(s, MC_TABLE(RC_INTERNAL)[r]);
    for (uint32_t r = 0; r < HALF_FULL_ROUNDS; ++r) external_round(s, MC_TABLE(RC_FINAL) + WIDTH * r);
}

// compress(l, r) = perm(l || r)[0..8] (p3's TruncatedPermutation<_, 2, 8, 16>, no
// feed-forward). `out` may alias `l` or `r`.
MC_HD void compress(const uint32_t* l, const uint32_t* r, uint32_t* out) {
    uint32_t s[WIDTH];
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) {
        s[i] = l[i];
        s[DIGEST_WORDS + i] = r[i];
    }
    permute(s);
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) out[i] = s[i];
}

// leaf_hash(cells) = compress(cells, [0; 8]); `cells` are 8 Montgomery words.
MC_HD void leaf_hash(const uint32_t* cells, uint32_t* out) {
    uint32_t s[WIDTH];
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) {
        s[i] = cells[i];
        s[DIGEST_WORDS + i] = 0;
    }
    permute(s);
    for (uint32_t i = 0; i < DIGEST_WORDS; ++i) out[i] = s[i];
}

}  // namespace mc
