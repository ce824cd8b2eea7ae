#!/usr/bin/env bash
# smoke.sh runs every agent artefact in dist/ with `version` on its own CPU
# (under qemu for the non-native targets, the ARMv6 one on an arm1176 core)
# and checks that it starts and reports the version, commit and target that
# cross/build.sh embedded. It catches a release binary that does not run on
# its target (GOARM=7 code in the ARMv6 artefact dies with SIGILL there).
#
# Usage: cross/smoke.sh [TARGET...]   (default: every edge-agent-linux-* in dist/)
# Environment: OUT (default dist/), VERSION and COMMIT to expect (default:
# not checked).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dist=${OUT:-$root/dist}
targets=("$@")
if ((${#targets[@]} == 0)); then
	for f in "$dist"/edge-agent-linux-*; do
		case "$f" in *.tar.gz | *.tmp) continue ;; esac
		[ -f "$f" ] && targets+=("${f#"$dist"/edge-agent-}")
	done
fi
if ((${#targets[@]} == 0)); then
	echo "smoke: no agent binaries in $dist; run make cross first" >&2
	exit 1
fi

fail=0
for t in "${targets[@]}"; do
	bin="$dist/edge-agent-$t"
	if [ "$t" = "linux-$(go env GOHOSTARCH)" ]; then
		out=$("$bin" version 2>&1) || { echo "smoke: $t: exit $?: $out" >&2; fail=1; continue; }
	else
		out=$(bash "$root/cross/qemu-exec.sh" "$t" "$bin" version 2>&1) || { echo "smoke: $t: exit $?: $out" >&2; fail=1; continue; }
	fi
	for want in "target $t" ${VERSION:+"$VERSION"} ${COMMIT:+"commit $COMMIT"}; do
		if [[ "$out" != *"$want"* ]]; then
			echo "smoke: $t: output $out does not say $want" >&2
			fail=1
		fi
	done
	echo "smoke: $t: $out"
done
exit $fail
