#!/usr/bin/env bash
# Static SASS instruction count of one Poseidon2-16 permutation (cuda/include/memcommit/
# poseidon2.h), split by instruction class; no GPU needed (docs/benchmarks.md, "CUDA
# permutation arithmetic (issue 14)").
#
#   scripts/sass-count.sh [--rev REV] [ARCH ...]     default: sm_90 sm_80
#
# --rev REV counts the headers of git revision REV instead of the working tree's (e.g.
# `--rev a1738c3`, the headers before issue 14).
#
# Method: two tiny kernels are compiled with build.rs's nvcc flags (-O3, C++17,
# --expt-relaxed-constexpr): `permute_once` loads a 16-word state into registers, calls
# mc::permute once and stores it; `copy_only` does the same loads and stores without the
# permutation. The harness unrolls every loop of the permutation (a `for` macro adding
# `#pragma unroll`; no branch is left), so its static count is its dynamic count, and
# permute_once − copy_only is the permutation alone. The kernels themselves keep the round
# loops rolled: a second build of permute_once without the macro gives that layout's static
# count and, on sm_90 where the loops are plain do-while loops, its dynamic count (loop
# bodies times 4, 13 and 4). Opcodes are read
# from `cuobjdump -sass` (NOP padding and the final EXIT/BRA are in both kernels and cancel).
# Classes: IMAD that multiplies (IMAD, IMAD.WIDE*, IMAD.HI*), IMAD used as a move or add on the
# FMA pipe (IMAD.MOV/.SHL/.IADD/.X), ALU-pipe integer ops (IADD3, LOP3, ISETP, SEL, IMNMX,
# SHF, LEA, ...), and the rest (memory, constant loads, control). Registers and stack of both
# kernels come from `ptxas -v`.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-nvcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
include=cuda/include
if [ "${1:-}" = --rev ]; then
  [ $# -ge 2 ] || { echo "usage: $0 [--rev REV] [ARCH ...]" >&2; exit 2; }
  mkdir "$tmp/rev"
  git archive "$2" cuda/include | tar -x -C "$tmp/rev"
  include=$tmp/rev/cuda/include
  echo "headers of $(git rev-parse --short "$2")"
  shift 2
fi
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(sm_90 sm_80)

cat >"$tmp/perm.cu" <<'EOF'
#include "memcommit/hd.h"
// Every loop of the permutation has a constant trip count: unroll them all, so the kernel has
// no branch and its static instruction count is the dynamic count of one permutation.
#define for _Pragma("unroll") for
#include "memcommit/poseidon2.h"
#undef for

// One state per thread, strided so the loads and stores are plain LDG/STG.
extern "C" __global__ void permute_once(uint32_t* states) {
    uint32_t* p = states + 16 * (blockIdx.x * blockDim.x + threadIdx.x);
    uint32_t s[16];
    for (int i = 0; i < 16; ++i) s[i] = p[i];
    mc::permute(s);
    for (int i = 0; i < 16; ++i) p[i] = s[i];
}

extern "C" __global__ void copy_only(uint32_t* states) {
    uint32_t* p = states + 16 * (blockIdx.x * blockDim.x + threadIdx.x);
    uint32_t s[16];
    for (int i = 0; i < 16; ++i) s[i] = p[i];
    for (int i = 0; i < 16; ++i) p[i] = s[i] ^ 1u;
}
EOF

# The same permute_once as the kernels get it: the compiler's own unrolling (the round loops
# stay loops).
sed -e '/^#define for/d' -e '/^#undef for/d' "$tmp/perm.cu" >"$tmp/perm_rolled.cu"

for arch in "${archs[@]}"; do
  "$NVCC" -cubin -o "$tmp/perm_$arch.cubin" -I "$include" -O3 --expt-relaxed-constexpr \
    -std=c++17 -allow-unsupported-compiler -arch="$arch" -Xptxas -v "$tmp/perm.cu" \
    2>"$tmp/ptxas_$arch.txt"
  cuobjdump -sass "$tmp/perm_$arch.cubin" >"$tmp/sass_$arch.txt"
  "$NVCC" -cubin -o "$tmp/rolled_$arch.cubin" -I "$include" -O3 --expt-relaxed-constexpr \
    -std=c++17 -allow-unsupported-compiler -arch="$arch" "$tmp/perm_rolled.cu"
  cuobjdump -sass "$tmp/rolled_$arch.cubin" >"$tmp/rolled_$arch.txt"
  python3 - "$arch" "$tmp/sass_$arch.txt" "$tmp/ptxas_$arch.txt" "$tmp/rolled_$arch.txt" <<'EOF'
import re, sys
from collections import Counter

arch, sass_path, ptxas_path, rolled_path = sys.argv[1:5]

# Opcodes cuobjdump 11.8 leaves blank for sm_90 (it prints the encoding but no text), by the
# low 12 bits of the first encoding word. 0x248 is what `min.u32` becomes on sm_90 (a kernel
# made of one min.u32 shows exactly one such instruction).
UNDECODED = {0x248: "VIMNMX.U32"}

def instructions(kernel, path=sass_path):
    """(opcode with modifiers, text) of each instruction of `kernel`'s SASS in address order,
    NOPs included. Every sm_80/sm_90 instruction is 128 bits, printed as two encoding
    comments; one whose first line has no text is named from UNDECODED (or
    `UNDECODED_0x...`)."""
    ops, inside, words, text, line_text = [], False, [], None, ""
    for line in open(path):
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            inside = m.group(1) == kernel
            words, text = [], None
            continue
        if not inside:
            continue
        enc = re.search(r"/\* (0x[0-9a-f]{16}) \*/\s*$", line)
        if not enc:
            continue
        if not words:
            m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
            text = m.group(2) if m else None
            line_text = line
        words.append(int(enc.group(1), 16))
        if len(words) == 2:
            op = text or UNDECODED.get(words[0] & 0xFFF, f"UNDECODED_{words[0] & 0xFFF:#x}")
            ops.append((op, line_text))
            words, text = [], None
    return ops

def opcodes(kernel):
    return [op for op, _ in instructions(kernel) if op != "NOP"]

def rolled_dynamic():
    """(static, dynamic) instruction counts of the rolled permute_once when its only branches
    are three conditional back-edges (do-while loops: the 4 initial external rounds, the 13
    internal, the 4 final, in that order), whose bodies run 4, 13 and 4 times; None for any
    other layout."""
    ins = instructions("permute_once", rolled_path)
    loops = []
    for i, (op, text) in enumerate(ins):
        if op.split(".")[0] != "BRA":
            continue
        m = re.search(r"(@!?P\d\s+)?BRA\s+0x([0-9a-f]+)", text)
        if not m:
            return None
        target = int(m.group(2), 16) // 16
        if target == i:  # the self-loop after EXIT
            continue
        if target > i or not m.group(1):
            return None
        loops.append((target, i))
    if len(loops) != 3:
        return None
    real = lambda a, b: sum(1 for j in range(a, b) if ins[j][0] != "NOP")
    static = real(0, len(ins))
    extra = sum((trips - 1) * real(a, b + 1) for (a, b), trips in zip(loops, (4, 13, 4)))
    return static, static + extra

def klass(op):
    base = op.split(".")[0]
    if base == "IMAD":
        mods = set(op.split(".")[1:])
        return "IMAD (move/add)" if mods & {"MOV", "SHL", "IADD", "X"} and not mods & {"WIDE", "HI"} else "IMAD (multiply)"
    if base in {"IADD3", "LOP3", "ISETP", "SEL", "IMNMX", "SHF", "LEA", "MOV", "PRMT", "IABS",
                "FLO", "POPC", "PLOP3", "P2R", "R2P", "VIADD", "VIMNMX", "SGXT", "BMSK", "LOP"}:
        return "ALU"
    return "other"

props = {}
cur = None
for line in open(ptxas_path):
    m = re.search(r"Compiling entry function '(\w+)'", line)
    if m:
        cur = m.group(1)
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
    if m and cur:
        props.setdefault(cur, {}).update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
    m = re.search(r"Used (\d+) registers", line)
    if m and cur:
        props.setdefault(cur, {})["regs"] = int(m.group(1))

perm, copy = Counter(opcodes("permute_once")), Counter(opcodes("copy_only"))
diff = perm.copy()
diff.subtract(copy)
by_class = Counter()
for op, n in diff.items():
    by_class[klass(op)] += n
total = sum(diff.values())
print(f"== {arch}: one permutation (permute_once - copy_only) ==")
print(f"instructions {total}")
for k in ("IMAD (multiply)", "IMAD (move/add)", "ALU", "other"):
    print(f"  {k:<16} {by_class[k]}")
print("  top opcodes:", ", ".join(f"{op} {n}" for op, n in diff.most_common(12) if n))
for k in ("permute_once", "copy_only"):
    p = props.get(k, {})
    print(f"ptxas {k}: {p.get('regs')} registers, {p.get('stack')} B stack, "
          f"{p.get('spill_st')}/{p.get('spill_ld')} B spill stores/loads")
rolled = rolled_dynamic()
copy_n = len(opcodes("copy_only"))
if rolled:
    print(f"as the kernels compile it (round loops rolled): {rolled[0] - copy_n} static, "
          f"{rolled[1] - copy_n} dynamic per permutation")
else:
    print("as the kernels compile it: loop layout not recognised, no dynamic count")
branches = sum(n for op, n in perm.items() if op.split(".")[0] in {"BRA", "BRX", "CALL"})
if branches > 1:
    print(f"warning: {branches} branches in permute_once; the static count is not the dynamic one")
EOF
done
