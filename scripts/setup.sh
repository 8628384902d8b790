#!/usr/bin/env bash
# Installs the Debian 12 packages dsm needs to build and test. Idempotent: when every package
# is already installed it only checks and returns (no apt-get update).
#
# Usage: scripts/setup.sh          (as root, or with sudo available)
set -euo pipefail

packages=(
  build-essential   # gcc 12, g++, make
  cmake             # 3.25
  ninja-build       # the CMakePresets.json generator
  pkg-config        # finds liburing and libibverbs; tests/install checks dsm.pc
  liburing-dev      # io_uring TCP transport
  libibverbs-dev    # RDMA transport (builds everywhere; tests skip without a device)
  libssl-dev        # libcrypto: HMAC-SHA256 / RAND_bytes for the admission handshake
  libabsl-dev       # abseil 20220623: Status, Mutex, containers
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  iproute2          # `ip netns` / veth for multi-host tests
  clang             # the clang-tsa preset (-Wthread-safety); libFuzzer (scripts/fuzz.sh)
  libclang-rt-dev   # libFuzzer runtime for DSM_BUILD_FUZZERS
  python3           # scripts/check_layering.py (ctest `layering`), the mutation check
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "setup: all ${#packages[@]} packages already installed"
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo=(sudo)
  else
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
