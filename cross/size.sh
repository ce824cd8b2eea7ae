#!/usr/bin/env bash
# size.sh prints the size of every edge-agent artefact in dist/ (raw and
# gzip -9, the latter being roughly what an OTA download or an image costs)
# and fails when the stripped linux/arm64 agent is over budget: 12 MB,
# that is 12,000,000 bytes (DESIGN.md, "Targets").
#
# Usage: cross/size.sh   (after cross/build.sh; make size does both)
# Environment: OUT (default dist/), BUDGET in bytes (default 12000000).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist=${OUT:-$root/dist}
budget=${BUDGET:-12000000}

shopt -s nullglob
bins=()
for f in "$dist"/edge-agent-linux-*; do
	case "$f" in *.tar.gz | *.tmp) continue ;; esac
	bins+=("$f")
done
if ((${#bins[@]} == 0)); then
	echo "size: no agent binaries in $dist; run make cross first" >&2
	exit 1
fi

printf 'size: %-28s %12s %12s\n' artefact bytes gzip-9
for f in "${bins[@]}"; do
	printf 'size: %-28s %12d %12d\n' "$(basename "$f")" "$(stat -c %s "$f")" "$(gzip -9 -c "$f" | wc -c)"
done

arm64="$dist/edge-agent-linux-arm64"
if [ ! -f "$arm64" ]; then
	echo "size: $arm64 missing; run make cross first" >&2
	exit 1
fi
n=$(stat -c %s "$arm64")
mb=$(awk -v n="$n" 'BEGIN { printf "%.2f", n / 1e6 }')
if ((n > budget)); then
	echo "size: FAIL: linux/arm64 agent is $n bytes ($mb MB), over the budget of $budget bytes; see what it links with go test -v -run TestAgentDependencies ./tools/layering" >&2
	exit 1
fi
echo "size: ok: linux/arm64 agent is $n bytes ($mb MB), budget $budget bytes"
