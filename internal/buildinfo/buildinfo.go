// Package buildinfo holds the version, commit and build target of the
// binary it is linked into. The release build (cross/build.sh) sets them with
//
//	-ldflags "-X remoteler.dev/edge/internal/buildinfo.Version=v1.2.3
//	          -X remoteler.dev/edge/internal/buildinfo.Commit=abc123
//	          -X remoteler.dev/edge/internal/buildinfo.Target=linux-arm64"
//
// and a plain `go build` leaves each at "dev". Target uses the artefact names
// of dist/ ("linux-arm64", "linux-armv6", "linux-armv7", "linux-amd64"), so
// the agent can report which release artefact it needs for OTA.
//
// It imports nothing from the project; any package may import it (the agent,
// fleetd, tsh and fleetctl all report their version from it).
package buildinfo

import "runtime"

// Set at link time with -X; see the package doc. They are variables, not
// constants, only so that the linker can set them: never assign to them.
var (
	// Version is the release version, for example "v0.3.1" or a
	// `git describe` string; "dev" in development builds.
	Version = "dev"
	// Commit is the git commit the binary was built from; "dev" when unknown.
	Commit = "dev"
	// Target is the build target as named by the release artefacts
	// ("linux-arm64", "linux-armv6", ...); "dev" in development builds.
	Target = "dev"
)

// String describes the build in one line, for `--version` output and logs:
// "v0.3.1 (commit abc123, target linux-arm64, go1.26.8)".
func String() string {
	return Version + " (commit " + Commit + ", target " + Target + ", " + runtime.Version() + ")"
}
