#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan+UBSan, coverage)
# into build/fuzz and runs each for a while, one at a time:
#   tests/fuzz/run.sh [SECONDS [TARGET...]]
# SECONDS is per target (default 30); TARGET is resp, schema, engine, wal,
# server or config (default all). Seeds come from tests/fuzz/corpus/<target> and are never
# written; what the fuzzer learns goes to build/fuzz/corpus/<target>, so a
# later run starts from there. A crash, leak, sanitizer report, assertion,
# hang (over 10 s for one input) or single allocation over 256 MB (inputs
# are at most 8 KB) stops the run with a non-zero status
# and leaves the input in build/fuzz/artifacts/; reproduce it with
#   build/fuzz/tests/fuzz/fuzz_<target> build/fuzz/artifacts/<file>
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(resp schema engine wal server config)
jobs=$(nproc 2>/dev/null || echo 2)
out=build/fuzz

echo "== build fuzz"
# Debug for FM_DEBUG_CHECKS, at -O1 so that the fuzzer runs at a useful speed.
cmake -S . -B "$out" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g" -DFM_FUZZ=ON >/dev/null
cmake --build "$out" -j"$jobs" --target "${targets[@]/#/fuzz_}" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$out/artifacts"
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  mkdir -p "$out/corpus/$t"
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=("-dict=tests/fuzz/$t.dict")
  "$out/tests/fuzz/fuzz_$t" "$out/corpus/$t" "tests/fuzz/corpus/$t" \
    "${dict[@]}" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 \
    -max_len=8192 -artifact_prefix="$out/artifacts/$t-" -print_final_stats=1 \
    2>"$out/fuzz_$t.log" || {
      tail -n 60 "$out/fuzz_$t.log"
      echo "fuzz_$t failed; the input is in $out/artifacts/ (log: $out/fuzz_$t.log)"
      exit 1
    }
  grep -E "^stat::(number_of_executed_units|new_units_added|peak_rss_mb)" \
    "$out/fuzz_$t.log" | tr '\n' ' '
  echo
done
echo "== fuzzing passed"
