#!/usr/bin/env bash
# The whole test suite, as README's quick start and CI run it:
#   1. installs missing Debian packages (tests/deps.sh);
#   2. checks formatting (.clang-format) and the include arrows;
#   3. builds with ASan+UBSan (Debug, Clang, whose UBSan also catches
#      arithmetic on NULL that GCC's misses) and runs every test;
#   4. builds Release with GCC and with Clang and runs every test again;
#   5. fuzzes every libFuzzer target for 20 s (FM_FUZZ_SECONDS).
# Benchmarks are built in every configuration but not run.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

tests/deps.sh

echo "== format and include checks"
files=$(git ls-files '*.c' '*.h' 2>/dev/null || find engine index wal server tests bench -name '*.[ch]')
clang-format --dry-run --Werror $files
tests/check_includes.sh

run_config() { # name, cmake args...
  local name=$1; shift
  echo "== build $name"
  cmake -S . -B "build/$name" "$@" >/dev/null
  cmake --build "build/$name" -j"$jobs" >/dev/null
  echo "== test $name"
  ctest --test-dir "build/$name" --output-on-failure -j1
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
run_config asan -DCMAKE_BUILD_TYPE=Debug -DFM_SANITIZE=address,undefined \
    -DCMAKE_C_COMPILER=clang
run_config release -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=gcc
run_config clang -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=clang
# A short run of every libFuzzer target (tests/fuzz) from its seeds and
# what earlier runs in build/fuzz learnt.
tests/fuzz/run.sh "${FM_FUZZ_SECONDS:-20}"
echo "== all configurations passed"
