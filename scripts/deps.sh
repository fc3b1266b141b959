#!/usr/bin/env bash
# Installs what vkrt needs to build and test, from Debian packages only. Idempotent: does
# nothing when everything is there. Needs root (apt-get) only when something is missing.
set -euo pipefail
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then sed -n "2,3p" "$0"; exit 0; fi
pkgs=(meson ninja-build pkg-config g++ libseccomp-dev libboost-context-dev libabsl-dev
      libgtest-dev libgmock-dev libbenchmark-dev busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "vkrt: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
