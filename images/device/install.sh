#!/usr/bin/env bash
# install.sh installs edge-agent on a device, or into an image's root
# filesystem, and enables its systemd service. Running it again gives the
# same result (it is how an agent is upgraded by hand, too).
#
# Usage: install.sh [--root DIR] [--binary PATH] [--config PATH] [--now]
#   --root DIR     install into DIR instead of / (also: DESTDIR=DIR); the
#                  service is then enabled by creating the
#                  multi-user.target.wants symlink directly, as
#                  `systemctl enable` would, without talking to systemd
#   --binary PATH  the agent binary for this device (default: edge-agent
#                  next to this script, as in a release bundle)
#   --config PATH  the device's config, installed as
#                  /etc/edge-agent/config.yaml (mode 0600); without it an
#                  existing config.yaml is kept, and none is created
#   --now          when installing into the running system: (re)start the
#                  service afterwards
#
# What it writes (all owned by root when run as root):
#   /usr/local/bin/edge-agent                               0755
#   /etc/systemd/system/edge-agent.service                  0644
#   /etc/edge-agent/                                        0755
#   /etc/edge-agent/config.example.yaml                     0644
#   /etc/edge-agent/config.yaml (only with --config)        0600
#   /etc/systemd/system/multi-user.target.wants/edge-agent.service
#       -> /etc/systemd/system/edge-agent.service
# The unit's ConditionPathExists keeps the service from starting until
# config.yaml exists, so an image can ship the service enabled and get its
# config at provisioning time.
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${DESTDIR:-}
binary=$here/edge-agent
config=
now=0

die() {
	echo "install.sh: $*" >&2
	exit 1
}

while (($#)); do
	case "$1" in
	--root) root=${2:?--root needs a directory}; shift 2 ;;
	--root=*) root=${1#--root=}; shift ;;
	--binary) binary=${2:?--binary needs a path}; shift 2 ;;
	--binary=*) binary=${1#--binary=}; shift ;;
	--config) config=${2:?--config needs a path}; shift 2 ;;
	--config=*) config=${1#--config=}; shift ;;
	--now) now=1; shift ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done

[ -f "$binary" ] || die "agent binary $binary not found; pass --binary PATH"
[ -z "$config" ] || [ -f "$config" ] || die "config $config not found"
for f in edge-agent.service config.example.yaml; do
	[ -f "$here/$f" ] || die "$here/$f missing: run install.sh from its own folder or a release bundle"
done

# Strip a trailing slash; "/" and "" both mean the running system.
root=${root%/}
live=0
[ -n "$root" ] || live=1
if ((!live)); then
	mkdir -p "$root"
	root=$(cd "$root" && pwd)
	[ "$root" != / ] || { root=; live=1; }
fi

owner=()
if [ "$(id -u)" -eq 0 ]; then
	owner=(-o 0 -g 0)
fi

# put MODE SRC DST: install a file atomically (a running agent keeps
# executing the old inode; systemd starts the new one).
put() {
	local mode=$1 src=$2 dst=$root$3
	install -d -m 0755 "${owner[@]}" "$(dirname "$dst")"
	install -m "$mode" "${owner[@]}" "$src" "$dst.new"
	mv -f "$dst.new" "$dst"
	echo "install.sh: $3 ($mode)"
}

put 0755 "$binary" /usr/local/bin/edge-agent
put 0644 "$here/edge-agent.service" /etc/systemd/system/edge-agent.service
install -d -m 0755 "${owner[@]}" "$root/etc/edge-agent"
put 0644 "$here/config.example.yaml" /etc/edge-agent/config.example.yaml
if [ -n "$config" ]; then
	put 0600 "$config" /etc/edge-agent/config.yaml
elif [ ! -f "$root/etc/edge-agent/config.yaml" ]; then
	echo "install.sh: no /etc/edge-agent/config.yaml yet: the service starts once it exists (see config.example.yaml)"
fi

if ((live)) && [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	systemctl enable edge-agent.service
	if ((now)); then
		systemctl restart edge-agent.service
		echo "install.sh: edge-agent restarted"
	fi
else
	# What `systemctl enable` does for WantedBy=multi-user.target.
	wants=/etc/systemd/system/multi-user.target.wants
	install -d -m 0755 "${owner[@]}" "$root$wants"
	ln -sfn /etc/systemd/system/edge-agent.service "$root$wants/edge-agent.service"
	if [ "$(id -u)" -eq 0 ]; then
		chown -h 0:0 "$root$wants/edge-agent.service"
	fi
	echo "install.sh: enabled edge-agent.service (symlink in $wants)"
	if ((now)); then
		echo "install.sh: --now ignored: systemd is not running this root" >&2
	fi
fi
