#!/usr/bin/env bash
# Builds everything a GPU session needs into .gpu/ (ignored by git), so that a machine with a
# GPU but no Rust toolchain runs every test with one command:
#
#   scripts/build-gpu-bundle.sh            # here: needs nvcc (feature `cuda`) and python3
#   .gpu/run-all.sh                        # there, from the repository root; logs go to $OUT
#
# With the device tool: run(command=".gpu/run-all.sh", carry=[".gpu"]).
#
# .gpu/ holds bin.tar.xz (the stripped release test executables of
# `cargo test --release --features cuda`, named after their targets, and the release
# `memcommit` binary built with `--features cuda`), a copy of tests/data, sanitizer.tar.gz
# (compute-sanitizer, when this machine has Debian's) and run-all.sh.
# The executables are packed because, unpacked, they come to about 190 MB, far over the
# device tool's 64 MiB carry limit (xz -9e: about 15 MB; gzip gave 76 MB). They have this
# checkout's absolute paths compiled in (CARGO_MANIFEST_DIR for tests/data,
# CARGO_BIN_EXE_memcommit); run-all.sh recreates those as links on the GPU machine when they
# are missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

command -v python3 >/dev/null || { echo "python3 is needed to read cargo's JSON" >&2; exit 1; }

rm -rf .gpu
mkdir -p .gpu/tests

cargo build --release --features cuda --bin memcommit
# Test executables, one JSON line per artifact; build output goes to stderr.
cargo test --release --features cuda --no-run --message-format=json >.gpu/cargo-test.json

python3 - "$root" <<'EOF'
import json, shutil, sys
root = sys.argv[1]
names = []
for line in open(".gpu/cargo-test.json"):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test"):
        continue
    exe = m.get("executable")
    if not exe:
        continue
    target = m["target"]
    kind = target["kind"][0]
    # Integration tests by name; unit tests of the lib and bin as lib-NAME / bin-NAME.
    name = target["name"] if kind == "test" else f"{kind}-{target['name']}"
    shutil.copy2(exe, f".gpu/tests/{name}")
    names.append(name)
print("test executables:", " ".join(sorted(names)))
EOF
rm .gpu/cargo-test.json

cp target/release/memcommit .gpu/memcommit
strip .gpu/memcommit .gpu/tests/*
# xz with its largest preset: the executables share most of their code, which a long
# dictionary finds across files (gzip's 32 KiB window does not).
tar cf - -C .gpu tests memcommit | xz -9e -T2 >.gpu/bin.tar.xz
rm -r .gpu/tests .gpu/memcommit
cp -r tests/data .gpu/data
# CUDA 11.8's compute-sanitizer (Debian's nvidia-cuda-toolkit), in NVIDIA's one-folder layout,
# for a GPU machine without a toolkit; run-all.sh prefers the machine's own.
sanitizer_libs=/usr/lib/nvidia-cuda-toolkit/compute-sanitizer
if command -v compute-sanitizer >/dev/null && [ -d "$sanitizer_libs" ]; then
  mkdir -p .gpu/sanitizer
  cp "$(command -v compute-sanitizer)" "$sanitizer_libs"/*.so .gpu/sanitizer/
  [ -x /usr/bin/TreeLauncherSubreaper ] && cp /usr/bin/TreeLauncherSubreaper .gpu/sanitizer/
  tar czf .gpu/sanitizer.tar.gz -C .gpu sanitizer
  rm -r .gpu/sanitizer
fi
printf '%s\n' "$root" >.gpu/built-in-root
git rev-parse HEAD >.gpu/commit 2>/dev/null || echo unknown >.gpu/commit
git status --porcelain --untracked-files=no | grep -q . && echo "(with uncommitted changes)" >>.gpu/commit

cat >.gpu/run-all.sh <<'RUN'
#!/usr/bin/env bash
# Runs the GPU checks of the bundle within a time budget (MEMCOMMIT_GPU_BUDGET_S, default 540 s,
# so that the whole command fits the device tool's 10-minute limit on an H200), most valuable
# first; a step that no longer fits is listed as "skipped: time budget":
#   1. cuda_device: the device suite (roots, openings, dense repeats, launch sizes, k = 20);
#   2. cuda_device_faults: a deliberate sticky fault, in its own process (when present);
#   3. compute-sanitizer --tool memcheck, then --tool racecheck, over the device suite with
#      fewer property cases and without the 2^26-leaf and k = 20 cases;
#   4. replays of the bundled trace on cuda and cpu;
#   5. a GPU bench sweep (u16 slots of 2^20 to 2^28 bytes, k 0, 3, 5, cpu and cuda);
#   6. every other test executable (the service tests pick cuda through backend auto).
# Writes to $OUT (or .gpu/logs without it): summary.txt (one line per step: exit status,
# seconds, result line), cuda_device.log, sanitizer-*.log, bench-cuda.log and all.log.
# Exits non-zero if any step that ran failed.
set -uo pipefail
gpu="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$gpu/logs}"
budget="${MEMCOMMIT_GPU_BUDGET_S:-540}"
# Unpack outside the carried folder, which may be read-only.
bin="$(mktemp -d)"
# GNU tar calls xz; without it, Python's tarfile reads xz itself.
tar xJf "$gpu/bin.tar.xz" -C "$bin" 2>/dev/null ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$gpu/bin.tar.xz" "$bin" || { echo "cannot unpack bin.tar.xz (no xz, no python3)"; exit 1; }
# assert_cmd's cargo_bin reads this at run time (cargo test sets it).
export CARGO_BIN_EXE_memcommit="$bin/memcommit"
mkdir -p "$out"
summary="$out/summary.txt"
all="$out/all.log"
: >"$summary"
: >"$all"

# The binaries look for tests/data and memcommit under the checkout they were built in.
built="$(cat "$gpu/built-in-root")"
if [ ! -e "$built/tests/data" ]; then
  mkdir -p "$built/tests" "$built/target/release"
  ln -sfn "$gpu/data" "$built/tests/data"
  ln -sf "$bin/memcommit" "$built/target/release/memcommit"
fi

# compute-sanitizer: the machine's own, else the bundled copy (CUDA 11.8's, built here). One
# counts only with its injection library beside the resolved binary (NVIDIA's layout);
# Debian's /usr/bin copy, for one, cannot find its libraries.
sanitizer=
for c in /usr/local/cuda/bin/compute-sanitizer "$(command -v compute-sanitizer || true)"; do
  [ -n "$c" ] && [ -x "$c" ] || continue
  if [ -f "$(dirname "$(readlink -f "$c")")/libsanitizer-collection.so" ]; then
    sanitizer="$c"
    break
  fi
done
if [ -z "$sanitizer" ] && [ -f "$gpu/sanitizer.tar.gz" ]; then
  tar xzf "$gpu/sanitizer.tar.gz" -C "$bin" && sanitizer="$bin/sanitizer/compute-sanitizer"
fi

{
  echo "bundle of commit $(tr '\n' ' ' <"$gpu/commit")"
  date -u '+%Y-%m-%d %H:%M:%S UTC'
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 || true
  echo "compute-sanitizer: ${sanitizer:-none} $([ -n "$sanitizer" ] && "$sanitizer" --version | tail -1)"
  echo "time budget: ${budget}s"
} | tee -a "$summary" >>"$all"

failed=0
started=$SECONDS
run_step() { # name, cap in seconds, then the command
  local name="$1" cap="$2"; shift 2
  local left=$((budget - (SECONDS - started)))
  if [ "$left" -lt 15 ]; then
    printf '%-34s skipped: time budget\n' "$name" | tee -a "$summary"
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  local log="$out/step.log"
  local start=$SECONDS
  timeout --kill-after=10 "$cap" "$@" >"$log" 2>&1
  local rc=$?
  local result
  result="$(grep -E '^test result:|^replayed |^wrote |ERROR SUMMARY' "$log" | tail -1)"
  [ "$rc" = 124 ] && result="timed out after ${cap}s; $result"
  printf '%-34s rc=%-3s %4ss  %s\n' "$name" "$rc" $((SECONDS - start)) "$result" | tee -a "$summary"
  { echo "===== $name (rc=$rc)"; cat "$log"; } >>"$all"
  case "$name" in
    cuda_device) cp "$log" "$out/cuda_device.log" ;;
    memcheck*) cp "$log" "$out/sanitizer-memcheck.log" ;;
    racecheck*) cp "$log" "$out/sanitizer-racecheck.log" ;;
    bench*) cp "$log" "$out/bench-cuda.log" ;;
  esac
  rm -f "$log"
  [ "$rc" = 0 ] || failed=1
}

cd "$gpu/.."
t="$bin/tests"
run_step cuda_device 180 "$t/cuda_device" --nocapture --test-threads 1
[ -x "$t/cuda_device_faults" ] &&
  run_step cuda_device_faults 60 "$t/cuda_device_faults" --nocapture --test-threads 1
if [ -n "$sanitizer" ]; then
  # Kernels run 10-100x slower under the sanitizer: fewer property cases, no 2^26-leaf or
  # k = 20 slot (the same kernels run there on more data).
  slow=(--skip 2_pow_26 --skip k_20)
  run_step "memcheck cuda_device" 150 env MEMCOMMIT_DEVICE_CASES=6 "$sanitizer" \
    --tool memcheck --error-exitcode 1 \
    "$t/cuda_device" --test-threads 1 "${slow[@]}"
  run_step "racecheck cuda_device" 120 env MEMCOMMIT_DEVICE_CASES=3 "$sanitizer" \
    --tool racecheck --racecheck-report all --error-exitcode 1 \
    "$t/cuda_device" --test-threads 1 "${slow[@]}"
else
  printf '%-34s skipped: no compute-sanitizer\n' sanitizer | tee -a "$summary"
fi
run_step "replay --backend cuda" 60 "$bin/memcommit" replay "$gpu/data/sqlite3.trace.zst" --backend cuda
run_step "replay --backend cpu" 60 "$bin/memcommit" replay "$gpu/data/sqlite3.trace.zst" --backend cpu
run_step "bench --backends cpu,cuda" 150 "$bin/memcommit" bench --out "$out/bench-cuda" \
  --backends cpu,cuda --cells u16 --min-bytes 1048576 --max-bytes 268435456 \
  --omitted-levels 0,3,5 --touched 0.0001,0.01 --repeats 3 \
  --trace "$gpu/data/sqlite3.trace.zst"
for exe in "$t"/*; do
  name="$(basename "$exe")"
  case "$name" in cuda_device | cuda_device_faults) continue ;; esac
  run_step "$name" 60 "$exe"
done

echo "failed=$failed total=$((SECONDS - started))s" | tee -a "$summary"
exit "$failed"
RUN
chmod +x .gpu/run-all.sh

du -sh .gpu
bytes=$(du -sb .gpu | cut -f1)
if [ "$bytes" -gt $((64 << 20)) ]; then
  echo "bundle is $bytes bytes, over the device tool's 64 MiB carry limit" >&2
  exit 1
fi
echo "bundle ready: run .gpu/run-all.sh on the GPU machine (carry .gpu)"
