package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/firmware/agent"
)

// TestHelp checks help at every level: the program, each command with -h
// and through help COMMAND.
func TestHelp(t *testing.T) {
	var settings []string
	var c agent.Config
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	c.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) { settings = append(settings, "\n  -"+f.Name) })
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"help", []string{"help"}, 0, []string{"start", "version", "update-check", "edge-agent help COMMAND"}, ""},
		{"update-check -h", []string{"update-check", "-h"}, 0, []string{"Usage: edge-agent update-check", "-config FILE", "-data-dir DIR"}, ""},
		{"help update-check", []string{"help", "update-check"}, 0, []string{"Usage: edge-agent update-check"}, ""},
		{"--help", []string{"--help"}, 0, []string{"start", "version"}, ""},
		{"start -h", []string{"start", "-h"}, 0, append([]string{"Usage: edge-agent start", "-config FILE"}, settings...), ""},
		{"help start", []string{"help", "start"}, 0, append([]string{"Usage: edge-agent start"}, settings...), ""},
		{"version -h", []string{"version", "-h"}, 0, []string{"Usage: edge-agent version"}, ""},
		{"help version", []string{"help", "version"}, 0, []string{"Usage: edge-agent version"}, ""},
		{"nothing", nil, 2, nil, "Usage: edge-agent COMMAND"},
		{"unknown command", []string{"stat"}, 2, nil, `edge-agent: unknown command "stat"`},
		{"unknown flag", []string{"start", "--fleat=x"}, 2, nil, "flag provided but not defined: -fleat"},
		{"stray argument", []string{"start", "x"}, 2, nil, `edge-agent start: unexpected argument "x"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb)
			if code != tt.code || !strings.Contains(errb.String(), tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errb.String(), tt.code, tt.stderr)
			}
			for _, want := range tt.stdout {
				if !strings.Contains(out.String(), want) {
					t.Errorf("stdout lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

// TestStartSettings checks that start reads the config file and that the
// flags given on the command line win over it.
func TestStartSettings(t *testing.T) {
	var got agent.Config
	startAgent = func(cfg agent.Config) int { got = cfg; return 0 }
	t.Cleanup(func() { startAgent = start })
	file := filepath.Join(t.TempDir(), "agent.yaml")
	os.WriteFile(file, []byte("fleet: fleet.example.com:3080\nsession_hold: 30m\nkeepalive: 10s\nlabels: {site: north}\n"), 0o600)
	tests := []struct {
		name  string
		args  []string
		check func(c agent.Config) bool
	}{
		{"file only", []string{"start", "--config", file}, func(c agent.Config) bool {
			return c.Fleet == "fleet.example.com:3080" && c.SessionHold == 30*time.Minute && c.Keepalive == 10*time.Second && c.Labels["site"] == "north"
		}},
		{"flags win", []string{"start", "--keepalive=20s", "--config", file, "--labels=site=south", "--tunnel-addr=relay:4433"}, func(c agent.Config) bool {
			return c.Fleet == "fleet.example.com:3080" && c.SessionHold == 30*time.Minute && c.Keepalive == 20*time.Second &&
				c.Labels["site"] == "south" && c.TunnelAddr == "relay:4433"
		}},
		{"flags only", []string{"start", "--fleet=a:1", "--session-hold=1m"}, func(c agent.Config) bool {
			return c.Fleet == "a:1" && c.SessionHold == time.Minute && c.Keepalive == 0
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got = agent.Config{}
			var out, errb bytes.Buffer
			if code := run(tt.args, &out, &errb); code != 0 || !tt.check(got) {
				t.Errorf("exit %d (%s), config %+v", code, errb.String(), got)
			}
		})
	}
	var errb bytes.Buffer
	os.WriteFile(file, []byte("sesion_hold: 1m\n"), 0o600)
	if code := run([]string{"start", "--config", file}, &bytes.Buffer{}, &errb); code != 2 || !strings.Contains(errb.String(), `unknown setting "sesion_hold"`) {
		t.Errorf("a misspelt key: exit %d, stderr %q", code, errb.String())
	}
}

// TestUpdateCheck runs update-check as the unit does, from the kept old
// binary with the agent's config file: it finds the update state by the
// file's data_dir, even when the file holds settings this binary does not
// know, and puts the old binary back after a new one that stopped on
// trial.
func TestUpdateCheck(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	target, prev := filepath.Join(dir, "edge-agent"), filepath.Join(dir, ".edge-agent.prev")
	for path, body := range map[string]string{target: "new", prev: "old"} {
		if err := os.WriteFile(path, []byte(body), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dataDir, "update"), 0o700); err != nil {
		t.Fatal(err)
	}
	state := fmt.Sprintf(`{"phase": "trial", "version": "v2", "from": "v1", "target": %q, "prev": %q, "started": true}`, target, prev)
	if err := os.WriteFile(filepath.Join(dataDir, "update", "state.json"), []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "agent.yaml")
	os.WriteFile(config, []byte("fleet: f:1\ndata_dir: "+dataDir+"\na_setting_of_a_newer_agent: 1\n"), 0o600)
	var errb bytes.Buffer
	if code := run([]string{"update-check", "--config", config}, &bytes.Buffer{}, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if b, _ := os.ReadFile(target); string(b) != "old" || !strings.Contains(errb.String(), "rolled back to v1") {
		t.Errorf("binary %q, stderr %q; want the old binary back and the reason", b, errb.String())
	}
	if code := run([]string{"update-check", "--config", filepath.Join(dir, "none.yaml")}, &bytes.Buffer{}, &errb); code != 2 {
		t.Errorf("a missing config file: exit %d, want 2", code)
	}
}
