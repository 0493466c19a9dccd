// Leaf encoding from raw memory (docs/design.md Part 1 "Memory layout and tree shape"): a block
// is 8 cells, little-endian in raw memory; a cell's integer value is the field element of the
// same value. Field cells arrive canonical (checked on the host) and become Montgomery words
// here.
#pragma once

#include "poseidon2.h"

namespace mc {

// Cell type codes, equal to log2 of the cell's bytes: u8 = 0, u16 = 1, field = 2.
constexpr uint32_t CELL_U8 = 0;
constexpr uint32_t CELL_U16 = 1;
constexpr uint32_t CELL_FIELD = 2;
constexpr uint32_t BLOCK_CELLS = 8;

// Bytes of one block of `cell` cells: 8, 16 or 32.
MC_HD uint64_t block_bytes(uint32_t cell) { return (uint64_t)BLOCK_CELLS << cell; }

// Loads `n` little-endian 32-bit words from `p`. The device reads whole words (`p` is 4-byte
// aligned: raw buffers start 16-byte aligned and blocks are 8, 16 or 32 bytes); the host
// assembles bytes, which needs no alignment and gives the same value on any host.
MC_HD void load_words(const uint8_t* p, uint32_t n, uint32_t* w) {
#if defined(__CUDA_ARCH__)
    // A fixed trip count with a guard (n <= 8) keeps `w` in registers: a loop bounded by n
    // would index it at run time and put it in local memory (ptxas: a 32-byte stack frame).
    const uint32_t* q = reinterpret_cast<const uint32_t*>(p);
#pragma unroll
    for (uint32_t i = 0; i < BLOCK_CELLS; ++i) {
        if (i < n) w[i] = q[i];
    }
#else
    for (uint32_t i = 0; i < n; ++i) {
        const uint8_t* b = p + 4 * i;
        w[i] = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) |
               ((uint32_t)b[3] << 24);
    }
#endif
}

// The 8 canonical cell values of block `block` of the slot whose raw memory starts at `raw`.
MC_HD void read_block(const uint8_t* raw, uint32_t cell, uint64_t block, uint32_t* cells) {
    uint32_t w[BLOCK_CELLS];
    load_words(raw + block * block_bytes(cell), 2u << cell, w);
    for (uint32_t j = 0; j < BLOCK_CELLS; ++j) {
        if (cell == CELL_U8) {
            cells[j] = (w[j >> 2] >> (8 * (j & 3))) & 0xffu;
        } else if (cell == CELL_U16) {
            cells[j] = (w[j >> 1] >> (16 * (j & 1))) & 0xffffu;
        } else {
            cells[j] = w[j];
        }
    }
}

// Writes 8 canonical cell values (already checked to fit `cell`) little-endian as block
// `block` of the slot at `raw`, one byte at a time (no alignment needed).
MC_HD void write_block(uint8_t* raw, uint32_t cell, uint64_t block, const uint32_t* cells) {
    uint8_t* p = raw + block * block_bytes(cell);
    uint32_t bytes = 1u << cell;
    for (uint32_t j = 0; j < BLOCK_CELLS; ++j) {
        for (uint32_t b = 0; b < bytes; ++b) p[j * bytes + b] = (uint8_t)(cells[j] >> (8 * b));
    }
}

// leaf_hash of block `block` of the slot at `raw`, as a Montgomery digest.
MC_HD void leaf_from_raw(const uint8_t* raw, uint32_t cell, uint64_t block, uint32_t* out) {
    uint32_t cells[BLOCK_CELLS];
    read_block(raw, cell, block, cells);
    for (uint32_t j = 0; j < BLOCK_CELLS; ++j) cells[j] = to_monty(cells[j]);
    leaf_hash(cells, out);
}

// The source of a subtree launch holds digests (8 Montgomery words each, e.g. the previous
// stage's outputs), not raw blocks: its "leaves" are copied, not hashed. Used as a cell code.
constexpr uint32_t CELL_DIGEST = 3;

// Node `index` of a subtree source at `src`: the leaf hash of block `index` of raw memory
// (cell 0..=2), or digest `index` of a digest array (CELL_DIGEST, no permutation).
MC_HD void load_node(const uint8_t* src, uint32_t cell, uint64_t index, uint32_t* out) {
    if (cell == CELL_DIGEST) {
        const uint32_t* d = reinterpret_cast<const uint32_t*>(src) + DIGEST_WORDS * index;
        for (uint32_t i = 0; i < DIGEST_WORDS; ++i) out[i] = d[i];
    } else {
        leaf_from_raw(src, cell, index, out);
    }
}

}  // namespace mc
