#!/usr/bin/env bash
# Builds everything a GPU session needs into .gpu/ (ignored by git), so that a machine with a
# GPU but no Rust toolchain runs every test with one command:
#
#   scripts/build-gpu-bundle.sh            # here: needs nvcc (feature `cuda`) and python3
#   .gpu/run-all.sh                        # there, from the repository root; logs go to $OUT
#
# With the device tool: run(command=".gpu/run-all.sh", carry=[".gpu"]).
#
# .gpu/ holds bin.tar.gz (the stripped release test executables of
# `cargo test --release --features cuda`, named after their targets, and the release
# `memcommit` binary built with `--features cuda`), a copy of tests/data, and run-all.sh.
# The executables are packed because, unpacked, they come to about 56 MB, too close to the
# device tool's 64 MiB carry limit (packed: about 21 MB). They have this checkout's absolute
# paths compiled in (CARGO_MANIFEST_DIR for tests/data, CARGO_BIN_EXE_memcommit); run-all.sh
# recreates those as links on the GPU machine when they are missing there.
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
tar czf .gpu/bin.tar.gz -C .gpu tests memcommit
rm -r .gpu/tests .gpu/memcommit
cp -r tests/data .gpu/data
printf '%s\n' "$root" >.gpu/built-in-root
git rev-parse HEAD >.gpu/commit 2>/dev/null || echo unknown >.gpu/commit
git status --porcelain --untracked-files=no | grep -q . && echo "(with uncommitted changes)" >>.gpu/commit

cat >.gpu/run-all.sh <<'RUN'
#!/usr/bin/env bash
# Runs every test executable of the bundle, then a cuda replay of the bundled trace.
# Writes to $OUT (or .gpu/logs without it): summary.txt (one line per step with its exit
# status and result line), cuda_device.log (the device tests, with output) and all.log.
# Exits non-zero if any step failed.
set -uo pipefail
gpu="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$gpu/logs}"
# Unpack the executables outside the carried folder, which may be read-only.
bin="$(mktemp -d)"
tar xzf "$gpu/bin.tar.gz" -C "$bin" || exit 1
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

{
  echo "bundle of commit $(cat "$gpu/commit" | tr '\n' ' ')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv 2>&1 || true
} | tee -a "$summary" >>"$all"

failed=0
run_step() { # name, then the command
  local name="$1"; shift
  local log="$out/step.log"
  local start=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  local result
  result="$(grep -E '^test result:|^replayed |^wrote ' "$log" | tail -1)"
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" $((SECONDS - start)) "$result" | tee -a "$summary"
  { echo "===== $name (rc=$rc)"; cat "$log"; } >>"$all"
  [ "$name" = cuda_device ] && cp "$log" "$out/cuda_device.log"
  case "$name" in bench*) cp "$log" "$out/bench-cuda.log" ;; esac
  rm -f "$log"
  [ "$rc" = 0 ] || failed=1
}

cd "$gpu/.."
for t in "$bin"/tests/*; do
  name="$(basename "$t")"
  if [ "$name" = cuda_device ]; then
    run_step "$name" "$t" --nocapture --test-threads 1
  else
    run_step "$name" "$t"
  fi
done
run_step "replay --backend cuda" "$bin/memcommit" replay "$gpu/data/sqlite3.trace.zst" --backend cuda
run_step "replay --backend cpu" "$bin/memcommit" replay "$gpu/data/sqlite3.trace.zst" --backend cpu
# The GPU sweep of issue 4 (bench.json, bench.svg and the table land in $OUT/bench-cuda):
# u16 slots of 2^20 to 2^30 bytes at k 0..5 on cpu and cuda with the p3 baseline, and the
# bundled trace replayed in-process and through gRPC on both backends.
run_step "bench --backends cpu,cuda" "$bin/memcommit" bench --out "$out/bench-cuda" \
  --backends cpu,cuda --cells u16 --min-bytes 1048576 --max-bytes 1073741824 \
  --omitted-levels 0,1,2,3,4,5 --touched 0.0001,0.001,0.01 --repeats 5 \
  --trace "$gpu/data/sqlite3.trace.zst"

echo "failed=$failed" | tee -a "$summary"
exit "$failed"
RUN
chmod +x .gpu/run-all.sh

du -sh .gpu
echo "bundle ready: run .gpu/run-all.sh on the GPU machine (carry .gpu)"
