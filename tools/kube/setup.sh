#!/usr/bin/env bash
# setup.sh installs what the Kubernetes tests and benchmark need, idempotently,
# on a Debian 12 machine (run as root, or with sudo available). The project's
# tools/setup/setup.sh calls it; it can also be run on its own.
#
#   Debian package  etcd-server (the storage behind the test kube-apiserver)
#   built binaries  kube-apiserver and kubectl, from the k8s.io/kubernetes Go
#                   module, cached by version (tools/kube/build-apiserver.sh;
#                   ~10-15 min cold on 2 cores, instant when cached). Skipped
#                   when KUBE_SETUP_NO_BUILD=1: the tests build on demand.
#
# It runs `apt-get update` only when the package is missing, and does nothing
# but check when everything is there. Every action is printed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
say() { printf 'setup(kube): %s\n' "$*"; }

debs=(etcd-server)
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
	if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" 2>/dev/null; then
		say "apt-get update"
		"${sudo[@]}" apt-get update -q
		DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
	# The package starts a system etcd on 127.0.0.1:2379; the tests run
	# their own on free ports and do not need it.
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
		say "stopping and disabling the system etcd service (the tests start their own)"
		"${sudo[@]}" systemctl disable --now etcd || true
	fi
else
	say "Debian packages: ${debs[*]} ok"
fi
if ! command -v etcd >/dev/null 2>&1; then
	say "etcd not found on PATH after installing etcd-server" >&2
	exit 1
fi

if [ "${KUBE_SETUP_NO_BUILD:-}" = 1 ]; then
	say "kube-apiserver/kubectl build skipped (KUBE_SETUP_NO_BUILD=1)"
else
	say "kube-apiserver and kubectl: $(bash "$root/tools/kube/build-apiserver.sh")"
fi
