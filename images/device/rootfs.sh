#!/usr/bin/env bash
# rootfs.sh builds a root-filesystem overlay tarball of edge-agent for one
# target, for image builders (Raspberry Pi OS / pi-gen, Debian debos or
# vmdb2, a Yocto recipe) to extract over their root filesystem with
# `tar -xzf edge-agent-rootfs-linux-arm64.tar.gz -C ROOTFS`.
#
# It holds what images/device/install.sh --root puts there, the service
# enabled, but no config.yaml (each device gets its own at provisioning):
#   etc/edge-agent/                                      0755
#   etc/edge-agent/config.example.yaml                   0644
#   etc/systemd/system/edge-agent.service                0644
#   etc/systemd/system/multi-user.target.wants/edge-agent.service  symlink
#   usr/local/bin/edge-agent                             0755
# Standard directories (etc/, usr/local/bin/, ...) are not entries of their
# own, so extracting never changes their mode, owner or time.
#
# The tarball is deterministic: entries sorted by name, owner and group
# 0 (root), every mtime SOURCE_DATE_EPOCH (default 0), GNU format (no
# per-file access times), gzip without a name or time stamp. The same
# binary gives the same bytes.
#
# Usage: rootfs.sh BINARY OUT.tar.gz
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -eq 2 ] || {
	echo "usage: rootfs.sh BINARY OUT.tar.gz" >&2
	exit 2
}
binary=$1 out=$2
epoch=${SOURCE_DATE_EPOCH:-0}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
bash "$here/install.sh" --root "$stage" --binary "$binary" >/dev/null

entries=(
	etc/edge-agent
	etc/edge-agent/config.example.yaml
	etc/systemd/system/edge-agent.service
	etc/systemd/system/multi-user.target.wants/edge-agent.service
	usr/local/bin/edge-agent
)
mkdir -p "$(dirname "$out")"
tar -C "$stage" --format=gnu --no-recursion --sort=name \
	--owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
	-cf - "${entries[@]}" | gzip -9 -n >"$out.tmp"
mv -f "$out.tmp" "$out"
echo "image: $out ($(stat -c %s "$out") bytes)"
