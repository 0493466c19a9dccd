// Tree index arithmetic (DESIGN.md "The tree and its memory"), all 64-bit.
//
// Node storage is one flat array of digests (8 Montgomery words each), in this order:
// 1. each non-empty slot in slot order: its stored levels b..=h (level l holds 2^(h-l) nodes,
//    index i of level l is the node over blocks i*2^l .. (i+1)*2^l), then its vertical path
//    (address_height - h nodes, level h+1 first);
// 2. the top tree: levels 0..=address_space_height, level l holding 2^(ash-l) nodes
//    (level 0 = the slot roots, the last = the root);
// 3. the zero hashes zero[0..=address_height].
// b is the stored base level: omitted_levels when h > omitted_levels, else 0.
// src/tree/cuda/index.rs mirrors these functions; tests compare the two.
#pragma once

#include "hd.h"

namespace mc {

// The lowest stored level of a slot of real height h with k omitted levels.
MC_HD uint32_t stored_base_level(uint32_t h, uint32_t k) { return h > k ? k : 0; }

// Offset, in digests from the slot's first digest, of level l (b <= l <= h).
MC_HD uint64_t level_offset(uint32_t h, uint32_t b, uint32_t l) {
    return (1ull << (h - b + 1)) - (1ull << (h - l + 1));
}

// Offset of the vertical-path node at level h + 1 + j.
MC_HD uint64_t vertical_offset(uint32_t h, uint32_t b, uint32_t j) {
    return (1ull << (h - b + 1)) - 1 + j;
}

// Digests stored for a non-empty slot: levels b..=h plus the vertical path.
MC_HD uint64_t slot_digests(uint32_t h, uint32_t b, uint32_t address_height) {
    return (1ull << (h - b + 1)) - 1 + (address_height - h);
}

// Offset of top-tree level l from the top tree's first digest.
MC_HD uint64_t top_level_offset(uint32_t ash, uint32_t l) {
    return (1ull << (ash + 1)) - (1ull << (ash - l + 1));
}

// Digests of the top tree.
MC_HD uint64_t top_digests(uint32_t ash) { return (1ull << (ash + 1)) - 1; }

}  // namespace mc
