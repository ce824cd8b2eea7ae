#!/usr/bin/env bash
# build.sh cross-compiles edge-agent for the device targets into dist/:
#
#   dist/edge-agent-linux-arm64    64-bit ARM (Raspberry Pi 3/4/5, arm64 gateways)
#   dist/edge-agent-linux-armv6    32-bit ARMv6 (Raspberry Pi Zero/1): GOARM=6.
#                                  Its own artefact: GOARM=7 binaries crash on
#                                  ARMv6 CPUs (VFPv3 instructions, no Thumb-2).
#   dist/edge-agent-linux-armv7    32-bit ARMv7 (Raspberry Pi 2, most Cortex-A)
#   dist/edge-agent-linux-amd64    x86-64 gateways and VMs
#   dist/edge-agent-linux-riscv64  RISC-V boards (costs one more compile)
#   dist/SHA256SUMS                sha256sum of every artefact in dist/
#
# Binaries are static (CGO_ENABLED=0), stripped (-s -w) and reproducible:
# -trimpath, -buildvcs=false and an empty -buildid make the bytes depend only
# on the source, the Go version and the three values embedded with -X into
# remoteler.dev/edge/internal/buildinfo: Version, Commit and Target.
# cross/repro.sh checks that.
#
# Usage: cross/build.sh [TARGET...]     (default: all targets above)
# Environment:
#   VERSION  embedded version; default `git describe --tags --always --dirty`, else "dev"
#   COMMIT   embedded commit; default `git rev-parse HEAD`, else "dev"
#   OUT      output directory; default dist/ in the repository
#   PKG      package to build; default ./firmware/cmd/edge-agent
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

all_targets=(linux-arm64 linux-armv6 linux-armv7 linux-amd64 linux-riscv64)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")

out=${OUT:-$root/dist}
pkg=${PKG:-./firmware/cmd/edge-agent}
name=edge-agent
if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
if [ -z "${COMMIT:-}" ]; then
	COMMIT=$(git rev-parse HEAD 2>/dev/null || echo dev)
fi

mkdir -p "$out"
bi=remoteler.dev/edge/internal/buildinfo
for target in "${targets[@]}"; do
	goarm=
	case "$target" in
	linux-arm64) goarch=arm64 ;;
	linux-armv6) goarch=arm goarm=6 ;;
	linux-armv7) goarch=arm goarm=7 ;;
	linux-amd64) goarch=amd64 ;;
	linux-riscv64) goarch=riscv64 ;;
	*)
		echo "cross/build.sh: unknown target $target (want one of ${all_targets[*]})" >&2
		exit 2
		;;
	esac
	start=$SECONDS
	dst="$out/$name-$target"
	CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm \
		go build -trimpath -buildvcs=false \
		-ldflags "-s -w -buildid= -X $bi.Version=$VERSION -X $bi.Commit=$COMMIT -X $bi.Target=$target" \
		-o "$dst.tmp" "$pkg"
	mv -f "$dst.tmp" "$dst"
	printf 'cross: %-32s %9d bytes  (%ds)\n' "$(basename "$dst")" "$(stat -c %s "$dst")" $((SECONDS - start))
done

# Sums of every artefact in the output directory, in name order.
(
	cd "$out"
	find . -maxdepth 1 -type f ! -name SHA256SUMS ! -name '*.tmp' -printf '%f\n' | LC_ALL=C sort | xargs -r sha256sum >SHA256SUMS.tmp
	mv -f SHA256SUMS.tmp SHA256SUMS
)
echo "cross: wrote $out/SHA256SUMS (version $VERSION, commit $COMMIT)"
