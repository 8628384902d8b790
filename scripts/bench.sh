#!/usr/bin/env bash
# Builds dsm_bench (Release) and runs the benchmark suite, then writes docs/PERFORMANCE.md from
# its JSON output. Needs root (userfaultfd; network namespaces for the veth variant).
#
# Usage: scripts/bench.sh [--smoke] [--net=lo|veth|both] [more dsm_bench / benchmark flags]
#   --smoke    tiny sizes, one short repetition; writes build-bench/PERFORMANCE-smoke.md instead
#              of docs/PERFORMANCE.md
# Env: DSM_BENCH_SPIN_US (poll_spin of the second, sensitivity pass; default 0:
#      no spin, against the adaptive default of the main pass),
#      DSM_BENCH_COMMIT (what to report as the measured commit, when run from an export),
#      DSM_BENCH_BUILD (build dir, default build-bench),
#      DSM_BENCH_BIN (a dsm_bench built already, e.g. build/ci/bench/dsm_bench: no configure
#      or build; the outputs still go to DSM_BENCH_BUILD),
#      DSM_BENCH_REPS (repetitions, interleaved in random order, default 3; the report shows
#      medians of the repetitions),
#      DSM_BENCH_NICE (run under `nice -n N`, e.g. -10 on a machine shared with builds; default 0)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build="${DSM_BENCH_BUILD:-build-bench}"
smoke=0
net="both"
extra=()
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    --net=*) net="${a#--net=}" ;;
    *) extra+=("$a") ;;
  esac
done

bin="${DSM_BENCH_BIN:-}"
if [[ -z $bin ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSM_WERROR=ON -DDSM_BUILD_BENCH=ON \
    >/dev/null
  cmake --build "$build" --target dsm_bench -j"$(nproc)"
  bin="$build/bench/dsm_bench"
fi
mkdir -p "$build"

machine="$build/bench-machine.txt"
log="$build/bench.log"
{
  echo "kernel: $(uname -r)"
  echo "vCPUs: $(nproc)"
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "priority: nice ${DSM_BENCH_NICE:-0}"
  if [[ -n ${DSM_BENCH_COMMIT:-} ]]; then
    echo "commit: $DSM_BENCH_COMMIT"
  else
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet -- lib include 2>/dev/null || echo ' (with uncommitted changes in lib/ or include/)')"
  fi
} >"$machine"

case "$net" in
  both) nets=(lo veth) ;;
  lo | veth) nets=("$net") ;;
  *) echo "bench.sh: --net must be lo, veth or both (got '$net')" >&2; exit 2 ;;
esac
reps="${DSM_BENCH_REPS:-3}"
[[ $reps =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: DSM_BENCH_REPS must be a positive integer" >&2; exit 2; }
common=()
if [[ $smoke == 1 ]]; then
  common+=(--smoke)
elif [[ $reps -gt 1 ]]; then
  # Repetitions interleaved in random order: a burst of load from other processes lands on a
  # few samples of many figures instead of every sample of one; the report takes medians.
  common+=(--benchmark_repetitions="$reps" --benchmark_enable_random_interleaving=true)
fi
: >"$log"
# One run per network: each builds its own cluster once (interleaving across networks would
# rebuild the clusters at every switch).
jsons=()
spin=()
for n in "${nets[@]}"; do
  json="$build/bench-$n.json"
  args=(--net="$n" --benchmark_out="$json" --benchmark_out_format=json "${common[@]}")
  echo "running: $bin ${args[*]} ${extra[*]:-} (node logs: $log)"
  rc=0
  nice -n "${DSM_BENCH_NICE:-0}" "$bin" "${args[@]}" "${extra[@]}" 2>>"$log" || rc=$?
  if [[ $rc == 77 ]]; then
    echo "bench.sh: skipped: userfaultfd is unavailable (run as root)"
    exit 0
  fi
  [[ $rc == 0 ]] || { echo "bench.sh: dsm_bench failed ($rc); see $log" >&2; tail -20 "$log" >&2; exit "$rc"; }
  jsons+=(--json "$json")
  if [[ $smoke == 0 ]]; then
    # The same key figures with another engine spin (DSM_BENCH_SPIN_US, default 0: no spin),
    # for the sensitivity table.
    spin_us="${DSM_BENCH_SPIN_US:-0}"
    echo "running: the same key figures over $n with --poll_spin_us=$spin_us"
    nice -n "${DSM_BENCH_NICE:-0}" "$bin" --net="$n" --poll_spin_us="$spin_us" \
      --benchmark_filter='Floor_Uffd.*busy|Floor_TcpRtt|ReadFault/|WriteMiss/.*/k:0|Upgrade/.*/k:1|Recall|SeqScan|ReadFaultThreads/.*/threads:[14]|LockUnlock|CounterTable/.*/nodes:3' \
      "${common[@]}" --benchmark_out="$build/bench-spin-$n.json" --benchmark_out_format=json \
      2>>"$log" >/dev/null && spin+=(--spin-json "$build/bench-spin-$n.json")
  fi
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$machine"

out="docs/PERFORMANCE.md"
[[ $smoke == 1 ]] && out="$build/PERFORMANCE-smoke.md"
cmd="scripts/bench.sh"
[[ $# -gt 0 ]] && cmd="scripts/bench.sh $*"
python3 bench/report.py "${jsons[@]}" --machine "$machine" --notes bench/PERFORMANCE_notes.md \
  --command "$cmd" "${spin[@]}" >"$out"
echo "wrote $out"
