package tsh

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func FuzzParseProfile(f *testing.F) {
	good, _ := jsonIndent(&profile{
		Proxy: "fleet.example.com:3080", User: "alice", Cluster: "fleet", Roles: []string{"dev"},
		Logins: []string{"pi"}, Expires: time.Unix(1e9, 0), CAPin: "sha256:" + strings.Repeat("ab", 32),
		HostCAKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"},
	})
	f.Add(good)
	f.Add([]byte(`{"proxy":"fleet.example.com:3080","user":"carol@example.com","cluster":"fleet","auth":"okta"}`))
	f.Add([]byte(`{"proxy":"../..:1","user":"a","cluster":"c"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parseProfile(data)
		if err != nil {
			return
		}
		// What parses must be safe to use in paths and config lines.
		for _, s := range []string{p.Proxy, p.User, p.Cluster, p.loginFlag()} {
			if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\\\n\r \t\"'") {
				t.Fatalf("accepted unsafe name %q", s)
			}
		}
		if _, err := p.hostCAs(); err != nil {
			t.Fatalf("accepted bad host CA keys: %v", err)
		}
	})
}

func FuzzParseCurrent(f *testing.F) {
	f.Add([]byte("fleet.example.com:3080/alice\n"))
	f.Add([]byte("a/b/c"))
	f.Fuzz(func(t *testing.T, data []byte) {
		proxy, user, err := parseCurrent(data)
		if err != nil {
			return
		}
		if strings.ContainsAny(proxy+user, "/\\\n") || user == ".." || proxy == ".." {
			t.Fatalf("accepted unsafe profile name %q/%q", proxy, user)
		}
	})
}

func FuzzRewriteKnownHosts(f *testing.F) {
	f.Add([]byte("host ssh-ed25519 AAAA\n@cert-authority *.fleet ssh-ed25519 AAAA tsh:p/u\n"), "new line")
	f.Add([]byte("no newline at end"), "")
	f.Fuzz(func(t *testing.T, old []byte, add string) {
		const marker = "tsh:p/u"
		var lines []string
		if add != "" && !strings.ContainsAny(add, "\r\n") {
			lines = []string{add + " " + marker}
		}
		out := rewriteKnownHosts(old, marker, lines)
		// Removing everything again leaves no line of ours, and is stable.
		again := rewriteKnownHosts(out, marker, nil)
		for line := range strings.Lines(string(again)) {
			if f := strings.Fields(line); len(f) > 0 && f[len(f)-1] == marker {
				t.Fatalf("line %q survived removal", line)
			}
		}
		if !bytes.Equal(rewriteKnownHosts(again, marker, nil), again) {
			t.Fatal("removal is not idempotent")
		}
	})
}
