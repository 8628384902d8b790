#!/usr/bin/env bash
# The lock demo across three "hosts": builds examples/lock_demo, makes three network namespaces
# joined by a bridge (in a fourth namespace), runs one node in each (node 0 is the log's home
# and its lock arbiter), prints their outputs, and removes the namespaces.
#
# Usage: scripts/lock_demo.sh       (as root on Debian 12; exit status 0 when every node verified)
# Environment: BUILD_DIR (default build/demo), DEMO_TIMEOUT (seconds, default 60),
#              RECORDS (appends per node, default 200).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build/demo}
timeout_s=${DEMO_TIMEOUT:-60}
records=${RECORDS:-200}

if [[ $(id -u) -ne 0 ]]; then
  echo "lock_demo: run as root (network namespaces and userfaultfd need it)" >&2
  exit 1
fi
if [[ -x $root/scripts/setup.sh ]]; then
  "$root/scripts/setup.sh"
fi

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSM_BUILD_TESTS=OFF \
  -DDSM_BUILD_BENCH=OFF -DDSM_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" --target lock_demo -j "$(nproc)"
demo=$build/examples/lock_demo

# Three hosts n0..n2 (10.198.0.1..3) on bridge br0 in namespace "-br".
prefix="dsmlock-$$"
work=$(mktemp -d /tmp/dsm-lock-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for ns in "$prefix-n0" "$prefix-n1" "$prefix-n2" "$prefix-br"; do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$prefix-br"
ip -n "$prefix-br" link add br0 type bridge
ip -n "$prefix-br" link set br0 up
ip -n "$prefix-br" link set lo up
peers=""
for i in 0 1 2; do
  ns="$prefix-n$i"
  ip netns add "$ns"
  ip -n "$prefix-br" link add "p$i" type veth peer name eth0 netns "$ns"
  ip -n "$prefix-br" link set "p$i" master br0 up
  ip -n "$ns" addr add "10.198.0.$((i + 1))/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  peers+="${peers:+,}10.198.0.$((i + 1)):7000"
done
echo "lock_demo: three hosts $prefix-n0..n2 at $peers"

for i in 0 1 2; do
  timeout "$timeout_s" ip netns exec "$prefix-n$i" "$demo" --id "$i" --peers "$peers" \
    --records "$records" --timeout-ms $((timeout_s * 1000 / 2)) >"$work/n$i.log" 2>&1 &
  pids+=($!)
done
status=(0 0 0)
for i in 0 1 2; do
  wait "${pids[$i]}" || status[$i]=$?
done
pids=()

fail=0
for i in 0 1 2; do
  echo "---- host $i (node $i) ----"
  sed "s/^/$i | /" "$work/n$i.log"
  [[ ${status[$i]} -eq 0 ]] || { echo "lock_demo: node $i exited with ${status[$i]}" >&2; fail=1; }
done
if [[ $fail -ne 0 ]]; then
  echo "lock_demo: FAILED"
  exit 1
fi
echo "lock_demo: OK: $((3 * records)) lock-protected appends from three hosts, verified on each"
