package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestShellCompletion loads tsh's and fleetctl's completion scripts in
// bash, zsh and fish (installed by tools/setup/setup.sh) and completes a
// device name against a running fleet, as a TAB does.
func TestShellCompletion(t *testing.T) {
	f := startFleet(t)
	f.StartAgent("pi-tab", "site=lab")
	u := f.Login("alice", f.AddUser("alice", "access", "root"))
	env := append(u.Env(), "PATH="+string(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))

	bashScript := func(prog string, words ...string) string {
		return `source /usr/share/bash-completion/bash_completion
source <(` + prog + ` completion bash)
compopt() { :; } # sets display options; works only inside a TAB
COMP_WORDS=(` + strings.Join(words, " ") + `)
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
__start_` + prog + ` ` + prog + `
printf '%s\n' "${COMPREPLY[@]}"`
	}
	// zsh completes inside its line editor only; the test calls the
	// script's completion function with the editor's variables set and
	// _describe (zsh's own, which draws the menu) replaced by one that
	// prints the candidates it is given.
	zshScript := func(prog string, words ...string) string {
		return `compdef() { :; }
_describe() { print -rl -- "${completions[@]}"; }
source <(` + prog + ` completion zsh)
words=(` + strings.Join(words, " ") + `)
CURRENT=${#words}
_` + prog
	}
	fishScript := func(prog string, words ...string) string {
		return prog + ` completion fish | source; complete -C "` + strings.Join(words, " ") + `"`
	}
	tests := []struct {
		shell  string
		script string
		want   string // a line of the output
	}{
		{"bash", bashScript("tsh", "tsh", "ssh", "pi-t"), "pi-tab"},
		{"bash", bashScript("tsh", "tsh", "ssh", "root@pi-t"), "root@pi-tab"},
		{"bash", bashScript("tsh", "tsh", "scp", "pi-t"), "pi-tab:"},
		{"bash", bashScript("fleetctl", "fleetctl", "--data-dir", f.DataDir, "devices", "rm", "pi-"), "pi-tab"},
		{"zsh", zshScript("tsh", "tsh", "ssh", "pi-t"), "pi-tab:online site=lab"},
		{"zsh", zshScript("fleetctl", "fleetctl", "--data-dir", f.DataDir, "devices", "rm", "pi-"), "pi-tab:online site=lab"},
		{"fish", fishScript("tsh", "tsh", "ssh", "pi-t"), "pi-tab\tonline site=lab"},
		{"fish", fishScript("fleetctl", "fleetctl", "--data-dir", f.DataDir, "users", "rm", "al"), "alice\troles access"},
	}
	for _, tt := range tests {
		t.Run(tt.shell+" "+firstLine(tt.script), func(t *testing.T) {
			shell, err := exec.LookPath(tt.shell)
			if err != nil {
				t.Fatalf("%s is not installed: run tools/setup/setup.sh", tt.shell)
			}
			args := []string{"-c", tt.script}
			if tt.shell == "zsh" {
				args = []string{"-f", "-c", tt.script}
			}
			out, errOut, err := run("", append(env, "HOME="+t.TempDir()), shell, args...)
			if err != nil || !containsLine(out, tt.want) {
				t.Errorf("%s: %v\nstdout:\n%s\nstderr:\n%s\nwant the line %q", tt.shell, err, out, errOut, tt.want)
			}
		})
	}
}

// firstLine names a script by the words it completes.
func firstLine(script string) string {
	for _, l := range strings.Split(script, "\n") {
		if w, ok := strings.CutPrefix(l, "COMP_WORDS=("); ok {
			return strings.TrimSuffix(w, ")")
		}
		if w, ok := strings.CutPrefix(l, "words=("); ok {
			return strings.TrimSuffix(w, ")")
		}
		if _, w, ok := strings.Cut(l, "complete -C "); ok {
			return strings.Trim(w, `"`)
		}
	}
	return filepath.Base(script)
}

func containsLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if l == want {
			return true
		}
	}
	return false
}
