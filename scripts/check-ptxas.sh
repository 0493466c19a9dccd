#!/usr/bin/env bash
# Resource check of the CUDA kernels, without a GPU: compiles cuda/src/kernels.cu for sm_90 and
# sm_80 with build.rs's nvcc flags plus `-Xptxas -v`, prints each kernel's registers, stack
# frame and spill bytes, and fails (exit 1) if a hash kernel (any kernel not in NON_HASH_KERNELS)
#   - spills (spill stores or loads > 0), or
#   - has a stack frame, unless it is in STACK_EXEMPT, or
#   - uses more than REGISTER_CEILING registers.
# docs/benchmarks.md "CUDA permutation arithmetic (issue 14)" has the figures it was set from.
#
#   scripts/check-ptxas.sh [ARCH ...]     default: sm_90 sm_80
#
# Needs nvcc (NVCC overrides the binary). Run by .ci/run when the CUDA tools are present.
set -euo pipefail
cd "$(dirname "$0")/.."

# Kernels allowed a stack frame: none since the block-level subtree kernel replaced leaf.h's
# per-thread `pending[21][8]` (704 bytes), so any stack frame fails. Names listed here would
# be exempt.
STACK_EXEMPT=""

# Kernels that compute no permutation (byte copies and fills): only the spill check applies.
NON_HASH_KERNELS="scatter_kernel fill_digests_kernel"

# At most 64 registers per thread keeps 32 warps resident per SM (65,536 registers / (64 × 32
# threads)), i.e. half of sm_80/sm_90's 64-warp maximum, enough to hide the IMAD latency of
# the permutation. Issue 14's arithmetic left the largest hash kernel at 63 (openings_kernel,
# sm_80; 55 on sm_90) and compress_level_kernel, the bulk of a build, at 40.
REGISTER_CEILING=64

archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(sm_90 sm_80)
NVCC=${NVCC:-nvcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for arch in "${archs[@]}"; do
  # The flags of build.rs's compile_cuda_device, one architecture at a time.
  "$NVCC" -c -o "$tmp/kernels_$arch.o" -I cuda/include -O3 --expt-relaxed-constexpr -std=c++17 \
    -allow-unsupported-compiler "-gencode=arch=compute_${arch#sm_},code=$arch" -Xptxas -v \
    cuda/src/kernels.cu 2>"$tmp/ptxas_$arch.txt" ||
    { cat "$tmp/ptxas_$arch.txt" >&2; exit 1; }
done

python3 - "$REGISTER_CEILING" "$STACK_EXEMPT" "$NON_HASH_KERNELS" "$tmp" "${archs[@]}" <<'EOF'
import re, sys

ceiling, exempt, non_hash, tmp = int(sys.argv[1]), set(sys.argv[2].split()), set(sys.argv[3].split()), sys.argv[4]
archs = sys.argv[5:]

def kernel_name(mangled):
    """The unqualified name in an Itanium-mangled symbol: its last length-prefixed part."""
    names, i = [], 0
    while i < len(mangled):
        m = re.compile(r"(\d+)").match(mangled, i)
        if m:
            n, start = int(m.group(1)), m.end()
            part = mangled[start:start + n]
            if len(part) == n and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
                names.append(part)
                i = start + n
                continue
        i += 1
    kernels = [n for n in names if n.endswith("_kernel")]
    return kernels[-1] if kernels else (names[-1] if names else mangled)

failures, rows = [], []
for arch in archs:
    cur = None
    props = {}
    for line in open(f"{tmp}/ptxas_{arch}.txt"):
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = kernel_name(m.group(1))
            props[cur] = {}
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and cur in props:
            props[cur].update(stack=int(m.group(1)), st=int(m.group(2)), ld=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and cur in props:
            props[cur]["regs"] = int(m.group(1))
    if not props:
        failures.append(f"{arch}: ptxas reported no kernel")
    for name in sorted(props):
        p = props[name]
        if set(p) != {"stack", "st", "ld", "regs"}:
            failures.append(f"{arch} {name}: could not read ptxas's figures ({p})")
            continue
        why = []
        if p["st"] or p["ld"]:
            why.append("spills")
        if name not in non_hash:
            if p["stack"] and name not in exempt:
                why.append("stack frame")
            if p["regs"] > ceiling:
                why.append(f"registers > {ceiling}")
        note = "FAIL: " + ", ".join(why) if why else ("ok (stack exempt)" if p["stack"] and name in exempt else "ok")
        rows.append((arch, name, p["regs"], p["stack"], p["st"], p["ld"], note))
        failures += [f"{arch} {name}: {w}" for w in why]

print(f"{'arch':<6} {'kernel':<24} {'regs':>4} {'stack':>6} {'spill st':>8} {'spill ld':>8}  check")
for r in rows:
    print(f"{r[0]:<6} {r[1]:<24} {r[2]:>4} {r[3]:>6} {r[4]:>8} {r[5]:>8}  {r[6]}")
print(f"register ceiling {ceiling}; stack exempt: {' '.join(sorted(exempt)) or '(none)'}")
if failures:
    print("check-ptxas: FAILED\n  " + "\n  ".join(failures), file=sys.stderr)
    sys.exit(1)
print("check-ptxas: ok")
EOF
