#!/usr/bin/env bash
# qemu-test.sh runs the agent's packages' tests on emulated ARM: each test
# binary is cross-compiled (CGO_ENABLED=0, as the agent ships) and started
# by `go test -exec cross/qemu-exec.sh TARGET` under qemu user-mode emulation:
#
#   linux-arm64   qemu-aarch64-static
#   linux-armv6   qemu-arm-static -cpu arm1176 (GOARM=6)
#
# Tests see EDGE_QEMU_TARGET=<target> in their environment, so a test that
# re-executes its own binary (which the host cannot run without
# binfmt_misc) starts it through cross/qemu-exec.sh. A skipped test fails
# the run, as in make test-go.
#
# The end-to-end ARM test (agents under qemu joining a fleetd on loopback and
# serving tsh ssh) is a normal Go test run by `go test ./...`; cross/README.md
# describes the hook it uses (cross/build.sh with OUT, cross/qemu-exec.sh as
# the launcher).
#
# Usage: cross/qemu-test.sh [PACKAGE...]   (default: ./firmware/... ./proto/...)
# Environment:
#   TARGETS          space-separated targets (default "linux-arm64 linux-armv6")
#   QEMU_TEST_FLAGS  extra go test flags (default "-timeout 8m": tests take
#                   seconds natively and 5-20x that under qemu)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
pkgs=("$@")
((${#pkgs[@]})) || pkgs=(./firmware/... ./proto/...)
read -r -a targets <<<"${TARGETS:-linux-arm64 linux-armv6}"
read -r -a flags <<<"${QEMU_TEST_FLAGS:--timeout 8m}"

failed=()
for t in "${targets[@]}"; do
	goarm=
	case "$t" in
	linux-arm64) goarch=arm64 qemu=qemu-aarch64-static ;;
	linux-armv6) goarch=arm goarm=6 qemu=qemu-arm-static ;;
	linux-armv7) goarch=arm goarm=7 qemu=qemu-arm-static ;;
	linux-riscv64) goarch=riscv64 qemu=qemu-riscv64-static ;;
	*)
		echo "qemu-test: unknown target $t" >&2
		exit 2
		;;
	esac
	if ! command -v "$qemu" >/dev/null; then
		echo "qemu-test: $qemu not found: run tools/setup/setup.sh (Debian package qemu-user-static)" >&2
		exit 1
	fi
	echo "qemu-test: $t: go test ${pkgs[*]} under $qemu"
	start=$SECONDS
	mkdir -p "$root/.cache"
	json="$root/.cache/test-arm-$t.json"
	if EDGE_QEMU_TARGET=$t CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm \
		"$root/.cache/bin/gotestsum" --format pkgname-and-test-fails --jsonfile "$json" -- \
		-exec "'$root/cross/qemu-exec.sh' $t" "${flags[@]}" "${pkgs[@]}" &&
		bash "$root/tools/setup/noskip.sh" "$json"; then
		echo "qemu-test: $t passed ($((SECONDS - start))s)"
	else
		echo "qemu-test: $t FAILED ($((SECONDS - start))s)"
		failed+=("$t")
	fi
done
if ((${#failed[@]})); then
	echo "qemu-test: failed on ${failed[*]}" >&2
	exit 1
fi
