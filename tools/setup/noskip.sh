#!/usr/bin/env bash
# noskip.sh fails when a go test -json log (gotestsum --jsonfile) records a
# skipped test, naming each one. Usage: noskip.sh LOG.json
set -euo pipefail
skips=$(grep -E '"Action":"skip"' "$1" | grep -E '"Test":' | sed -E 's/.*"Package":"([^"]*)".*"Test":"([^"]*)".*/\1 \2/' || true)
if [ -n "$skips" ]; then
	echo "noskip: these tests were skipped; CI counts a skip as a failure:" >&2
	echo "$skips" | sed 's/^/  /' >&2
	exit 1
fi
echo "noskip: no test was skipped"
