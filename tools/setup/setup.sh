#!/usr/bin/env bash
# setup.sh installs what the build and the tests need, idempotently, on a
# Debian 12 machine (run as root, or with sudo available):
#
#   Debian packages  openssh-client, openssh-server (the benchmark's peer
#                    sshd and OpenSSH client tests), qemu-user-static (ARM
#                    tests: qemu-aarch64-static, qemu-arm-static), systemd
#                    (systemd-analyze verify in the unit tests), iproute2
#                    (network namespaces in the netwatch test), bash-completion,
#                    zsh and fish (the shell completion tests of tsh and
#                    fleetctl), chromium and fonts-dejavu-core (the browser
#                    tests, driven with chromedp: tools/browsertest),
#                    etcd-server (the etcd store's tests start etcd clusters
#                    with it; the system etcd service it starts is disabled)
#   Go tools         staticcheck and gotestsum (the test runner make check
#                    uses), with `go install` into .cache/bin
#   Kubernetes       etcd-server, and kube-apiserver + kubectl built from the
#                    k8s.io/kubernetes module (tools/kube/setup.sh)
#
# It runs `apt-get update` only when a package is missing, and does nothing
# but check when everything is there (well under 2 s). Every action is
# printed. Usage: bash tools/setup/setup.sh   (make setup, and make check/test
# call it first).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bindir="$root/.cache/bin"

# Pinned tool versions. staticcheck v0.8.x (2026.2) is the release that
# supports Go 1.26.
staticcheck_version=v0.8.2
gotestsum_version=v1.13.0

debs=(openssh-client openssh-server qemu-user-static systemd iproute2 bash-completion zsh fish chromium fonts-dejavu-core etcd-server)

say() { printf 'setup: %s\n' "$*"; }

# Go toolchain.
if ! command -v go >/dev/null 2>&1; then
	say "go not found on PATH: install Go 1.26 or later first" >&2
	exit 1
fi
goversion=$(go env GOVERSION)
case "$goversion" in
go1.2[6-9]* | go1.[3-9][0-9]*) ;;
*)
	say "need Go 1.26 or later, have $goversion" >&2
	exit 1
	;;
esac
say "go: $goversion ok"

# Debian packages.
missing=()
for p in "${debs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			sudo=(sudo)
		else
			say "missing Debian packages ${missing[*]}; run this script as root" >&2
			exit 1
		fi
	fi
	say "installing Debian packages: ${missing[*]}"
	# Install from the current lists first; refresh them only when that
	# fails (a fresh machine has no lists, an old one may have stale ones).
	if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" 2>/dev/null; then
		say "apt-get update"
		"${sudo[@]}" apt-get update -q
		DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
	# etcd-server starts a system etcd on 127.0.0.1:2379; the tests run
	# their own clusters on free ports and do not need it.
	if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1 &&
		systemctl is-active --quiet etcd 2>/dev/null; then
		say "stopping and disabling the system etcd service (the tests start their own)"
		"${sudo[@]}" systemctl disable --now etcd || true
	fi
else
	say "Debian packages: ${debs[*]} ok"
fi

# The etcd the etcd store's tests start.
if ! command -v etcd >/dev/null 2>&1; then
	say "etcd not found on PATH after installing etcd-server" >&2
	exit 1
fi

# The qemu binaries the ARM tests call.
for q in qemu-aarch64-static qemu-arm-static; do
	if ! command -v "$q" >/dev/null 2>&1; then
		say "$q not found after installing qemu-user-static" >&2
		exit 1
	fi
done

# Go tools, into the project's own bin dir.
mkdir -p "$bindir"
if "$bindir/staticcheck" -version 2>/dev/null | grep -q "(${staticcheck_version#v})"; then
	say "staticcheck ${staticcheck_version} ok"
else
	say "go install honnef.co/go/tools/cmd/staticcheck@${staticcheck_version} into .cache/bin"
	(cd "$root" && GOBIN="$bindir" go install "honnef.co/go/tools/cmd/staticcheck@${staticcheck_version}")
fi
if "$bindir/gotestsum" --version 2>/dev/null | grep -q "${gotestsum_version#v}"; then
	say "gotestsum ${gotestsum_version} ok"
else
	say "go install gotest.tools/gotestsum@${gotestsum_version} into .cache/bin"
	(cd "$root" && GOBIN="$bindir" go install "gotest.tools/gotestsum@${gotestsum_version}")
fi

# The Kubernetes tests' etcd-server and the kube-apiserver/kubectl build.
bash "$root/tools/kube/setup.sh"
