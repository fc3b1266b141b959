#!/usr/bin/env bash
# Runs a libFuzzer target for a bounded time on a copy of its seed corpus (the committed
# corpus is never written). Crashes, leaks and timeouts fail the run; their inputs land in
# ARTIFACT_DIR (named crash-*, leak-*, timeout-*, oom-*).
#   usage: run_short.sh TARGET CORPUS_DIR ARTIFACT_DIR [SECONDS]
set -euo pipefail
target=$1 corpus=$2 artifacts=$3 seconds=${4:-${VKRT_FUZZ_SECONDS:-30}}
work=$(mktemp -d "${TMPDIR:-/tmp}/vkrt-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
cp -r "$corpus"/. "$work"/
mkdir -p "$artifacts"
exec "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$artifacts/$(basename "$target")-" "$work"
