// Host build of the CUDA code and its kernel emulator (always compiled by build.rs with the
// system C++ compiler; no nvcc). Each mc_emu_* launch twin runs the kernel body for every
// thread index in order, as one launch of memcommit/launchers.h would on the device; the
// caller launches level by level exactly as it does on a GPU. The remaining exports give
// tests the header's constants, permutation, leaf encoding and index arithmetic.
//
// Returns: launch twins return 0 (the emulator has no launch errors); pointers follow
// launchers.h and must be valid host memory of the documented shapes.
#include <stddef.h>

#include "build_bodies.cuh"
#include "memcommit/tree_index.h"
#include "opening_bodies.cuh"
#include "update_bodies.cuh"

extern "C" {

int32_t mc_emu_zero_hashes(uint32_t* zero, uint32_t count) {
    mc::zero_hashes_body(0, zero, count);
    return 0;
}

int32_t mc_emu_build_base(const uint8_t* raw, uint32_t cell, uint32_t levels, uint32_t* out,
                          uint64_t count) {
    if (levels > mc::MAX_RAW_SUBTREE_LEVELS) return 1;
    for (uint64_t t = 0; t < count; ++t) mc::build_base_body(t, raw, cell, levels, out, count);
    return 0;
}

int32_t mc_emu_compress_level(const uint32_t* children, uint32_t* parents, uint64_t count) {
    for (uint64_t t = 0; t < count; ++t) mc::compress_level_body(t, children, parents, count);
    return 0;
}

int32_t mc_emu_vertical(uint32_t* nodes, const uint32_t* zero, const McVerticalTask* tasks,
                        uint64_t count) {
    for (uint64_t t = 0; t < count; ++t) mc::vertical_body(t, nodes, zero, tasks, count);
    return 0;
}

int32_t mc_emu_scatter(uint8_t* raw, const McWriteTask* tasks, uint64_t count) {
    for (uint64_t t = 0; t < count; ++t) mc::scatter_body(t, raw, tasks, count);
    return 0;
}

int32_t mc_emu_hash_tasks(const uint8_t* raw, const McHashTask* tasks, uint64_t count,
                          uint32_t* nodes) {
    for (uint64_t t = 0; t < count; ++t) mc::hash_tasks_body(t, raw, tasks, count, nodes);
    return 0;
}

int32_t mc_emu_fill_digests(uint32_t* out, const uint32_t* value, uint64_t count) {
    for (uint64_t t = 0; t < count; ++t) mc::fill_digests_body(t, out, value, count);
    return 0;
}

int32_t mc_emu_compress_pairs(const uint32_t* children, uint32_t* parents,
                              const McPairTask* tasks, uint64_t count) {
    for (uint64_t t = 0; t < count; ++t) {
        mc::compress_pairs_body(t, children, parents, tasks, count);
    }
    return 0;
}

int32_t mc_emu_openings(const uint8_t* raw, const uint32_t* nodes, const uint32_t* fold,
                        const uint32_t* zero, const McOpenTask* tasks, const uint64_t* listed,
                        uint64_t count, uint64_t top_offset, uint32_t address_height,
                        uint32_t address_space_height, uint32_t* out) {
    for (uint64_t t = 0; t < count; ++t) {
        mc::openings_body(t, raw, nodes, fold, zero, tasks, listed, count, top_offset,
                          address_height, address_space_height, out);
    }
    return 0;
}

// The header's constants as canonical integers: initial and final external round constants
// (64 each, round-major), internal round constants (13) and the internal diagonal (16).
void mc_emu_poseidon2_constants(uint32_t* initial, uint32_t* final_, uint32_t* internal,
                                uint32_t* diagonal) {
#define MC_CANONICAL_ITEM(x) (uint32_t)(x),
    static const uint32_t i[] = {MC_P2_RC_EXTERNAL_INITIAL(MC_CANONICAL_ITEM)};
    static const uint32_t f[] = {MC_P2_RC_EXTERNAL_FINAL(MC_CANONICAL_ITEM)};
    static const uint32_t n[] = {MC_P2_RC_INTERNAL(MC_CANONICAL_ITEM)};
    static const uint32_t d[] = {MC_P2_INTERNAL_DIAGONAL(MC_CANONICAL_ITEM)};
#undef MC_CANONICAL_ITEM
    for (size_t k = 0; k < 64; ++k) initial[k] = i[k], final_[k] = f[k];
    for (size_t k = 0; k < 13; ++k) internal[k] = n[k];
    for (size_t k = 0; k < 16; ++k) diagonal[k] = d[k];
}

// The Montgomery tables the permutation reads, converted back to canonical: checks the
// compile-time conversion. Same shapes as mc_emu_poseidon2_constants.
void mc_emu_poseidon2_tables(uint32_t* initial, uint32_t* final_, uint32_t* internal,
                             uint32_t* diagonal) {
    for (size_t k = 0; k < 64; ++k) {
        initial[k] = mc::from_monty(MC_TABLE(mc::RC_INITIAL)[k]);
        final_[k] = mc::from_monty(MC_TABLE(mc::RC_FINAL)[k]);
    }
    for (size_t k = 0; k < 13; ++k) internal[k] = mc::from_monty(MC_TABLE(mc::RC_INTERNAL)[k]);
    for (size_t k = 0; k < 16; ++k) diagonal[k] = mc::from_monty(MC_TABLE(mc::DIAGONAL)[k]);
}

// The permutation on 16 canonical values (< p), in place.
void mc_emu_permute(uint32_t* state) {
    for (uint32_t k = 0; k < mc::WIDTH; ++k) state[k] = mc::to_monty(state[k]);
    mc::permute(state);
    for (uint32_t k = 0; k < mc::WIDTH; ++k) state[k] = mc::from_monty(state[k]);
}

// Montgomery product of two canonical values, returned canonical (field arithmetic check).
uint32_t mc_emu_mul(uint32_t a, uint32_t b) {
    return mc::from_monty(mc::mul(mc::to_monty(a), mc::to_monty(b)));
}

// leaf_hash of block `block` of a raw slot, as 8 canonical values.
void mc_emu_leaf_from_raw(const uint8_t* raw, uint32_t cell, uint64_t block, uint32_t* out) {
    mc::leaf_from_raw(raw, cell, block, out);
    for (uint32_t k = 0; k < mc::DIGEST_WORDS; ++k) out[k] = mc::from_monty(out[k]);
}

uint64_t mc_emu_level_offset(uint32_t h, uint32_t b, uint32_t l) {
    return mc::level_offset(h, b, l);
}
uint64_t mc_emu_top_level_offset(uint32_t ash, uint32_t l) { return mc::top_level_offset(ash, l); }
uint64_t mc_emu_top_digests(uint32_t ash) { return mc::top_digests(ash); }
uint32_t mc_emu_stored_base_level(uint32_t h, uint32_t k) { return mc::stored_base_level(h, k); }
// tasks.h's MC_ABSENT_PAGE.
uint64_t mc_emu_absent_page() { return MC_ABSENT_PAGE; }

// Permutations the emulator has run on the calling thread so far.
uint64_t mc_emu_permutations() { return mc::host_permutations; }

// sizeof of McWriteTask, McHashTask, McPairTask, McVerticalTask, McOpenTask.
void mc_emu_task_sizes(uint64_t* out) {
    out[0] = sizeof(McWriteTask);
    out[1] = sizeof(McHashTask);
    out[2] = sizeof(McPairTask);
    out[3] = sizeof(McVerticalTask);
    out[4] = sizeof(McOpenTask);
}

}  // extern "C"
