package e2e

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestREADMESamples runs the README's walkthrough against real binaries and
// checks that every output line the README shows (the "#   " lines after
// a command) is one the command prints.
func TestREADMESamples(t *testing.T) {
	samples := readmeSamples(t)
	f := startFleet(t)
	outputs := map[string]string{
		"bin/fleetd start --data-dir /var/lib/fleetd --listen 0.0.0.0:3080": f.Proc.Output(),
		"echo 's3cret-passw0rd' | bin/fleetctl --data-dir /var/lib/fleetd users add alice --roles=access --logins=root,pi": f.Ctl("s3cret-passw0rd\n",
			"users", "add", "alice", "--roles=access", "--logins=root,pi"),
	}
	const tokensAdd = "bin/fleetctl --data-dir /var/lib/fleetd tokens add --ttl=1h --labels=site=north --fleet-addr=fleet.example.com:3080"
	outputs[tokensAdd] = f.Ctl("", "tokens", "add", "--ttl=1h", "--labels=site=north", "--fleet-addr=fleet.example.com:3080")
	join := regexp.MustCompile(`Join string: (\S+)`).FindStringSubmatch(outputs[tokensAdd])
	if join == nil {
		t.Fatalf("tokens add printed no join string:\n%s", outputs[tokensAdd])
	}
	start(t, "edge-agent pi-1", nil, "edge-agent", "start", "--fleet="+f.Addr, "--token="+join[1], "--labels=model=pi4",
		"--name=pi-1", "--data-dir="+t.TempDir())
	f.WaitOnline("pi-1")
	u := f.NewUser("alice")
	login, errOut, err := u.TshErr("s3cret-passw0rd\n", "login", "--proxy="+f.Addr, "--user=alice", "--ca-pin="+f.Pin)
	if err != nil {
		t.Fatalf("tsh login: %v\n%s", err, errOut)
	}
	outputs["tsh login --proxy=fleet.example.com:3080 --user=alice"] = login
	outputs["tsh ls"] = u.Tsh("ls")

	for cmd, want := range samples {
		out, ok := outputs[cmd]
		if !ok {
			t.Errorf("README.md shows what %q prints, but this test does not run it: add it here", cmd)
			continue
		}
		for _, line := range want {
			if !hasSampleLine(out, line) {
				t.Errorf("README.md says %q prints\n\t%s\nbut it printed:\n%s", cmd, line, out)
			}
		}
	}
	for cmd := range outputs {
		if _, ok := samples[cmd]; !ok {
			t.Errorf("README.md no longer shows what %q prints: update this test", cmd)
		}
	}
}

// readmeSamples returns the README's sample outputs by the command that
// prints them: in its ```sh blocks, the "#   " lines right after a command
// line (whose own trailing comment is dropped).
func readmeSamples(t *testing.T) map[string][]string {
	t.Helper()
	file, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	samples := map[string][]string{}
	inSh, cmd := false, ""
	sc := bufio.NewScanner(file)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "```"):
			inSh, cmd = line == "```sh", ""
		case !inSh:
		case strings.HasPrefix(line, "#   "):
			if cmd == "" {
				t.Fatalf("README.md: sample output %q follows no command", line)
			}
			samples[cmd] = append(samples[cmd], line[len("#   "):])
		case strings.HasPrefix(line, "#"), strings.TrimSpace(line) == "":
			cmd = ""
		default:
			cmd = line
			if i := strings.Index(line, "  #"); i >= 0 {
				cmd = line[:i]
			}
			cmd = strings.TrimSpace(cmd)
		}
	}
	if len(samples) == 0 {
		t.Fatal("README.md shows no sample output")
	}
	return samples
}

// placeholders are the README's values that differ from run to run, and
// what the real output has in their place.
var placeholders = []struct{ readme, re string }{
	{"sha256:6f1c...", `sha256:[0-9a-f]{64}`},
	{"...", `.*`},
	{"fleet.example.com:3080", `\S+`},
	{"v0.3.1", `\S+`},
	{"0.0.0.0:3080", `\S+`},
	{"127.0.0.1:3080", `\S+`},
	{"/var/lib/fleetd", `\S+`},
	{"3f9a0c1d2e4b", `[0-9a-f]+`},
	{"just now", `(just now|\d+s ago)`},
	{"(in 59m)", `\(in \S+\)`},
	{"(for 8h)", `\(for \S+\)`},
}

var sampleTime = regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+`)

// hasSampleLine reports whether out has a line that the README's sample
// line describes, spaces squeezed.
func hasSampleLine(out, sample string) bool {
	re := regexp.QuoteMeta(strings.Join(strings.Fields(sample), " "))
	re = sampleTime.ReplaceAllString(re, `\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+`)
	for _, p := range placeholders {
		re = strings.ReplaceAll(re, regexp.QuoteMeta(p.readme), p.re)
	}
	match := regexp.MustCompile("^" + re + "$")
	for _, l := range strings.Split(out, "\n") {
		if match.MatchString(strings.Join(strings.Fields(l), " ")) {
			return true
		}
	}
	return false
}
