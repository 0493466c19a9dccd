/* Work items the host prepares and the kernels read (C layout; mirrored by #[repr(C)] structs
 * in src/tree/cuda/ffi.rs, sizes checked by tests). Node positions are indices of digests in
 * the flat node array (see tree_index.h); raw positions are byte offsets in the raw buffer,
 * which holds every slot's raw memory, each slot starting 16-byte aligned. */
#ifndef MEMCOMMIT_TASKS_H
#define MEMCOMMIT_TASKS_H

#include <stdint.h>

/* Write one block's 8 cells into raw memory (update scatter). 48 bytes. */
typedef struct McWriteTask {
    uint64_t raw_byte;  /* byte offset of the block */
    uint32_t cell;      /* cell type code: u8 = 0, u16 = 1, field = 2 */
    uint32_t pad;
    uint32_t cells[8];  /* canonical values, checked to fit `cell` */
} McWriteTask;

/* Recompute one stored node from raw memory: the subtree of height `levels` over the
 * 2^levels blocks starting at `raw_byte`. 24 bytes. */
typedef struct McHashTask {
    uint64_t out_node; /* node index written */
    uint64_t raw_byte; /* byte offset of the subtree's first block */
    uint32_t cell;
    uint32_t levels;
} McHashTask;

/* nodes[parent] = compress(nodes[left], nodes[left + 1]). 16 bytes. */
typedef struct McPairTask {
    uint64_t parent;
    uint64_t left;
} McPairTask;

/* A slot's vertical path and its entry in top-tree level 0: node = nodes[slot_root]; for
 * j < count: node = compress(node, zero[height + j]), nodes[first_vertical + j] = node;
 * finally nodes[top_leaf] = node. An empty slot uses slot_root = zero[address_height]'s index
 * and count = 0. 32 bytes. */
typedef struct McVerticalTask {
    uint64_t slot_root;
    uint64_t first_vertical;
    uint64_t top_leaf;
    uint32_t height;
    uint32_t count;
} McVerticalTask;

/* One opening: siblings of block `block` of slot `slot`. 40 bytes. */
typedef struct McOpenTask {
    uint64_t raw_slot_byte; /* byte offset of the slot's raw memory */
    uint64_t slot_node;     /* index of the slot's first stored digest */
    uint64_t block;
    uint32_t slot;
    uint32_t cell;
    uint32_t height; /* real height h of the slot */
    uint32_t base;   /* stored base level b */
} McOpenTask;

#endif
