#!/usr/bin/env bash
# Installs the Debian packages that building, testing and benchmarking
# fermata need, when any is missing. Run as root (CI is) or with sudo.
set -euo pipefail

# libclang-rt-14-dev is clang's libFuzzer runtime (tests/fuzz), which clang
# only recommends.
pkgs=(build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
      liblz4-dev libxxhash-dev libcriterion-dev
      libsqlite3-dev libhiredis-dev redis-server redis-tools netcat-openbsd)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
