package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// osc52 writes "evil" to the clipboard of a terminal that prints it, and
// then erases the line it is on.
const osc52 = "\x1b]52;c;ZXZpbA==\x07\x1b[2K"

// rawControls reports whether s holds a control character other than a
// newline: what must never reach an admin's terminal from the fleet.
func rawControls(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool {
		return r != '\n' && (r < 0x20 || r == 0x7f || r >= 0x80 && r <= 0x9f || r == 0x202e)
	})
}

// TestTerminalSafeOutput: strings a device or user controls reach the
// fleet's listings, and tsh and fleetctl print them escaped. A command
// with escape sequences is audited as it is and printed escaped by
// fleetctl audit search; an agent that reports a version holding escape
// sequences is refused at hello, and the denial is printed escaped too.
func TestTerminalSafeOutput(t *testing.T) {
	f, a, u := setup(t)

	u.Tsh("ssh", "root@pi-1", "true #"+osc52)
	var cmd string
	if !harness.Eventually(30*time.Second, func() bool {
		for _, e := range search(t, f, "--type=exec", "--device=pi-1") {
			if c := e.Fields["command"]; strings.Contains(c, osc52) {
				cmd = c
				return true
			}
		}
		return false
	}) {
		t.Fatal("no exec event with the command as it was run")
	}
	text := f.Ctl("", "audit", "search", "--type=exec", "--device=pi-1")
	if rawControls(text) || !strings.Contains(text, `\x1b]52;c;ZXZpbA==\x07\x1b[2K`) {
		t.Errorf("audit search printed %q; want the command escaped", text)
	}
	js := f.Ctl("", "audit", "search", "--type=exec", "--device=pi-1", "--format=json")
	var list api.List[api.AuditEvent]
	if rawControls(js) || json.Unmarshal([]byte(js), &list) != nil || len(list.Items) == 0 || list.Items[len(list.Items)-1].Fields["command"] != cmd {
		t.Errorf("audit search --format=json: %q; want escapes that decode to the command", js)
	}

	// An agent whose version holds an escape sequence: built with it, as a
	// release build sets it.
	hostile := filepath.Join(t.TempDir(), "edge-agent")
	build := exec.Command("go", "build", "-o", hostile, "-ldflags", "-X remoteler.dev/edge/internal/buildinfo.Version=v6.6.6"+osc52,
		"remoteler.dev/edge/firmware/cmd/edge-agent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build an agent with a hostile version: %v\n%s", err, out)
	}
	a.Proc.Stop()
	bad := start(t, "hostile edge-agent", nil, hostile, "start", "--data-dir", a.DataDir, "--log-level", "debug", "--kubeconfig", "off")
	f.Proc.WaitOutput("hello: agent version", 30*time.Second)
	bad.Stop()
	for _, d := range f.Devices() {
		if d.Name == "pi-1" && (d.Online || strings.Contains(d.AgentVersion, "6.6.6")) {
			t.Errorf("the hostile hello was accepted: %+v", d)
		}
	}
	denied := f.Ctl("", "audit", "search", "--type=access.denied", "--device=pi-1")
	if rawControls(denied) || !strings.Contains(denied, `v6.6.6\x1b]52;c;ZXZpbA==\x07\x1b[2K`) {
		t.Errorf("audit search of the denial printed %q; want the version escaped", denied)
	}
	for _, out := range []string{u.Tsh("ls", "-v"), f.Ctl("", "devices", "ls", "-v")} {
		if rawControls(out) {
			t.Errorf("a listing holds control characters: %q", out)
		}
	}
}
