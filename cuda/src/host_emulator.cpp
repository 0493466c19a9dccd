// Host build of the CUDA code and its kernel emulator (always compiled by build.rs with the
// system C++ compiler; no nvcc). Each mc_emu_* launch twin runs the kernel body for every
// thread index, as one launch of memcommit/launchers.h would on the device, in a shuffled
// order keyed by its `order` argument: a GPU runs a launch's threads in any order, so a plan
// whose tasks depend on each other within one launch gives a wrong result here instead of
// passing by luck. The caller launches level by level exactly as it does on a GPU. The
// remaining exports give tests the header's constants, permutation, leaf encoding and index
// arithmetic.
//
// Launch twins also take `lens`: the bytes each pointer argument may reach (to the end of its
// allocation), in argument order. They check every thread's accesses against them before
// running any thread. Returns: 0; 1 for bad arguments (a subtree launch's levels above
// MC_SUBTREE_LEVELS, a malformed task list); MC_EMU_OUT_OF_BOUNDS (2) when some thread would
// touch memory outside its buffers (nothing ran); for the subtree kernels, which run block by
// block and phase by phase (see run_blocks), MC_EMU_SHARED_RACE (3) or
// MC_EMU_SHARED_OUT_OF_RANGE (4), with the details in `*fault` (the launch stopped there,
// part of its writes done). Pointers follow launchers.h.
#include <stddef.h>

#include <vector>

#include "build_bodies.cuh"
#include "memcommit/tree_index.h"
#include "opening_bodies.cuh"
#include "fused_bodies.cuh"
#include "page_round_bodies.cuh"
#include "subtree_bodies.cuh"
#include "update_bodies.cuh"

// Where a block-level launch broke the shared-memory rules (mirrored by ffi::EmuFault).
// 32 bytes.
struct McEmuFault {
    uint64_t block;  // block index in the launch
    uint64_t word;   // shared word index
    uint32_t phase;  // phase (between two barriers) of the access
    uint32_t thread; // the thread whose access failed
    uint32_t other;  // the other thread of a race (UINT32_MAX: none)
    uint32_t pad;
};

namespace {

// A bijection on [0, n) keyed by `key`: two keyed rounds of add, odd multiply and
// xor-shift on the smallest power-of-two domain holding n (each a bijection there), walked
// until the value falls below n (cycle walking keeps it a bijection on [0, n)).
class ThreadOrder {
  public:
    ThreadOrder(uint64_t n, uint64_t key) : n_(n) {
        while (bits_ < 64 && (uint64_t{1} << bits_) < n) ++bits_;
        mask_ = bits_ == 64 ? ~uint64_t{0} : (uint64_t{1} << bits_) - 1;
        shift_ = bits_ / 2 > 0 ? bits_ / 2 : 1;
        add_[0] = key;
        add_[1] = key >> 32 | key << 32;
        mul_[0] = (key * 0x9e3779b97f4a7c15ull) | 1;
        mul_[1] = (key * 0xbf58476d1ce4e5b9ull) | 1;
    }

    uint64_t at(uint64_t i) const {
        uint64_t x = i;
        do {
            for (int r = 0; r < 2; ++r) {
                x = (x + add_[r]) & mask_;
                x = (x * mul_[r]) & mask_;
                x ^= x >> shift_;
            }
        } while (x >= n_);
        return x;
    }

  private:
    uint64_t n_;
    uint32_t bits_ = 0;
    uint64_t mask_ = 0;
    uint32_t shift_ = 1;
    uint64_t add_[2];
    uint64_t mul_[2];
};

// Runs body(t) once for every t < count, in the order `order` keys.
template <class Body>
void for_each_thread(uint64_t count, uint64_t order, Body body) {
    const ThreadOrder o(count, order);
    for (uint64_t i = 0; i < count; ++i) body(o.at(i));
}

// Bounds checks: before a launch runs any thread, every thread's device-memory accesses are
// checked against the bytes its buffers hold (from each pointer to the end of its
// allocation, passed in `lens` in the order of the pointer arguments), so a bad index makes
// the launch return MC_EMU_OUT_OF_BOUNDS instead of touching memory it does not own.
constexpr int32_t MC_EMU_OUT_OF_BOUNDS = 2;
constexpr uint64_t D = mc::DIGEST_WORDS * sizeof(uint32_t);
using u128 = unsigned __int128;

// Whether `count` elements of `size` bytes from element `index` lie in `len` bytes.
bool fits(uint64_t len, u128 index, u128 size, u128 count = 1) {
    return (index + count) * size <= len;
}

bool cell_ok(uint32_t cell) { return cell <= mc::CELL_FIELD; }

// Runs check(t) for every t < count (in order), then, when all pass, body(t) in the order
// `order` keys; returns 0, or MC_EMU_OUT_OF_BOUNDS without running any thread.
template <class Check, class Body>
int32_t checked_launch(uint64_t count, uint64_t order, Check check, Body body) {
    for (uint64_t t = 0; t < count; ++t) {
        if (!check(t)) return MC_EMU_OUT_OF_BOUNDS;
    }
    for_each_thread(count, order, body);
    return 0;
}

// A vertical task `k` in bounds of nodes (lens_nodes) and zero (lens_zero).
bool vertical_ok(const McVerticalTask& k, uint64_t lens_nodes, uint64_t lens_zero) {
    return fits(lens_nodes, k.slot_root, D) && fits(lens_zero, k.height, D, k.count) &&
           fits(lens_nodes, k.first_vertical, D, k.count) && fits(lens_nodes, k.top_leaf, D);
}

// A pair task `k` in bounds of its children and parents arrays.
bool pair_ok(const McPairTask& k, uint64_t lens_children, uint64_t lens_parents) {
    return fits(lens_children, k.left, D) && fits(lens_children, k.right, D) &&
           fits(lens_parents, k.parent, D);
}

// Thread t of page round `step` in bounds (lens: nodes, slots, list), mirroring
// page_round_body's index arithmetic.
bool page_round_ok(const McPageSlot* slots, const McPageNode* list, uint64_t t, uint32_t step,
                   uint64_t lens_nodes, uint64_t lens_slots, uint64_t lens_list) {
    if (!fits(lens_list, t, sizeof(McPageNode))) return false;
    const McPageNode& n = list[t];
    if (!fits(lens_slots, n.slot, sizeof(McPageSlot))) return false;
    const McPageSlot& s = slots[n.slot];
    if (!(s.base <= s.top && s.top < 63)) return false;
    const uint64_t l = (uint64_t)s.base + 1 + step;
    if (l > s.top) return true;
    const uint64_t c = n.coord >> (l - s.base);
    const u128 children =
        (u128)s.page_nodes + (u128)s.pages * mc::level_offset(s.top, s.base, l - 1);
    const u128 parents = (u128)s.page_nodes + (u128)s.pages * mc::level_offset(s.top, s.base, l);
    return fits(lens_nodes, children + 2 * (u128)c, D, 2) && fits(lens_nodes, parents + c, D);
}

// The block model (subtree kernels): a launch's blocks run one after another, in an order
// keyed by the launch; within a block, phase p (what the device runs between two
// __syncthreads) runs for every thread, in an order keyed by (launch, block, p), before
// phase p + 1. Shared memory is a per-block host array reached through SharedRef, which
// bounds-checks every word and records, per phase, the word's writer and readers: a word
// written by one thread and read or written by another in the same phase is a race (on a
// GPU its value would depend on the threads' timing).
constexpr int32_t MC_EMU_SHARED_RACE = 3;
constexpr int32_t MC_EMU_SHARED_OUT_OF_RANGE = 4;
constexpr uint32_t NO_THREAD = UINT32_MAX;

class SharedState {
  public:
    explicit SharedState(uint32_t words) : words_(words), marks_(words) {}

    // A fresh block: every word poisoned (a read of a word no thread wrote gives a wrong
    // digest, not a stale one) and no accesses recorded.
    void begin_block(uint64_t block) {
        for (auto& w : words_) w = 0xdeadbeefu;
        block_ = block;
        ++epoch_;
    }
    void begin_phase(uint32_t phase) {
        phase_ = phase;
        ++epoch_;
    }
    void set_thread(uint32_t thread) { thread_ = thread; }
    int32_t code() const { return code_; }
    const McEmuFault& fault() const { return fault_; }

    uint32_t load(uint32_t i) {
        Mark* m = mark(i);
        if (m == nullptr) return 0;
        if (m->writer != NO_THREAD && m->writer != thread_) fail(MC_EMU_SHARED_RACE, i, m->writer);
        if (m->reader == NO_THREAD || m->reader == thread_) {
            m->reader = thread_;
        } else {
            m->other_reader = thread_;
        }
        return words_[i];
    }
    void store(uint32_t i, uint32_t v) {
        Mark* m = mark(i);
        if (m == nullptr) return;
        if (m->writer != NO_THREAD && m->writer != thread_) fail(MC_EMU_SHARED_RACE, i, m->writer);
        if (m->reader != NO_THREAD && m->reader != thread_) fail(MC_EMU_SHARED_RACE, i, m->reader);
        if (m->other_reader != NO_THREAD && m->other_reader != thread_) {
            fail(MC_EMU_SHARED_RACE, i, m->other_reader);
        }
        m->writer = thread_;
        words_[i] = v;
    }

  private:
    struct Mark {
        uint64_t epoch = 0;
        uint32_t writer = NO_THREAD;
        uint32_t reader = NO_THREAD;
        uint32_t other_reader = NO_THREAD;  // some reader other than `reader`
    };

    // The word's record for this phase, or nullptr (and a fault) outside the array.
    Mark* mark(uint32_t i) {
        if (i >= words_.size()) {
            fail(MC_EMU_SHARED_OUT_OF_RANGE, i, NO_THREAD);
            return nullptr;
        }
        Mark* m = &marks_[i];
        if (m->epoch != epoch_) *m = Mark{epoch_, NO_THREAD, NO_THREAD, NO_THREAD};
        return m;
    }
    void fail(int32_t code, uint32_t word, uint32_t other) {
        if (code_ != 0) return;
        code_ = code;
        fault_ = McEmuFault{block_, word, phase_, thread_, other, 0};
    }

    std::vector<uint32_t> words_;
    std::vector<Mark> marks_;
    uint64_t epoch_ = 0;
    uint64_t block_ = 0;
    uint32_t phase_ = 0;
    uint32_t thread_ = 0;
    int32_t code_ = 0;
    McEmuFault fault_{};
};

// What a phase body sees of shared memory on the host (DirectShared on the device).
struct SharedRef {
    SharedState* state;
    uint32_t load(uint32_t i) const { return state->load(i); }
    void store(uint32_t i, uint32_t v) const { state->store(i, v); }
};

// Runs phases 0..=last of `threads` threads in blocks of SUBTREE_THREADS (see above):
// phase(p, block, thread, shared) for each. Returns 0, or a shared-memory fault's code with
// the fault in `*fault` (the launch stops at the faulting access's thread).
template <class Phase>
int32_t run_blocks(uint64_t threads, uint32_t last, uint32_t shared_words, uint64_t order,
                   McEmuFault* fault, Phase phase) {
    const uint64_t blocks = (threads + mc::SUBTREE_THREADS - 1) / mc::SUBTREE_THREADS;
    SharedState state(shared_words);
    const SharedRef sh{&state};
    const ThreadOrder block_order(blocks, order);
    for (uint64_t bi = 0; bi < blocks; ++bi) {
        const uint64_t block = block_order.at(bi);
        state.begin_block(block);
        for (uint32_t p = 0; p <= last; ++p) {
            state.begin_phase(p);
            const uint64_t key = order ^ (block + 1) * 0x9e3779b97f4a7c15ull ^
                                 (uint64_t{p} + 1) * 0xc2b2ae3d27d4eb4full;
            const ThreadOrder thread_order(mc::SUBTREE_THREADS, key);
            for (uint32_t j = 0; j < mc::SUBTREE_THREADS; ++j) {
                const uint32_t t = (uint32_t)thread_order.at(j);
                state.set_thread(t);
                phase(p, block, t, sh);
                if (state.code() != 0) {
                    *fault = state.fault();
                    return state.code();
                }
            }
        }
    }
    return 0;
}

}  // namespace

extern "C" {

int32_t mc_emu_zero_hashes(uint32_t* zero, uint32_t count, const uint64_t* lens) {
    if (!fits(lens[0], 0, D, count)) return MC_EMU_OUT_OF_BOUNDS;
    mc::zero_hashes_body(0, zero, count);
    return 0;
}

// lens: src, out.
int32_t mc_emu_build_base(const uint8_t* src, uint32_t cell, uint32_t levels, uint32_t* out,
                          uint64_t count, uint64_t order, const uint64_t* lens,
                          McEmuFault* fault) {
    if (levels > mc::SUBTREE_LEVELS || cell > mc::CELL_DIGEST || count > (uint64_t{1} << 32)) {
        return 1;
    }
    const u128 nodes = (u128)count << levels;
    const uint64_t node_bytes = cell == mc::CELL_DIGEST ? D : mc::block_bytes(cell);
    if (!fits(lens[0], 0, node_bytes, nodes) || !fits(lens[1], 0, D, count)) {
        return MC_EMU_OUT_OF_BOUNDS;
    }
    const mc::UniformJob job{src, cell, levels, out, count};
    return run_blocks((uint64_t)nodes, levels, mc::SUBTREE_SHARED_WORDS, order, fault,
                      [&](uint32_t p, uint64_t block, uint32_t t, const SharedRef& sh) {
                          mc::subtree_phase(p, block, t, sh, job);
                      });
}

// lens: children, parents.
int32_t mc_emu_compress_level(const uint32_t* children, uint32_t* parents, uint64_t count,
                              uint64_t order, const uint64_t* lens) {
    return checked_launch(
        count, order,
        [&](uint64_t t) { return fits(lens[0], (u128)2 * t, D, 2) && fits(lens[1], t, D); },
        [&](uint64_t t) { mc::compress_level_body(t, children, parents, count); });
}

// lens: nodes, zero, tasks.
int32_t mc_emu_vertical(uint32_t* nodes, const uint32_t* zero, const McVerticalTask* tasks,
                        uint64_t count, uint64_t order, const uint64_t* lens) {
    return checked_launch(
        count, order,
        [&](uint64_t t) {
            return fits(lens[2], t, sizeof(McVerticalTask)) &&
                   vertical_ok(tasks[t], lens[0], lens[1]);
        },
        [&](uint64_t t) { mc::vertical_body(t, nodes, zero, tasks, count); });
}

// lens: raw, tasks, bytes.
int32_t mc_emu_scatter(uint8_t* raw, const McWriteTask* tasks, const uint8_t* bytes,
                       uint64_t count, uint64_t order, const uint64_t* lens) {
    return checked_launch(
        count, order,
        [&](uint64_t t) {
            if (!fits(lens[1], t, sizeof(McWriteTask))) return false;
            const McWriteTask& k = tasks[t];
            return cell_ok(k.cell) && k.raw_byte % 8 == 0 && k.src_byte % 8 == 0 &&
                   fits(lens[0], k.raw_byte, 1, mc::block_bytes(k.cell)) &&
                   fits(lens[2], k.src_byte, 1, mc::block_bytes(k.cell));
        },
        [&](uint64_t t) { mc::scatter_body(t, raw, tasks, bytes, count); });
}

// lens: raw, fold, nodes, tasks. A task list must ascend by first_thread, each task aligned
// to its 2^levels threads, with levels <= `levels`, and `threads` must be the last task's end
// (else 1).
int32_t mc_emu_hash_tasks(const uint8_t* raw, uint32_t* fold, uint32_t* nodes,
                          const McHashTask* tasks, uint64_t count, uint64_t threads,
                          uint32_t levels, uint64_t order, const uint64_t* lens,
                          McEmuFault* fault) {
    if (count == 0) return 0;
    if (levels > mc::SUBTREE_LEVELS || count > 0xffffffffull) return 1;
    if (!fits(lens[3], 0, sizeof(McHashTask), count)) return MC_EMU_OUT_OF_BOUNDS;
    uint64_t end = 0;
    for (uint64_t i = 0; i < count; ++i) {
        const McHashTask& k = tasks[i];
        const uint64_t width = uint64_t{1} << (k.levels > 63 ? 63 : k.levels);
        if (k.levels > levels || k.first_thread % width != 0 || k.first_thread < end ||
            k.first_thread + width > threads || k.cell > mc::CELL_DIGEST ||
            (k.flags & ~MC_HASH_OUT_FOLD) != 0) {
            return 1;
        }
        end = k.first_thread + width;
        const bool from_fold = k.cell == mc::CELL_DIGEST;
        const bool in_range =
            from_fold ? fits(lens[1], k.src, D, width)
                      : fits(lens[0], k.src, 1, (u128)mc::block_bytes(k.cell) * width);
        const bool out_ok = fits((k.flags & MC_HASH_OUT_FOLD) ? lens[1] : lens[2], k.out_node, D);
        if (!in_range || !out_ok) return MC_EMU_OUT_OF_BOUNDS;
    }
    if (threads != end) return 1;
    const mc::ListJob job{raw, fold, nodes, tasks, count};
    return run_blocks(threads, levels, mc::SUBTREE_SHARED_WORDS, order, fault,
                      [&](uint32_t p, uint64_t block, uint32_t t, const SharedRef& sh) {
                          mc::subtree_phase(p, block, t, sh, job);
                      });
}

// A test-only block kernel (one block, phases 0 and 1, 256 words of shared memory) for the
// block model's checks: mode 0 is sound (each thread writes its word in phase 0 and reads its
// neighbour's in phase 1); mode 1 reads the neighbour's word in the phase that writes it
// (a race); mode 2 has every thread write word 0 (a race); mode 3 has thread 7 write one word
// past the array. Returns as the subtree twins do.
int32_t mc_emu_block_check(uint32_t mode, uint64_t order, McEmuFault* fault) {
    constexpr uint32_t WORDS = mc::SUBTREE_THREADS;
    return run_blocks(mc::SUBTREE_THREADS, 1, WORDS, order, fault,
                      [&](uint32_t p, uint64_t, uint32_t t, const SharedRef& sh) {
                          const uint32_t next = (t + 1) % mc::SUBTREE_THREADS;
                          if (p == 0) {
                              sh.store(mode == 2 ? 0 : t, t);
                              if (mode == 1) sh.load(next);
                              if (mode == 3 && t == 7) sh.store(WORDS, t);
                          } else {
                              sh.load(next);
                          }
                      });
}

// lens: out, value.
int32_t mc_emu_fill_digests(uint32_t* out, const uint32_t* value, uint64_t count,
                            uint64_t order, const uint64_t* lens) {
    return checked_launch(
        count, order, [&](uint64_t t) { return fits(lens[0], t, D) && fits(lens[1], 0, D); },
        [&](uint64_t t) { mc::fill_digests_body(t, out, value, count); });
}

// lens: children, parents, tasks.
int32_t mc_emu_compress_pairs(const uint32_t* children, uint32_t* parents,
                              const McPairTask* tasks, uint64_t count, uint64_t order,
                              const uint64_t* lens) {
    return checked_launch(
        count, order,
        [&](uint64_t t) {
            return fits(lens[2], t, sizeof(McPairTask)) && pair_ok(tasks[t], lens[0], lens[1]);
        },
        [&](uint64_t t) { mc::compress_pairs_body(t, children, parents, tasks, count); });
}

// lens: nodes, fold, zero, tasks, listed, out. Mirrors openings_body's reads level by level.
int32_t mc_emu_openings(const uint32_t* nodes, const uint32_t* fold,
                        const uint32_t* zero, const McOpenTask* tasks, const uint64_t* listed,
                        uint64_t count, uint64_t top_offset, uint32_t address_height,
                        uint32_t address_space_height, uint32_t* out, uint64_t order,
                        const uint64_t* lens) {
    const uint32_t ah = address_height, ash = address_space_height;
    if (ash >= 63) return MC_EMU_OUT_OF_BOUNDS;
    auto check = [&](uint64_t t) {
        if (!fits(lens[3], t, sizeof(McOpenTask))) return false;
        const McOpenTask& k = tasks[t];
        if (!fits(lens[5], (u128)(ah + ash) * t, D, ah + ash)) return false;
        if (!(k.listed_from <= k.height && k.height <= ah)) return false;
        if (!fits(lens[4], k.first_listed, sizeof(uint64_t), k.height)) return false;
        const uint64_t* list = listed + k.first_listed;
        for (uint32_t l = 0; l < k.height; ++l, ++list) {
            if (!fits(l < k.listed_from ? lens[1] : lens[0], *list, D)) return false;
        }
        if (!fits(lens[2], k.height, D, ah - k.height)) return false;
        for (uint32_t l = 0; l < ash; ++l) {
            const u128 index = (u128)top_offset + mc::top_level_offset(ash, l) +
                               (((uint64_t)k.slot >> l) ^ 1);
            if (!fits(lens[0], index, D)) return false;
        }
        return true;
    };
    return checked_launch(count, order, check, [&](uint64_t t) {
        mc::openings_body(t, nodes, fold, zero, tasks, listed, count, top_offset,
                          address_height, address_space_height, out);
    });
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
// lens: nodes, slots, list.
int32_t mc_emu_page_round(uint32_t* nodes, const McPageSlot* slots, const McPageNode* list,
                          uint64_t count, uint32_t step, uint64_t order, const uint64_t* lens) {
    return checked_launch(
        count, order,
        [&](uint64_t t) { return page_round_ok(slots, list, t, step, lens[0], lens[1], lens[2]); },
        [&](uint64_t t) { mc::page_round_body(t, nodes, slots, list, count, step); });
}

// lens: phases, nodes, fold, zero, staging, page_slots, page_nodes. The block model of the
// fused kernel: every phase's tasks are checked first (nothing runs on a failure), then each
// phase runs all its tasks, in a shuffled order, before the next (the block barrier).
int32_t mc_emu_fused(const McPhase* phases, uint32_t phase_count, uint32_t* nodes,
                     uint32_t* fold, const uint32_t* zero, const uint8_t* staging,
                     const McPageSlot* page_slots, const McPageNode* page_nodes,
                     uint64_t order, const uint64_t* lens) {
    if (!fits(lens[0], 0, sizeof(McPhase), phase_count)) return MC_EMU_OUT_OF_BOUNDS;
    for (uint32_t p = 0; p < phase_count; ++p) {
        const McPhase& ph = phases[p];
        const uint64_t reach = ph.tasks_byte <= lens[4] ? lens[4] - ph.tasks_byte : 0;
        const uint8_t* tasks = staging + ph.tasks_byte;
        for (uint64_t t = 0; t < ph.count; ++t) {
            bool ok = false;
            switch (ph.kind) {
                case MC_PHASE_PAIRS_NODES:
                case MC_PHASE_PAIRS_FOLD:
                case MC_PHASE_PAIRS_FOLD_TO_NODES: {
                    const uint64_t children = ph.kind == MC_PHASE_PAIRS_NODES ? lens[1] : lens[2];
                    const uint64_t parents = ph.kind == MC_PHASE_PAIRS_FOLD ? lens[2] : lens[1];
                    ok = fits(reach, t, sizeof(McPairTask)) &&
                         pair_ok(((const McPairTask*)tasks)[t], children, parents);
                    break;
                }
                case MC_PHASE_VERTICAL:
                    ok = fits(reach, t, sizeof(McVerticalTask)) &&
                         vertical_ok(((const McVerticalTask*)tasks)[t], lens[1], lens[3]);
                    break;
                case MC_PHASE_PAGE_ROUND:
                    ok = page_round_ok(page_slots, page_nodes, t, ph.step, lens[1], lens[5],
                                       lens[6]);
                    break;
                default:
                    ok = false;
            }
            if (!ok) return MC_EMU_OUT_OF_BOUNDS;
        }
    }
    for (uint32_t p = 0; p < phase_count; ++p) {
        const McPhase ph = phases[p];
        // Each phase gets its own order, as separate launches would.
        for_each_thread(ph.count, order + p * 0x9e3779b97f4a7c15ull, [&](uint64_t t) {
            mc::fused_phase_body(t, ph, nodes, fold, zero, staging, page_slots, page_nodes);
        });
    }
    return 0;
}

void mc_emu_task_sizes(uint64_t* out) {
    out[0] = sizeof(McWriteTask);
    out[1] = sizeof(McHashTask);
    out[2] = sizeof(McPairTask);
    out[3] = sizeof(McVerticalTask);
    out[4] = sizeof(McOpenTask);
}

void mc_emu_page_task_sizes(uint64_t* out) {
    out[0] = sizeof(McPageSlot);
    out[1] = sizeof(McPageNode);
    out[2] = sizeof(McPhase);
}

}  // extern "C"
