// Package imagetest tests the device and fleet deployment artefacts in
// images/: the systemd units (systemd-analyze verify, required settings),
// images/device/install.sh (installing into a temporary root, twice, and
// checking every file, mode, owner and symlink) and images/device/rootfs.sh
// (a deterministic overlay tarball).
//
// It is test-only: this file holds no code and nothing imports the package.
// The tests need bash, GNU tar, gzip and systemd-analyze (Debian's systemd
// package; tools/setup/setup.sh installs it) and fail, not skip, without
// them.
package imagetest
