#!/usr/bin/env bash
# qemu-exec.sh is the `go test -exec` wrapper for the ARM tests: it runs a
# test binary built for another architecture under qemu user-mode emulation
# (Debian's qemu-user-static; no binfmt_misc registration needed).
#
# Usage: qemu-exec.sh TARGET BINARY [ARGS...]
#   TARGET linux-arm64   qemu-aarch64-static
#          linux-armv6   qemu-arm-static -cpu arm1176 (the Raspberry Pi 1/Zero
#                        core: proves the GOARM=6 code runs on ARMv6)
#          linux-armv7   qemu-arm-static -cpu cortex-a7
#          linux-riscv64 qemu-riscv64-static
# go test passes BINARY and its flags; cross/qemu-test.sh sets it up.
set -euo pipefail
target=$1
shift
case "$target" in
linux-arm64) exec qemu-aarch64-static "$@" ;;
linux-armv6) exec qemu-arm-static -cpu arm1176 "$@" ;;
linux-armv7) exec qemu-arm-static -cpu cortex-a7 "$@" ;;
linux-riscv64) exec qemu-riscv64-static "$@" ;;
*)
	echo "qemu-exec.sh: unknown target $target" >&2
	exit 2
	;;
esac
