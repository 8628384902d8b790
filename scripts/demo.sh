#!/usr/bin/env bash
# The mmap demo across two "hosts": installs what is missing, builds examples/mmap_demo, makes
# two network namespaces joined by a veth pair, runs the home (node 0, serving a file) in one and
# node 1 in the other, prints both outputs, checks the file, and removes the namespaces.
#
# Usage: scripts/demo.sh            (as root on Debian 12; exit status 0 when the demo worked)
# Environment: BUILD_DIR (default build/demo), DEMO_TIMEOUT (seconds, default 60).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build/demo}
timeout_s=${DEMO_TIMEOUT:-60}

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (network namespaces and userfaultfd need it)" >&2
  exit 1
fi

# 1. Dependencies.
if [[ -x $root/scripts/setup.sh ]]; then
  "$root/scripts/setup.sh"
else
  need=(build-essential cmake pkg-config liburing-dev libabsl-dev libibverbs-dev libgtest-dev
        libgmock-dev libbenchmark-dev iproute2)
  missing=()
  for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

# 2. Build only what the demo needs.
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSM_BUILD_TESTS=OFF \
  -DDSM_BUILD_BENCH=OFF -DDSM_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" --target mmap_demo -j "$(nproc)"
demo=$build/examples/mmap_demo

# 3. Two hosts: namespaces A and B, one veth pair, 10.199.0.1 and 10.199.0.2.
ns_a="dsmdemo-$$-a"
ns_b="dsmdemo-$$-b"
work=$(mktemp -d /tmp/dsm-demo.XXXXXX)
home_pid=""
cleanup() {
  [[ -n $home_pid ]] && kill "$home_pid" 2>/dev/null || true
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$ns_a"
ip netns add "$ns_b"
ip -n "$ns_a" link add eth0 type veth peer name eth0 netns "$ns_b"
ip -n "$ns_a" addr add 10.199.0.1/24 dev eth0
ip -n "$ns_b" addr add 10.199.0.2/24 dev eth0
for ns in "$ns_a" "$ns_b"; do
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
done
peers=10.199.0.1:7000,10.199.0.2:7000
file=$work/shared.txt
echo "demo: host A = namespace $ns_a (10.199.0.1, home of $file)"
echo "demo: host B = namespace $ns_b (10.199.0.2)"

# 4. Run both nodes; each one's output is collected and printed with a prefix.
timeout "$timeout_s" ip netns exec "$ns_a" "$demo" --id 0 --peers "$peers" --file "$file" \
  --timeout-ms $((timeout_s * 1000 / 2)) >"$work/a.log" 2>&1 &
home_pid=$!
b_status=0
timeout "$timeout_s" ip netns exec "$ns_b" "$demo" --id 1 --peers "$peers" \
  --text "Hello from host B ($ns_b), written through its mapping." \
  --timeout-ms $((timeout_s * 1000 / 2)) >"$work/b.log" 2>&1 || b_status=$?
a_status=0
wait "$home_pid" || a_status=$?
home_pid=""

echo "---- host A (node 0, home) ----"
sed 's/^/A | /' "$work/a.log"
echo "---- host B (node 1) ----"
sed 's/^/B | /' "$work/b.log"
echo "---- $file on host A's disk ----"
echo "page 0: $(head -c 4096 "$file" | tr -d '\000')"
echo "page 1: $(tail -c +4097 "$file" | head -c 4096 | tr -d '\000')"

# 5. Verdict: both nodes succeeded and the file holds both texts.
fail=0
[[ $a_status -eq 0 ]] || { echo "demo: node 0 exited with $a_status" >&2; fail=1; }
[[ $b_status -eq 0 ]] || { echo "demo: node 1 exited with $b_status" >&2; fail=1; }
if ! head -c 4096 "$file" | grep -aq "Hello from node 0"; then
  echo "demo: the file does not hold the home's greeting" >&2; fail=1
fi
if ! tail -c +4097 "$file" | grep -aq "Hello from host B"; then
  echo "demo: the file does not hold host B's text" >&2; fail=1
fi
if [[ $fail -ne 0 ]]; then
  echo "demo: FAILED"
  exit 1
fi
echo "demo: OK: host B read host A's greeting, host A saw host B's text live, and the file holds it"
