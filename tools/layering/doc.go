// Package layering is a test-only package that enforces the repository's
// structure rules (DESIGN.md, "Import rules"; STYLE.md) with `go list`:
//
//   - proto/... imports neither firmware/ nor fleet/;
//   - internal/... (code both sides share that is not wire protocol, such
//     as internal/buildinfo) imports none of firmware/, fleet/ and proto/;
//   - firmware/... never imports fleet/...;
//   - the clients fleet/cmd/tsh and fleet/cmd/fleetctl link no server
//     packages: of the project they may link only proto/..., fleet/client,
//     fleet/tsh, fleet/fleetctl, fleet/kubeconfig (and their subpackages)
//     and internal/buildinfo;
//   - production code never imports "testing", nor a test-support package
//     (one whose name ends in "test", such as imagetest or fleettest); the
//     benchmark commands under tools/bench, developer tools nothing
//     imports, may use test support (browsertest.Start) but not "testing"
//     itself;
//   - every package has a doc comment starting "Package <name>" (a command:
//     "Command <dir>", "<Dir> ..." or "Package main"), including test-only
//     packages, which carry it in a doc.go;
//   - the agent (firmware/cmd/edge-agent, listed for linux/arm64 with
//     CGO_ENABLED=0 as it ships) links nothing from k8s.io/..., nothing from
//     fleet/..., and not "testing"; the test logs every module it links
//     (go test -v -run TestAgentDependencies ./tools/layering).
//
// The rules bind production code: tests may cross them (an end-to-end test
// in firmware/ may start an in-process fleet).
//
// This file holds no code and nothing imports the package; the rules are in
// layering_test.go. The tests fail, never skip, when a package they check is
// missing or `go list` fails.
package layering
