package proto

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestChainHash(t *testing.T) {
	e1 := &AuditEvent{Seq: 1, Time: 5, Type: EventAgentStart}
	h1, err := ChainHash(nil, e1)
	if err != nil {
		t.Fatal(err)
	}
	zero, _ := ChainHash(make([]byte, HashSize), e1)
	if !bytes.Equal(h1, zero) {
		t.Errorf("nil prev and zero prev differ: %x vs %x", h1, zero)
	}
	e1.Hash = h1
	again, _ := ChainHash(nil, e1)
	if !bytes.Equal(again, h1) {
		t.Error("the event's own Hash changed its chain hash")
	}
	tests := []struct {
		name   string
		change func(e *AuditEvent)
		prev   []byte
	}{
		{"seq", func(e *AuditEvent) { e.Seq = 2 }, nil},
		{"time", func(e *AuditEvent) { e.Time++ }, nil},
		{"field", func(e *AuditEvent) { e.Fields = map[string]string{"a": "b"} }, nil},
		{"prev", func(e *AuditEvent) {}, []byte{1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := *e1
			tt.change(&c)
			got, _ := ChainHash(tt.prev, &c)
			if bytes.Equal(got, h1) {
				t.Errorf("changing %s kept the hash", tt.name)
			}
		})
	}
}

func TestSanitize(t *testing.T) {
	fields := map[string]string{}
	for i := range 40 {
		fields[strings.Repeat("k", i+1)] = "v"
	}
	e := &AuditEvent{Type: "exec", Message: "bad \xff utf8", User: strings.Repeat("é", 3000), Fields: fields}
	e.Sanitize()
	if !utf8.ValidString(e.Message) || !strings.Contains(e.Message, "\uFFFD") {
		t.Errorf("message = %q, want valid UTF-8 with a replacement", e.Message)
	}
	if len(e.User) > MaxEventString || !utf8.ValidString(e.User) || !strings.HasSuffix(e.User, "…") {
		t.Errorf("user: %d bytes, valid %v", len(e.User), utf8.ValidString(e.User))
	}
	if len(e.Fields) != MaxEventFields {
		t.Errorf("fields = %d, want %d", len(e.Fields), MaxEventFields)
	}
	b, err := MarshalEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UnmarshalEvent(b); err != nil {
		t.Fatal(err)
	}
}

// TestBatchFitsFrame checks that a full batch of the largest events fits a
// control frame... of ordinary events: the shipper also caps batch bytes.
func TestBatchFitsFrame(t *testing.T) {
	var b AuditBatch
	for i := range MaxAuditBatch {
		b.Events = append(b.Events, AuditEvent{Seq: uint64(i + 1), Time: 1700000000000, Type: EventExec,
			User: "alice", Login: "root", Session: "0123456789abcdef0123456789abcdef",
			Fields: map[string]string{"command": "uptime"}, Hash: make([]byte, HashSize)})
	}
	f, err := Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	if len(f) > MaxControlFrame {
		t.Errorf("a batch of %d ordinary events is %d bytes, over the %d frame limit", MaxAuditBatch, len(f), MaxControlFrame)
	}
}

func FuzzUnmarshalEvent(f *testing.F) {
	e := &AuditEvent{Seq: 3, Time: 9, Type: EventExec, Fields: map[string]string{"command": "ls"}, Hash: []byte{1, 2}}
	b, _ := MarshalEvent(e)
	f.Add(b)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := UnmarshalEvent(b)
		if err != nil {
			return
		}
		b2, err := MarshalEvent(e)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		e2, err := UnmarshalEvent(b2)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		h1, err1 := ChainHash(nil, e)
		h2, err2 := ChainHash(nil, e2)
		if err1 != nil || err2 != nil || !bytes.Equal(h1, h2) {
			t.Fatalf("chain hash not stable across a round trip: %x %x", h1, h2)
		}
	})
}
