package proto

import (
	"strings"
	"testing"
)

func TestCheckDeviceInfo(t *testing.T) {
	long := strings.Repeat("x", 65)
	tests := []struct {
		name              string
		version, os, arch string
		labels            map[string]string
		wantErr           string
	}{
		{"a real agent", "v0.3.1", "linux", "arm64", map[string]string{"site": "north", "model": "pi 4"}, ""},
		{"empty", "", "", "", nil, ""},
		{"clipboard write in the version", "v1\x1b]52;c;ZXZpbA==\x07", "linux", "arm64", nil, `agent version: "v1\x1b]52;c;ZXZpbA==\x07" holds a control`},
		{"line erase in the OS", "v1", "linux\r\x1b[2K", "arm64", nil, "OS: "},
		{"bidi override in the arch", "v1", "linux", "arm\u202e46", nil, "architecture: "},
		{"long version", long, "linux", "arm64", nil, "longer than 64 bytes"},
		{"escape in a label value", "v1", "", "", map[string]string{"site": "a\x1b[31mred"}, "label site: "},
		{"escape in a label key", "v1", "", "", map[string]string{"s\x07": "a"}, "label key: "},
		{"empty label key", "v1", "", "", map[string]string{"": "a"}, "empty key"},
		{"not UTF-8", "v1\xff", "", "", nil, "not UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckDeviceInfo(tt.version, tt.os, tt.arch, tt.labels)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[strings.Repeat("k", i+1)] = "v"
	}
	if err := CheckDeviceInfo("", "", "", many); err == nil {
		t.Error("accepted 65 labels")
	}
	if err := (&Hello{AgentVersion: "v1", Services: []string{"ssh", "kube\x1b"}}).Check(); err == nil || !strings.Contains(err.Error(), "service") {
		t.Errorf("hello with a bad service: %v", err)
	}
}

func TestAuditEventCheckDevice(t *testing.T) {
	ok := AuditEvent{Seq: 1, Type: EventSessionStart, Outcome: OutcomeSuccess, User: "alice", Login: "root", Session: "abc",
		Message: "ran \x1b]52;c;AA\x07", Fields: map[string]string{"command": "printf '\x1b[2J'"}}
	if err := ok.CheckDevice(); err != nil {
		t.Errorf("free text with escapes (a command the user ran) refused: %v", err)
	}
	for name, e := range map[string]AuditEvent{
		"type":      {Type: "session.start\x1b[2K"},
		"user":      {User: "alice\u202e"},
		"login":     {Login: "ro\x07ot"},
		"field key": {Fields: map[string]string{"cmd\x1b": "x"}},
	} {
		if err := e.CheckDevice(); err == nil || !strings.Contains(err.Error(), strings.Split(name, " ")[0]) {
			t.Errorf("%s: got %v, want an error naming it", name, err)
		}
	}
}

func TestClusterInfoCheck(t *testing.T) {
	tests := []struct {
		name    string
		info    ClusterInfo
		wantErr string
	}{
		{"keys", ClusterInfo{Cluster: "leaf", HostCAKeys: [][]byte{{1}}}, ""},
		{"leaving", ClusterInfo{Cluster: "leaf", Leaving: `this fleet no longer trusts the cluster "root": its admin removed the trust`}, ""},
		{"escape in leaving", ClusterInfo{Cluster: "leaf", Leaving: "gone\x1b[2J"}, "leaving: "},
		{"long leaving", ClusterInfo{Cluster: "leaf", Leaving: strings.Repeat("x", MaxSessionEndMessage+1)}, "leaving: "},
		{"empty key", ClusterInfo{Cluster: "leaf", UserCAKeys: [][]byte{{}}}, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.info.Check()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestHeldSessionsCheck(t *testing.T) {
	one := HeldSession{SessionID: "s1", Service: ServiceSSH, User: "alice", Roles: []string{"access"}, Login: "pi"}
	with := func(f func(*HeldSession)) HeldSessions {
		s := one
		f(&s)
		return HeldSessions{Sessions: []HeldSession{s}}
	}
	tests := []struct {
		name    string
		list    HeldSessions
		wantErr string
	}{
		{"empty", HeldSessions{}, ""},
		{"one", HeldSessions{Sessions: []HeldSession{one}}, ""},
		{"too many", HeldSessions{Sessions: make([]HeldSession, MaxHeldSessions+1)}, "at most"},
		{"no ID", with(func(s *HeldSession) { s.SessionID = "" }), "lacks"},
		{"no user", with(func(s *HeldSession) { s.User = "" }), "lacks"},
		{"escape in user", with(func(s *HeldSession) { s.User = "a\x1b[2Jb" }), "user: "},
		{"long login", with(func(s *HeldSession) { s.Login = strings.Repeat("x", 257) }), "login: "},
		{"escape in a role", with(func(s *HeldSession) { s.Roles = []string{"ok", "\u202e"} }), "a role: "},
		{"too many roles", with(func(s *HeldSession) { s.Roles = make([]string, MaxHeldRoles+1) }), "roles; at most"},
		{"escape in the Kubernetes user", with(func(s *HeldSession) { s.KubeUser = "a\x1b[2Jb" }), "Kubernetes user: "},
		{"escape in a Kubernetes group", with(func(s *HeldSession) { s.KubeGroups = []string{"developers", "\u202e"} }), "a Kubernetes group: "},
		{"too many Kubernetes groups", with(func(s *HeldSession) { s.KubeGroups = make([]string, MaxHeldRoles+1) }), "Kubernetes groups; at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.list.Check()
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
}
