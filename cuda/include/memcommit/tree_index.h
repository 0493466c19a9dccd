// Tree index arithmetic (docs/design.md "The stored tree", "CUDA"), all 64-bit.
//
// The device holds a tree's nodes in one array of digests (8 Montgomery words each). The
// host works out every index (src/tree/cuda/index.rs) and passes it in task structs; the
// kernels only add indices to base pointers. The array, in order:
// 1. the fixed part, whatever pages are present: per non-empty slot its vertical path
//    (address_height - h nodes, level h + 1 first) and its dense upper levels; the top tree
//    (levels 0..=address_space_height, level l holding 2^(ash - l) nodes); the zero hashes
//    zero[0..=address_height];
// 2. per non-empty slot, its present pages' levels b..=q, level-major: level l holds
//    P * 2^(q - l) digests (P present pages), page id i's nodes at i * 2^(q - l), so one
//    launch per level covers every page of the slot ("level_offset" below, times P);
// 3. per non-empty slot, the pool of its sparse upper levels' nodes, in the order they were
//    created (the host keeps the map from (level, index) to pool position).
// b is the stored base level: omitted_levels when h > omitted_levels, else 0; q is the page
// levels min(9, h). src/tree/cuda/index.rs mirrors these functions; tests compare the two.
#pragma once

#include "hd.h"

namespace mc {

// The lowest stored level of a slot of real height h with k omitted levels.
MC_HD uint32_t stored_base_level(uint32_t h, uint32_t k) { return h > k ? k : 0; }

// Offset, in digests per unit, of level l in a level-major stack of levels b..=h where level
// l' holds 2^(h - l') digests per unit (b <= l <= h). A page pool of P pages of height q
// starts level l at P * level_offset(q, b, l).
MC_HD uint64_t level_offset(uint32_t h, uint32_t b, uint32_t l) {
    return (1ull << (h - b + 1)) - (1ull << (h - l + 1));
}

// Offset of top-tree level l from the top tree's first digest.
MC_HD uint64_t top_level_offset(uint32_t ash, uint32_t l) {
    return (1ull << (ash + 1)) - (1ull << (ash - l + 1));
}

// Digests of the top tree.
MC_HD uint64_t top_digests(uint32_t ash) { return (1ull << (ash + 1)) - 1; }

}  // namespace mc
