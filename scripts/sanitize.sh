#!/usr/bin/env bash
# Runs the whole test suite under ASan+UBSan (build-asan/), the threaded tests under TSan
# (build-tsan/) and both libFuzzer targets for 30 s each (clang, build-fuzz/). Any report fails.
#   usage: scripts/sanitize.sh [--help] [--asan-only | --tsan-only | --fuzz-only] [-- meson test args]
set -euo pipefail
usage() {
  sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

  --asan-only   only the ASan+UBSan stage (every test in the suite)
  --tsan-only   only the TSan stage (the tests that run several threads)
  --fuzz-only   only the short fuzzing stage (scripts/fuzz.sh --time 30; installs clang)
  --help        this text

Build directories are configured once (delete them to start over) with benchmarks off, as
the suite does not run them. Reports stop the test that made them (halt_on_error), so a
report is a failing test with the sanitizer's text in its log.
EOF
}
stages=(asan tsan fuzz)
while (($#)); do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --asan-only) stages=(asan); shift ;;
    --tsan-only) stages=(tsan); shift ;;
    --fuzz-only) stages=(fuzz); shift ;;
    --) shift; break ;;
    *) echo "sanitize.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
scripts/deps.sh

# UBSan recovers and carries on by default, which would let a test pass over undefined
# behaviour; every sanitizer here stops the process at its first report instead.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:print_summary=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"

# The tests that run more than one thread (minivk's fibers carry their own TSan annotations,
# examples/minivk/kernel.h; minivk_busybox runs it with --cpus=2). Not `resource`: its threads
# run in a child forked from a threaded test, which TSan's runtime does not support.
tsan_tests=(conformance own_space seccomp_hostile kvm_hostile hostile preload minivk
            minivk_busybox)

configure() {  # dir sanitizers
  if [[ ! -f "$1/build.ninja" ]]; then
    rm -rf "$1"
    meson setup "$1" -Db_sanitize="$2" -Db_lundef=false -Dbenchmarks=false >/dev/null
  fi
  meson compile -C "$1"
}

for stage in "${stages[@]}"; do
  start=$SECONDS
  case "$stage" in
    asan)
      echo "== ASan+UBSan: the whole suite (build-asan/)"
      configure build-asan address,undefined
      meson test -C build-asan --print-errorlogs --timeout-multiplier 3 "$@"
      ;;
    tsan)
      echo "== TSan: ${tsan_tests[*]} (build-tsan/)"
      configure build-tsan thread
      meson test -C build-tsan --print-errorlogs --timeout-multiplier 3 "$@" "${tsan_tests[@]}"
      ;;
    fuzz)
      echo "== libFuzzer: api (default backend) and walker, 30 s each (build-fuzz/)"
      scripts/fuzz.sh --target all --time 30
      ;;
  esac
  echo "== $stage stage passed in $((SECONDS - start)) s"
done
