package fleetctl

import (
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/client/cli/clitest"
)

// TestHelp checks help at every level of fleetctl: every command and group.
func TestHelp(t *testing.T) {
	e := newTestEnv(t)
	clitest.CheckHelp(t, (&runner{}).command(), func(args ...string) clitest.Result {
		r := e.run("", args...)
		return clitest.Result{Code: r.code, Stdout: r.stdout, Stderr: r.stderr}
	})
}

// TestReferenceDocs checks that docs/cli/fleetctl*.md say what the code
// does.
func TestReferenceDocs(t *testing.T) {
	clitest.CheckDocs(t, (&runner{}).command())
}

// TestCommands lists the commands fleetctl must have, so that removing one
// is a decision.
func TestCommands(t *testing.T) {
	want := []string{
		"users", "users add", "users ls", "users rm", "roles", "roles create", "roles ls", "roles rm", "create",
		"tokens", "tokens add", "tokens ls", "tokens rm", "devices", "devices ls", "devices rm", "status",
		"lock", "locks", "locks ls", "locks rm",
		"audit", "audit search", "audit verify", "version",
		"releases", "releases keygen", "releases sign", "releases rotate-key", "releases add", "releases ls", "releases rm",
		"rollouts", "rollouts create", "rollouts ls", "rollouts status", "rollouts pause", "rollouts resume", "rollouts abort",
		"rollouts pin", "rollouts unpin", "rollouts pins",
		"completion", "completion bash", "completion zsh", "completion fish", "completion powershell", "help",
	}
	have := map[string]bool{}
	for _, p := range clitest.Commands((&runner{}).command()) {
		have[strings.Join(p, " ")] = true
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("fleetctl has no command %q", w)
		}
	}
}
