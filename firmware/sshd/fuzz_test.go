package sshd

import (
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestPasswdShell(t *testing.T) {
	passwd := "# comment\nroot:x:0:0:root:/root:/bin/bash\n\npi:x:1000:1000:,,,:/home/pi:/bin/zsh\nbad:line\nnoshell:x:1:1::/:\n"
	tests := []struct {
		login, want string
	}{
		{"root", "/bin/bash"},
		{"pi", "/bin/zsh"},
		{"noshell", ""},
		{"bad", ""},
		{"missing", ""},
		{"", ""},
		{"root:x", ""},
	}
	for _, tt := range tests {
		if got := passwdShell([]byte(passwd), tt.login); got != tt.want {
			t.Errorf("passwdShell(%q) = %q; want %q", tt.login, got, tt.want)
		}
	}
}

func TestEnvAllowed(t *testing.T) {
	tests := []struct {
		name, value string
		want        bool
	}{
		{"LANG", "C.UTF-8", true},
		{"LC_ALL", "C", true},
		{"LC_MEASUREMENT", "C", true},
		{"TERM", "xterm", true},
		{"TZ", "UTC", true},
		{"LC_", "C", false},
		{"LC_x", "C", false},
		{"LD_PRELOAD", "/tmp/x.so", false},
		{"PATH", "/tmp", false},
		{"BASH_ENV", "/tmp/x", false},
		{"LANG", "a\x00b", false},
		{"LANG", strings.Repeat("x", maxEnvValue+1), false},
	}
	for _, tt := range tests {
		if got := envAllowed(tt.name, tt.value); got != tt.want {
			t.Errorf("envAllowed(%q, %.20q) = %v; want %v", tt.name, tt.value, got, tt.want)
		}
	}
}

func FuzzPasswdShell(f *testing.F) {
	f.Add([]byte("root:x:0:0:root:/root:/bin/bash\n"), "root")
	f.Add([]byte("a:b:c:d:e:f:g:h\n#x\n\n"), "a")
	f.Fuzz(func(t *testing.T, data []byte, login string) {
		sh := passwdShell(data, login)
		if strings.ContainsAny(sh, ":\n") {
			t.Errorf("passwdShell = %q; want no separators", sh)
		}
	})
}

// FuzzRequestPayloads feeds the decoders of client request payloads.
func FuzzRequestPayloads(f *testing.F) {
	f.Add(ssh.Marshal(ptyRequest{Term: "xterm", Cols: 80, Rows: 24}))
	f.Add(ssh.Marshal(windowChange{Cols: 1 << 20, Rows: 50}))
	f.Add(ssh.Marshal(envRequest{Name: "LANG", Value: "C"}))
	f.Add(ssh.Marshal(directTCPIPRequest{Host: "127.0.0.1", Port: 22}))
	f.Add(ssh.Marshal(signalRequest{Signal: "TERM"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		parsePtyRequest(b)
		parseWindowChange(b)
		parseEnv(b)
		parseExec(b)
		parseSubsystem(b)
		parseSignal(b)
		if addr, err := parseDirectTCPIP(b); err == nil && addr == "" {
			t.Error("parseDirectTCPIP accepted an empty address")
		}
	})
}
