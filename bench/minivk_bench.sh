#!/usr/bin/env bash
# minivk's workloads, natively and under minivk on each available backend: medians, spread
# and the ratio to native, as a markdown table on stdout. Runs alternate between systems.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/minivk_bench.sh [--reps=N] [--backends=a,b] [--build=DIR] [--smoke] [--help]
Runs, natively and as minivk guests (Debian's busybox-static and tests/minivk_guest.c):
  pipelines   200 x `echo $i | busybox wc -c` in busybox sh           (ms)
  sha256sum   busybox sha256sum of a 32 MiB file                       (ms)
  getppid     a static guest calling getppid in a loop                 (ns per call)
  touch       a static guest writing to N new pages                    (ns per page)
  --reps=N       repetitions of each (default 5); the table shows medians and min-max
  --backends=L   comma-separated minivk backends (default: every one this machine has)
  --build=DIR    the meson build directory (default: build)
  --smoke        tiny counts and one repetition: checks that the script works
EOF
}

reps=5
backends=""
build=build
smoke=0
for arg in "$@"; do
  case "$arg" in
    --reps=*) reps="${arg#--reps=}" ;;
    --backends=*) backends="${arg#--backends=}" ;;
    --build=*) build="${arg#--build=}" ;;
    --smoke) smoke=1 ;;
    --help) usage; exit 0 ;;
    *) echo "minivk_bench.sh: unknown argument $arg" >&2; usage >&2; exit 2 ;;
  esac
done
case "$reps" in ''|*[!0-9]*|0) echo "minivk_bench.sh: --reps needs a number >= 1" >&2; exit 2 ;; esac

minivk="$(realpath -m "$build/examples/minivk")"
guest="$(realpath -m "$build/tests/minivk_guest")"
busybox=/bin/busybox
for f in "$minivk" "$guest" "$busybox"; do
  [ -x "$f" ] || { echo "minivk_bench.sh: $f is missing (build first: scripts/build.sh)" >&2; exit 1; }
done

pipelines=200 sha_mib=32 calls=200000 pages=20000
if [ "$smoke" = 1 ]; then
  reps=1 pipelines=3 sha_mib=1 calls=1000 pages=100
fi

if [ -z "$backends" ]; then
  for b in seccomp ptrace kvm; do
    if "$minivk" --backend="$b" "$busybox" true >/dev/null 2>&1; then backends="$backends,$b"; fi
  done
  backends="${backends#,}"
fi
systems="native"
IFS=',' read -r -a list <<<"$backends"
for b in "${list[@]}"; do [ -n "$b" ] && systems="$systems minivk-$b"; done

work=$(mktemp -d /tmp/minivk-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
head -c $((sha_mib * 1024 * 1024)) /dev/urandom >"$work/data"

# Runs one workload on one system; prints its figure (ms, or the guest's ns).
run() {
  local system="$1" workload="$2" prefix=()
  if [ "$system" != native ]; then prefix=("$minivk" "--backend=${system#minivk-}"); fi
  local t0 t1 out
  case "$workload" in
    pipelines|sha256sum)
      local cmd
      if [ "$workload" = pipelines ]; then
        cmd="for i in \$(seq 1 $pipelines); do echo \$i | busybox wc -c; done >/dev/null"
      else
        cmd="busybox sha256sum data >/dev/null"
      fi
      t0=$(date +%s%N)
      (cd "$work" && "${prefix[@]}" "$busybox" sh -c "$cmd") ||
        { echo "minivk_bench.sh: $workload failed on $system" >&2; return 1; }
      t1=$(date +%s%N)
      echo $(( (t1 - t0) / 1000000 ))
      ;;
    getppid|touch)
      local count=$calls
      [ "$workload" = touch ] && count=$pages
      out=$("${prefix[@]}" "$guest" "$workload" "$count") ||
        { echo "minivk_bench.sh: $workload failed on $system" >&2; return 1; }
      echo "${out%% *}"
      ;;
  esac
}

declare -A samples
workloads="pipelines sha256sum getppid touch"
for ((r = 0; r < reps; r++)); do
  for w in $workloads; do
    for s in $systems; do
      value=$(run "$s" "$w") || exit 1
      samples["$w,$s"]="${samples["$w,$s"]:-} $value"
    done
  done
done

# median, min and max of a list of numbers
stats() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {
  m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2; printf "%s %s %s\n", m, v[1], v[NR] }'; }

echo "| workload | unit | $(echo $systems | sed 's/ / | /g') |"
echo "|---|---|$(for s in $systems; do printf -- '---|'; done)"
for w in $workloads; do
  unit=ms
  case "$w" in getppid) unit="ns/call" ;; touch) unit="ns/page" ;; esac
  read -r native_median _ _ < <(echo "${samples["$w,native"]}" | stats)
  row="| $w | $unit |"
  for s in $systems; do
    read -r median low high < <(echo "${samples["$w,$s"]}" | stats)
    if [ "$s" = native ]; then
      row="$row $median ($low–$high) |"
    else
      ratio=$(awk -v a="$median" -v b="$native_median" 'BEGIN { printf (b > 0 ? "%.2f" : "-"), a / b }')
      row="$row $median ($low–$high), ${ratio}× |"
    fi
  done
  echo "$row"
done
echo
echo "Medians of $reps run(s) (min–max), ratio to native; $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs."
