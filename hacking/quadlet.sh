#!/usr/bin/env bash
# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Put podman's real Quadlet generator at ~/.cache/gpu-mig/quadlet/quadlet (print its path). Debian 12's podman 4.3
# has no Quadlet, so it comes from Debian 13's podman package: the signed InRelease is checked with gpgv against the
# Debian archive keyring, then the package index's and the package's SHA-256. Only the binary is kept; the tests run
# it with -dryrun on the rendered .container files (it writes nothing, starts nothing).
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=trixie
cache=${XDG_CACHE_HOME:-$HOME/.cache}/gpu-mig/quadlet
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

if [[ -x $cache/quadlet ]]; then
  echo "$cache/quadlet"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
get() { curl -fsS --retry 3 -m 120 -o "$2" "$mirror/$1"; }

get "dists/$suite/InRelease" "$work/InRelease"
gpgv --keyring "$keyring" --output "$work/Release" "$work/InRelease" 2>"$work/gpgv.log" ||
  { cat "$work/gpgv.log" >&2; echo "quadlet.sh: $suite's InRelease does not verify against $keyring" >&2; exit 1; }
index=main/binary-amd64/Packages.xz
want=$(awk -v f="$index" '/^SHA256:/ {on=1; next} /^[A-Za-z]/ {on=0} on && $3 == f {print $1}' "$work/Release")
[[ -n $want ]] || { echo "quadlet.sh: $index is not listed in $suite's Release" >&2; exit 1; }
get "dists/$suite/$index" "$work/Packages.xz"
echo "$want  $work/Packages.xz" | sha256sum -c --quiet -
read -r file sum < <(xz -dc "$work/Packages.xz" | awk '
  /^Package: / {pkg = $2} /^Filename: / && pkg == "podman" {file = $2} /^SHA256: / && pkg == "podman" {sum = $2}
  /^$/ && file {print file, sum; exit}') || true
[[ -n ${file:-} ]] || { echo "quadlet.sh: no podman package in $suite" >&2; exit 1; }
get "$file" "$work/podman.deb"
echo "$sum  $work/podman.deb" | sha256sum -c --quiet -
dpkg-deb -x "$work/podman.deb" "$work/root"
mkdir -p "$cache"
install -m 0755 "$work/root/usr/libexec/podman/quadlet" "$cache/quadlet.new"
mv "$cache/quadlet.new" "$cache/quadlet"
echo "$cache/quadlet"
