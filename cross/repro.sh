#!/usr/bin/env bash
# repro.sh checks that the cross builds are reproducible. It snapshots the
# source tree into a temporary directory elsewhere and builds the given
# targets from it twice with cross/build.sh: once with the usual Go build
# cache, and once with an empty one (so every package, the dependencies
# included, is compiled afresh, at a different path and time). The two must
# be byte-identical. It then compares with dist/ too, where a difference
# means dist/ was built from another state of the tree (it says so; the
# check itself does not depend on it, so concurrent edits in a work tree do
# not make it flaky).
#
# Cost: one from-scratch compile per target (about a minute for arm64 on 2
# cores), which is why it checks the main target only by default.
#
# Usage: cross/repro.sh [TARGET...]   (default: linux-arm64)
# Environment: VERSION, COMMIT as for cross/build.sh (the Makefile passes
# the same values to both); OUT, the dist directory to compare with.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
targets=("$@")
((${#targets[@]})) || targets=(linux-arm64)
dist=${OUT:-$root/dist}
if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
if [ -z "${COMMIT:-}" ]; then
	COMMIT=$(git rev-parse HEAD 2>/dev/null || echo dev)
fi
export VERSION COMMIT

tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

# The tree as git sees it: tracked files plus untracked ones not ignored
# (so it works before a commit too), without .git, dist/ or caches.
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar -cf - --null -T - | tar -xf - -C "$tmp/src"

start=$SECONDS
(cd "$tmp/src" && OUT="$tmp/warm" bash cross/build.sh "${targets[@]}") >/dev/null
(cd "$tmp/src" && GOCACHE="$tmp/gocache" OUT="$tmp/cold" bash cross/build.sh "${targets[@]}") >/dev/null

fail=0
for t in "${targets[@]}"; do
	a=$(sha256sum <"$tmp/warm/edge-agent-$t" | cut -d' ' -f1)
	b=$(sha256sum <"$tmp/cold/edge-agent-$t" | cut -d' ' -f1)
	if [ "$a" != "$b" ]; then
		echo "repro: edge-agent-$t NOT reproducible: $a with the build cache, $b from scratch" >&2
		fail=1
		continue
	fi
	echo "repro: edge-agent-$t reproducible: $a"
	if [ -f "$dist/edge-agent-$t" ]; then
		d=$(sha256sum <"$dist/edge-agent-$t" | cut -d' ' -f1)
		if [ "$d" = "$a" ]; then
			echo "repro: $dist/edge-agent-$t matches"
		else
			echo "repro: note: $dist/edge-agent-$t ($d) was built from another state of the tree"
		fi
	fi
done
echo "repro: done in $((SECONDS - start))s"
exit $fail
