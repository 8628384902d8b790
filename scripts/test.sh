#!/usr/bin/env bash
# The whole check, as CI runs it: install dependencies, then for each stage configure with a
# preset, build with every core and run its tests.
#
# Usage: scripts/test.sh              every stage, in this order:
#                                       ci         RelWithDebInfo, -Werror: build, every test
#                                                  (the layering check is one of them)
#                                       mutation   tests/coherence/mutation_check.py on the ci
#                                                  build: every protocol mutation must fail a test
#                                       clang-tsa  clang -Wthread-safety -Werror: build only
#                                       no-rdma    DSM_WITH_RDMA=OFF: build everything, run
#                                                  the tests the RDMA switch changes (the RDMA
#                                                  logic over the fake verbs, transports,
#                                                  the install test)
#                                       asan       ASan + UBSan: build, every test
#                                       fuzz       clang libFuzzer targets (tests/fuzz), each
#                                                  run 5 s from the seed corpus (scripts/fuzz.sh;
#                                                  the stage, its build included, takes ~90 s)
#        scripts/test.sh <preset>     one preset: configure, build, run its tests (clang-tsa:
#                                     build only), e.g. scripts/test.sh asan
#        scripts/test.sh mutation     the mutation check alone (configures and builds `ci`)
#        scripts/test.sh fuzz         the fuzz stage alone (DSM_FUZZ_SECONDS per target, default 5)
# Env:   DSM_TEST_JOBS (ctest -j, default: nproc), DSM_TEST_TIMEOUT (per test, default 600 s)
#
# Each stage prints its wall time; a failing stage stops the run with its output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

jobs="$(nproc)"

stage() {  # stage <name> <command...>: runs the command, reports its wall time
  local name="$1" start
  shift
  start=$(date +%s)
  echo "=== ${name}: start"
  "$@"
  echo "=== ${name}: done in $(($(date +%s) - start)) s"
}

build() {  # build <preset>
  cmake --preset "$1"
  cmake --build --preset "$1" -j"$jobs"
}

run_tests() {  # run_tests <preset>
  ctest --preset "$1" -j"${DSM_TEST_JOBS:-$jobs}" --timeout "${DSM_TEST_TIMEOUT:-600}" \
    --output-on-failure
}

one_preset() {  # one_preset <preset>: build, then test unless the preset is build-only
  build "$1"
  if [[ "$1" != clang-tsa ]]; then
    run_tests "$1"
  fi
}

mutation() {  # the protocol mutations against the ci build (rebuilds coherence_test only)
  [[ -f build/ci/build.ninja ]] || build ci
  BUILD=build/ci python3 tests/coherence/mutation_check.py --fail-fast
}

fuzz() {  # every libFuzzer target for a bounded time; a crash fails the stage
  bash scripts/fuzz.sh "${DSM_FUZZ_SECONDS:-5}"
}

bash scripts/setup.sh
total_start=$(date +%s)
case "${1:-all}" in
  all)
    stage ci one_preset ci
    stage mutation mutation
    stage clang-tsa one_preset clang-tsa
    stage no-rdma one_preset no-rdma
    stage asan one_preset asan
    stage fuzz fuzz
    ;;
  mutation) stage mutation mutation ;;
  fuzz) stage fuzz fuzz ;;
  *) stage "$1" one_preset "$1" ;;
esac
echo "=== all stages passed in $(($(date +%s) - total_start)) s"
