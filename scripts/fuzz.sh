#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan, build-fuzz/) and fuzzes them.
#   usage: scripts/fuzz.sh [--target api|walker|all] [--time SECONDS] [--jobs N]
#                          [--backend seccomp|ptrace|kvm] [--out DIR] [--merge-seeds]
#                          [-- extra libFuzzer flags]
#   --time      seconds per target (default 60); 0 = until stopped (overnight runs)
#   --jobs      parallel fuzzing processes per target (libFuzzer -jobs/-workers; default 1)
#   --backend   VKRT_BACKEND for the api target (default: the library's default)
#   --out       where new inputs and crashes go (default build-fuzz/fuzz-out); the committed
#               seed corpus (tests/fuzz/corpus/) is read, never written
#   --merge-seeds  afterwards, merge the inputs that add coverage into tests/fuzz/corpus/
# Crashes land in OUT/artifacts/<target>-crash-<sha1>; replay one with the gcc build:
#   build/tests/fuzz/api_fuzz_replay OUT/artifacts/api_fuzz-crash-...
set -euo pipefail
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
target=all time=60 jobs=1 backend= out= merge_seeds=0 extra=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --target) target=$2; shift 2 ;;
    --time) time=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --merge-seeds) merge_seeds=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$target" in api|walker) targets=("$target") ;; all) targets=(api walker) ;;
  *) echo "fuzz.sh: --target api|walker|all" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
root=$PWD
scripts/deps.sh
if ! command -v clang++ >/dev/null; then  # clang ships libFuzzer's runtime (Debian package)
  echo "fuzz.sh: installing clang" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq  # a fresh machine has no package lists yet
  apt-get install -y -qq --no-install-recommends clang
fi
if [[ ! -f build-fuzz/build.ninja ]]; then
  rm -rf build-fuzz
  CC=clang CXX=clang++ meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false -Dbenchmarks=false -Dexamples=false
fi
meson compile -C build-fuzz tests/fuzz/api_fuzz tests/fuzz/walker_fuzz
out=${out:-$root/build-fuzz/fuzz-out}
mkdir -p "$out/artifacts"
# UBSan findings are crashes too; leaks are checked at the end of each input.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
if [[ -n "$backend" ]]; then export VKRT_BACKEND=$backend; fi
status=0
for t in "${targets[@]}"; do
  corpus=$out/corpus-$t${backend:+-$backend}
  mkdir -p "$corpus"
  flags=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1
         -artifact_prefix="$out/artifacts/${t}_fuzz-")
  if ((time > 0)); then flags+=(-max_total_time="$time"); fi
  if ((jobs > 1)); then flags+=(-jobs="$jobs" -workers="$jobs"); fi
  echo "fuzz.sh: $t for ${time}s (0 = unbounded), $jobs job(s), corpus $corpus" >&2
  (cd "$out" && "$root/build-fuzz/tests/fuzz/${t}_fuzz" "${flags[@]}" "${extra[@]}" \
     "$corpus" "$root/tests/fuzz/corpus/$t") || status=$?
  if ((merge_seeds)); then
    "$root/build-fuzz/tests/fuzz/${t}_fuzz" -merge=1 "$root/tests/fuzz/corpus/$t" "$corpus"
  fi
done
exit $status
