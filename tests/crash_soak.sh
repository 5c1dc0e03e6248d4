#!/usr/bin/env bash
# A longer run of the crash test: the real server killed with SIGKILL under
# pipelined load, restarted, checked with fermata-check --deep and against
# every acknowledged write, CYCLES times (default 1000) with a fresh seed.
#
#   tests/crash_soak.sh [CYCLES] [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-1000}
build=${2:-build/release}
[ -x "$build/tests/test_crash" ] || {
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" -j"$(nproc)" --target test_crash >/dev/null
}
seed=${FM_TEST_SEED:-$(date +%s)}
echo "crash soak: $cycles cycles, seed $seed"
FM_CRASH_CYCLES=$cycles FM_TEST_SEED=$seed "$build/tests/test_crash" --verbose
