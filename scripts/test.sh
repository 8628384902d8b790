#!/usr/bin/env bash
# The whole check, as CI runs it: install dependencies, configure with a preset (default
# `ci`: RelWithDebInfo, -Werror), build with every core, run every test.
#
# Usage: scripts/test.sh [preset]       e.g. scripts/test.sh asan
# Env:   DSM_TEST_JOBS (ctest -j, default: nproc), DSM_TEST_TIMEOUT (per test, default 600 s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

preset="${1:-ci}"
jobs="$(nproc)"

bash scripts/setup.sh
cmake --preset "$preset"
cmake --build --preset "$preset" -j"$jobs"
ctest --preset "$preset" -j"${DSM_TEST_JOBS:-$jobs}" --timeout "${DSM_TEST_TIMEOUT:-600}" \
  --output-on-failure
