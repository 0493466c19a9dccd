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

/* Write one block into raw memory (update scatter): its 8, 16 or 32 bytes, little-endian as
 * raw memory holds them, lie at `src_byte` of the launch's packed block bytes, so a u8 block
 * uploads 8 bytes of cells, not 8 words. 16 bytes. */
typedef struct McWriteTask {
    uint64_t raw_byte;  /* byte offset of the block in raw memory (a multiple of 8) */
    uint32_t src_byte;  /* byte offset of its bytes in the packed block bytes (a multiple of 8) */
    uint32_t cell;      /* cell type code: u8 = 0, u16 = 1, field = 2 */
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

/* One slot's page levels, for the page rounds the device derives (McPageNode). 24 bytes. */
typedef struct McPageSlot {
    uint64_t page_nodes; /* node index of the slot's level-b region, where its page levels start */
    uint64_t pages;      /* P: the slot's present pages (level l holds P * 2^(q - l) digests) */
    uint32_t base;       /* b: the stored base level */
    uint32_t top;        /* q: the page levels */
} McPageSlot;

/* A written stored base-level node inside its slot's pages. An update uploads the sorted list
 * of these instead of a pair list per page level: node n's ancestor at level l <= q sits at
 * coord >> (l - b) in level l's region, and the first node of each run of equal ancestors
 * computes it (the list is sorted by slot and block, so equal ancestors are adjacent).
 * 16 bytes. */
typedef struct McPageNode {
    uint64_t coord; /* (page id << (q - b)) + the node's index within its page at level b */
    uint32_t slot;  /* index into the launch's McPageSlot table */
    uint32_t pad;
} McPageNode;

/* What a McPhase runs. */
#define MC_PHASE_PAIRS_NODES 0u         /* McPairTask, children and parents in the node array */
#define MC_PHASE_PAIRS_FOLD 1u          /* McPairTask, both in the fold scratch */
#define MC_PHASE_PAIRS_FOLD_TO_NODES 2u /* McPairTask, children in the scratch, parents in nodes */
#define MC_PHASE_VERTICAL 3u            /* McVerticalTask */
#define MC_PHASE_PAGE_ROUND 4u          /* McPageNode, round `step` (the launch's page list) */

/* One phase of a fused launch: `count` tasks of `kind` at byte offset `tasks_byte` of the
 * launch's staging buffer (page rounds use the launch's page list instead). 24 bytes. */
typedef struct McPhase {
    uint64_t tasks_byte;
    uint64_t count;
    uint32_t kind;
    uint32_t step;
} McPhase;

#endif
