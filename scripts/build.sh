#!/usr/bin/env bash
# Installs what is missing (Debian packages only), configures build/ if needed, compiles.
#   usage: scripts/build.sh [--help] [meson setup options...]
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
cd "$(dirname "$0")/.."
scripts/deps.sh
if [[ ! -f build/build.ninja ]]; then
  rm -rf build
  meson setup build "$@"
fi
meson compile -C build
