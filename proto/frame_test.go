package proto

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func sampleMessages() []Message {
	return []Message{
		&Hello{ProtocolVersion: Version, Name: "pi-1", AgentVersion: "v0.1.0", OS: "linux", Arch: "arm64",
			Labels: map[string]string{"site": "north"}, Time: 1700000000000, Services: []string{ServiceSSH},
			BootID: "b", KeepaliveMillis: 25000, LivenessMillis: 120000},
		&HelloAck{DeviceID: "d-1", ServerTime: 1700000000001, KeepaliveMillis: 25000,
			LinkTag: []byte{1, 2, 3, 4, 5, 6, 7, 8}, LinkKey: bytes.Repeat([]byte{9}, LinkKeySize), ResetToken: []byte{8, 7, 6, 5, 4, 3, 2, 1}},
		&Hello{ProtocolVersion: Version, Name: "pi-2", Services: []string{ServiceSSH, ServiceApp}, Apps: []App{
			{Name: "nodered", URI: "http://127.0.0.1:1880", Labels: map[string]string{"team": "ops"}},
			{Name: "router", URI: "https://192.168.1.1", InsecureSkipVerify: true,
				Rewrite: &AppRewrite{Redirect: []string{"router.lan"}, Headers: []AppHeader{{Name: "X-User", Value: "{{user}}"}}}},
		}},
		&HelloAck{DeviceID: "d-1", ServerTime: 1700000000001, LinkTag: []byte{1, 2}, Updates: true},
		&Heartbeat{Seq: 9},
		&Heartbeat{Seq: 10, Labels: map[string]string{}},
		&HeartbeatAck{Seq: 9, ServerTime: 5},
		&RenewRequest{CSR: []byte{1, 2}, SSHPublicKey: []byte{3}},
		&RenewResponse{Err: &Error{Code: CodeForbidden, Message: "no"}},
		&Error{Code: CodeVersion, Message: "upgrade"},
		&StreamHeader{Service: ServiceSSH, SessionID: "s1", Identity: Identity{User: "alice", Login: "root", Roles: []string{"access"}}},
		&StreamAccept{Code: CodeForbidden, Message: "login not allowed"},
		&Resume{SessionID: "s1", Secret: []byte{1, 2, 3}, Received: 1 << 40},
		&Resume{SessionID: "s2", Secret: []byte{4}, Received: 7, Replaying: true, From: 5},
		&ResumeAccept{Code: CodeNotFound, Message: "gone", Received: 7},
		&AuditBatch{},
		&AuditBatch{Events: []AuditEvent{
			{Seq: 1, Time: 1700000000000, Type: EventSessionStart, Outcome: OutcomeSuccess, User: "alice", Login: "root",
				Session: "s1", Addr: "10.0.0.1:5000", Hash: make([]byte, HashSize)},
			{Seq: 2, Time: 1700000000001, Type: EventExec, Fields: map[string]string{"command": "uptime", "pty": "false"}, Hash: []byte{1}},
		}, Queue: &AuditQueueStatus{Pending: 2, Bytes: 300, Cap: 1 << 20, Dropped: 3, Damaged: 1, LastError: "disk full", Head: 2}, ID: 12},
		&AuditAck{Through: 2, Hash: []byte{9, 9}, ID: 12},
		&AuditAck{Err: &Error{Code: CodeInternal, Message: "store"}},
		&RecordingChunk{ID: "s1", Offset: 10, Data: []byte("[0.5, \"o\", \"hi\"]\n"), Final: true,
			Meta: &RecordingMeta{Session: "s1", User: "alice", Login: "root", Start: 5, Kind: "shell"}},
		&RecordingChunk{ID: "s1"},
		&RecordingAck{ID: "s1", Size: 100, Done: true},
		&SessionEnd{SessionID: "s1", Message: "your role changed: login root is no longer allowed on pi-1"},
		&StreamHeader{Service: ServiceSSH, SessionID: "s2", Identity: Identity{User: "bob", Login: "pi", Expires: 1700000000000,
			NoPortForwarding: true, NoFileCopy: true}},
		&UpdateOffer{Rollout: "r1", Version: "v1.2.3", Manifest: []byte(`{"version":"v1.2.3"}`), ManifestSig: []byte("sig"),
			ArtifactPath: "/v1/ota/artifacts/ab", ArtifactSig: []byte("asig"),
			Delta:     &UpdateDelta{FromSHA256: make([]byte, 32), Path: "/v1/ota/deltas/cd", Size: 4000, SHA256: make([]byte, 32)},
			Rotations: []KeyRotation{{Key: "RWQ...", Sig: []byte("rsig")}}, Window: "02:00-05:00", BandwidthBytes: 1 << 16, HealthMillis: 120000},
		&UpdateOffer{Rollout: "r1", Cancel: true},
		&UpdateStatus{Rollout: "r1", Version: "v1.2.3", State: StateDownloading, Done: 10, Total: 100, Running: "v1.2.2", Delta: true},
		&UpdateStatus{State: StateRolledBack, Reason: "tunnel not up within 2m0s"},
		&AgentStream{Service: ServiceOTA},
		&ClusterInfo{Cluster: "root", HostCAKeys: [][]byte{{1, 2}}, UserCAKeys: [][]byte{{3}}, CACerts: [][]byte{{4, 5}}},
		&ClusterInfo{},
		&ClusterInfo{Cluster: "leaf", Leaving: "this fleet no longer trusts the cluster \"root\""},
		&StreamHeader{Service: ServiceCluster, SessionID: "s3", Identity: Identity{User: "alice", Roles: []string{"site-north"}, Cluster: "root",
			Traits: map[string][]string{"logins": {"pi", "root"}}, Expires: 1700000000000}},
		&StreamHeader{Service: ServiceCluster, SessionID: "s4", Identity: Identity{User: "fleetctl", Cluster: "root", Admin: true}},
		&StreamHeader{Service: ServiceSSH, SessionID: "s5", Identity: Identity{User: "alice", Login: "pi", Cluster: "root", UserCAKeys: [][]byte{{7, 8}}}},
		&Hello{ProtocolVersion: Version, Name: "plc-1", Direct: "10.0.0.7:4433"},
		&AgentStream{Service: ServiceHeld},
		&HeldSessions{},
		&HeldSessions{Sessions: []HeldSession{{SessionID: "s6", Service: ServiceSSH, User: "alice", Roles: []string{"access"}, Login: "pi",
			Started: 1700000000000, Expires: 1700000600000, NoFileCopy: true}}},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		t.Run(m.Kind().String(), func(t *testing.T) {
			b, err := Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Unmarshal(b, MaxControlFrame)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, m) {
				t.Errorf("got %#v, want %#v", got, m)
			}
		})
	}
}

// TestTruncated checks that every strict prefix of every frame is an error.
func TestTruncated(t *testing.T) {
	for _, m := range sampleMessages() {
		b, _ := Marshal(m)
		for i := 0; i < len(b); i++ {
			if _, err := Unmarshal(b[:i], MaxControlFrame); err == nil {
				t.Errorf("%s truncated to %d of %d bytes: no error", m.Kind(), i, len(b))
			}
		}
	}
}

func TestReadMsgLeavesRest(t *testing.T) {
	b, _ := Marshal(&StreamHeader{Service: ServiceSSH, SessionID: "x"})
	r := NewReader(io.MultiReader(bytes.NewReader(b), strings.NewReader("SSH-2.0-raw")))
	if _, err := ReadHeader(r); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "SSH-2.0-raw" {
		t.Errorf("rest = %q", rest)
	}
}

func TestBadFrames(t *testing.T) {
	good, _ := Marshal(&Heartbeat{Seq: 1})
	tests := []struct {
		name string
		in   []byte
		max  int
		want string
	}{
		{"empty", nil, MaxControlFrame, "EOF"},
		{"unknown kind", []byte{200, 0}, MaxControlFrame, "unknown frame kind"},
		{"kind zero", []byte{0, 0}, MaxControlFrame, "unknown frame kind"},
		{"oversized", append([]byte{byte(KindHello)}, 0xff, 0xff, 0xff, 0xff, 0x0f), MaxControlFrame, "too large"},
		{"over limit", good, 1, "too large"},
		{"garbage body", []byte{byte(KindHello), 3, 0xff, 0xff, 0xff}, MaxControlFrame, "decode"},
		{"trailing", append(append([]byte{}, good...), 0), MaxControlFrame, "trailing"},
		{"wrong type", []byte{byte(KindHeartbeat), 1, 0x61}, MaxControlFrame, "decode"},
		{"unknown field", []byte{byte(KindHeartbeat), 3, 0xa1, 0x18, 0x63}, MaxControlFrame, "decode"},
		{"dup key", []byte{byte(KindHeartbeat), 5, 0xa2, 0x01, 0x01, 0x01, 0x02}, MaxControlFrame, "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Unmarshal(tt.in, tt.max)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestReadAccept(t *testing.T) {
	b, _ := Marshal(&StreamAccept{Code: CodeForbidden, Message: "no"})
	err := ReadAccept(NewReader(bytes.NewReader(b)))
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != CodeForbidden {
		t.Fatalf("err = %v, want forbidden *Error", err)
	}
	b, _ = Marshal(&StreamAccept{})
	if err := ReadAccept(NewReader(bytes.NewReader(b))); err != nil {
		t.Fatalf("accept: %v", err)
	}
}

func FuzzUnmarshal(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := Marshal(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Unmarshal(b, MaxControlFrame)
		if err != nil {
			return
		}
		// Whatever decodes must encode again and decode to the same value.
		b2, err := Marshal(m)
		if err != nil {
			t.Fatalf("re-encode %s: %v", m.Kind(), err)
		}
		m2, err := Unmarshal(b2, MaxControlFrame)
		if err != nil {
			t.Fatalf("re-decode %s: %v", m.Kind(), err)
		}
		b3, _ := Marshal(m2)
		if !bytes.Equal(b2, b3) {
			t.Fatalf("encoding not stable: %x then %x", b2, b3)
		}
	})
}
