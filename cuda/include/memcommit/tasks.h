/* Work items the host prepares and the kernels read (C layout; mirrored by #[repr(C)] structs
 * in src/tree/cuda/ffi.rs, sizes checked by tests). Node positions are indices of digests
 * from a base pointer the launch is given (the tree's node array, or a call's fold scratch;
 * see tree_index.h); raw positions are byte offsets in the raw array, which holds every
 * slot's present pages back to back (every block 8-byte aligned: a block is 8, 16 or 32
 * bytes and a page whole blocks). */
#ifndef MEMCOMMIT_TASKS_H
#define MEMCOMMIT_TASKS_H

#include <stdint.h>

/* A raw offset that names no page (kept for the probe's C/Rust check; no kernel reads it
 * since openings take their below-base siblings from the fold scratch). */
#define MC_ABSENT_PAGE UINT64_MAX

/* Write one block's 8 cells into raw memory (update scatter). 48 bytes. */
typedef struct McWriteTask {
    uint64_t raw_byte;  /* byte offset of the block */
    uint32_t cell;      /* cell type code: u8 = 0, u16 = 1, field = 2 */
    uint32_t pad;
    uint32_t cells[8];  /* canonical values, checked to fit `cell` */
} McWriteTask;

/* Levels the block-level subtree kernel folds per launch: log2 of its 256 threads per block. */
#define MC_SUBTREE_LEVELS 8

/* McHashTask.flags: the output goes to the fold scratch (`fold`), not the node array. */
#define MC_HASH_OUT_FOLD 1u

/* One subtree folded by the block-level subtree kernel (cuda/src/subtree_bodies.cuh): the
 * 2^levels nodes from `src` (levels <= MC_SUBTREE_LEVELS) folded to one digest, written to
 * `out_node`. Thread first_thread + j loads node j: the leaf hash of the j-th block from
 * raw byte `src` (cell 0..=2), or fold digest src + j (cell 3, CELL_DIGEST: a previous
 * launch's outputs). A launch's tasks ascend by first_thread, each a multiple of 2^levels,
 * so no task straddles a block of threads. 32 bytes. */
typedef struct McHashTask {
    uint64_t out_node;     /* digest index written, in `nodes` (or `fold`: MC_HASH_OUT_FOLD) */
    uint64_t src;          /* raw byte offset of the first block, or fold index (cell 3) */
    uint64_t first_thread; /* the task's first thread in the launch */
    uint32_t cell;         /* cell code: u8 = 0, u16 = 1, field = 2, digests = 3 */
    uint16_t levels;       /* levels folded in this launch, <= 8 */
    uint16_t flags;        /* MC_HASH_OUT_FOLD */
} McHashTask;

/* parents[parent] = compress(children[left], children[right]). Both children are explicit:
 * above the pages a child may be stored anywhere (a sparse level's pool) or be absent, in
 * which case it names a zero-hash entry. 24 bytes. */
typedef struct McPairTask {
    uint64_t parent;
    uint64_t left;
    uint64_t right;
} McPairTask;

/* A slot's vertical path and its entry in top-tree level 0: node = nodes[slot_root]; for
 * j < count: node = compress(node, zero[height + j]), nodes[first_vertical + j] = node;
 * finally nodes[top_leaf] = node. An empty slot (or an absent one-page slot) uses a zero
 * table index as slot_root. 32 bytes. */
typedef struct McVerticalTask {
    uint64_t slot_root;
    uint64_t first_vertical;
    uint64_t top_leaf;
    uint32_t height;
    uint32_t count;
} McVerticalTask;

/* One opening: the siblings of one block, leaf level first, all copied (the openings kernel
 * hashes nothing):
 * - levels 0 .. listed_from: from the fold scratch at the indices listed[first_listed + j]
 *   (siblings below the stored base level, which the subtree kernel hashed from their pages
 *   before the launch, or zero-table entries of the scratch where nothing is present);
 * - levels listed_from .. height: from the node array at the indices that follow in
 *   `listed` (stored nodes, or zero-table entries where nothing is present);
 * - levels height .. address_height: zero hashes (the vertical path's siblings);
 * - then the top tree's siblings of `slot`.
 * 24 bytes. */
typedef struct McOpenTask {
    uint64_t first_listed; /* index in `listed` of this opening's first entry */
    uint32_t slot;
    uint32_t height;      /* real height h of the slot */
    uint32_t listed_from; /* b: the first stored level */
    uint32_t pad;
} McOpenTask;

#endif
