#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in build/fuzz, and runs
# each for a bounded time, starting from the seed corpus in the tree (new inputs go to a
# scratch corpus under build/fuzz, not into the tree). Exits non-zero if a target crashes or
# fails to run; the crashing input is left in build/fuzz/artifacts/, each target's output in
# build/fuzz/logs/. scripts/test.sh runs it as its `fuzz` stage (5 s per target).
#
# Usage: scripts/fuzz.sh [seconds per target, default 5] [target ...]
#   scripts/fuzz.sh            # CI: a few seconds each
#   scripts/fuzz.sh 300        # five minutes each
#   scripts/fuzz.sh 60 wire_fuzz
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-5}
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(wire_fuzz admission_fuzz tcp_receive_fuzz)
fi

build=build/fuzz
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DDSM_BUILD_FUZZERS=ON \
  -DDSM_BUILD_TESTS=OFF -DDSM_BUILD_BENCH=OFF -DDSM_BUILD_EXAMPLES=OFF >/dev/null
cmake --build "$build" -j2 --target "${targets[@]}"

mkdir -p "$build/artifacts" "$build/logs"
status=0
for t in "${targets[@]}"; do
  work="$build/corpus/$t"
  log="$build/logs/$t.log"
  mkdir -p "$work"
  rm -f "$build/artifacts/$t-"*  # a crash of an earlier run was reported by that run
  echo "fuzz: $t for ${seconds}s"
  # -close_fd_mask=2: the targets' own warnings (closed connections) would flood stderr.
  rc=0
  "$build/tests/fuzz/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -close_fd_mask=2 -artifact_prefix="$build/artifacts/$t-" \
    "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  grep -E "^(stat::(number_of_executed_units|new_units_added|peak_rss_mb)|==|SUMMARY|Done)|crash|ERROR" \
    "$log" || true
  if [[ $rc -ne 0 ]] || ls "$build/artifacts/$t-"* >/dev/null 2>&1; then
    echo "fuzz: $t failed (exit $rc; log $log): $(ls "$build/artifacts/$t-"* 2>/dev/null)" >&2
    status=1
  fi
done
exit $status
