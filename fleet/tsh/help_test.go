package tsh

import (
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/client/cli/clitest"
)

// TestHelp checks help at every level of tsh: every command and group.
func TestHelp(t *testing.T) {
	e := newTestEnv(t)
	clitest.CheckHelp(t, (&runner{}).command(), func(args ...string) clitest.Result {
		r := e.run(nil, args...)
		return clitest.Result{Code: r.code, Stdout: r.stdout, Stderr: r.stder}
	})
}

// TestReferenceDocs checks that docs/cli/tsh*.md say what the code does.
func TestReferenceDocs(t *testing.T) {
	clitest.CheckDocs(t, (&runner{}).command())
}

// TestCommands lists the commands tsh must have, so that removing one is
// a decision.
func TestCommands(t *testing.T) {
	want := []string{
		"login", "status", "logout", "ls", "ssh", "scp", "config", "recordings", "recordings ls", "play",
		"kube", "kube ls", "kube login", "kube logout", "kube credentials", "proxy", "proxy ssh", "version",
		"completion", "completion bash", "completion zsh", "completion fish", "completion powershell", "help",
	}
	have := map[string]bool{}
	for _, p := range clitest.Commands((&runner{}).command()) {
		have[strings.Join(p, " ")] = true
	}
	for _, w := range want {
		if !have[w] {
			t.Errorf("tsh has no command %q", w)
		}
	}
}
