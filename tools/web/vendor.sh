#!/usr/bin/env bash
# vendor.sh re-fetches the browser libraries the fleet serves (its dashboard
# and login pages) with `npm pack`, checks each tarball against the npm
# integrity recorded in fleet/web/static/vendor/VENDOR.md, and checks that the
# checked-in files are byte for byte the ones in the tarballs. It changes
# nothing: to update a library, change its row in VENDOR.md, copy the files
# from the new tarball, and update the sha256 column (the test in
# fleet/web/static fails until it matches).
#
# There is no Node build step: the files are used as published.
# Usage: bash tools/web/vendor.sh   (needs npm; not part of make check)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
vendor="$root/fleet/web/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
# Rows: | package | version | licence | integrity | file | path in package | sha256 |
while IFS='|' read -r _ pkg version licence integrity file inpkg sum _; do
	pkg=$(echo $pkg) version=$(echo $version) integrity=$(echo $integrity) file=$(echo $file) inpkg=$(echo $inpkg) sum=$(echo $sum)
	case "$pkg" in "" | package | -*) continue ;; esac
	dir="$work/${pkg//\//_}-$version"
	if [ ! -d "$dir" ]; then
		mkdir -p "$dir"
		(cd "$dir" && npm pack --silent "$pkg@$version" >/dev/null)
		tgz=$(ls "$dir"/*.tgz)
		got="sha512-$(openssl dgst -sha512 -binary "$tgz" | base64 -w0)"
		if [ "$got" != "$integrity" ]; then
			echo "vendor: $pkg@$version: tarball integrity $got, VENDOR.md says $integrity" >&2
			status=1
		fi
		tar xzf "$tgz" -C "$dir"
	fi
	if ! cmp -s "$dir/$inpkg" "$vendor/$file"; then
		echo "vendor: $file differs from $inpkg in $pkg@$version" >&2
		status=1
	else
		echo "vendor: $file = $pkg@$version $inpkg"
	fi
done < <(grep '^|' "$vendor/VENDOR.md")
exit $status
