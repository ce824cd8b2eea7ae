package auditexport

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
)

// log is a small audit log in memory: chains of events per source, and
// checkpoints signed as fleetd signs them.
type log struct {
	key    ed25519.PrivateKey
	chains map[string][]proto.AuditEvent
	cps    []*Checkpoint
	signed map[string]uint64 // source -> seq of the head last signed
}

func newLog(t testing.TB) *log {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &log{key: key, chains: map[string][]proto.AuditEvent{}, signed: map[string]uint64{}}
}

// add appends n events to source's chain.
func (l *log) add(t testing.TB, source string, n int) {
	t.Helper()
	c := l.chains[source]
	for range n {
		e := proto.AuditEvent{Seq: uint64(len(c) + 1), Time: 1_700_000_000_000 + int64(len(c)), Type: proto.EventExec, User: "alice",
			Fields: map[string]string{"command": fmt.Sprint("cmd ", len(c))}}
		var prev []byte
		if len(c) > 0 {
			prev = c[len(c)-1].Hash
		}
		h, err := proto.ChainHash(prev, &e)
		if err != nil {
			t.Fatal(err)
		}
		e.Hash = h
		c = append(c, e)
	}
	l.chains[source] = c
}

// checkpoint signs the heads that changed.
func (l *log) checkpoint(key ed25519.PrivateKey) {
	var heads []Head
	for s, c := range l.chains {
		if len(c) > 0 && l.signed[s] != c[len(c)-1].Seq {
			heads = append(heads, Head{Source: s, Seq: c[len(c)-1].Seq, Hash: c[len(c)-1].Hash})
			l.signed[s] = c[len(c)-1].Seq
		}
	}
	sort.Slice(heads, func(i, j int) bool { return heads[i].Source < heads[j].Source })
	cp := &Checkpoint{N: uint64(len(l.cps) + 1), Time: time.Now().UnixMilli(), Heads: heads}
	if len(l.cps) > 0 {
		cp.Prev = l.cps[len(l.cps)-1].Digest()
	}
	cp.Sign(key)
	l.cps = append(l.cps, cp)
}

// rewrite changes source's event seq and recomputes every hash after it:
// a consistent rewrite, as someone with the file could do.
func (l *log) rewrite(t *testing.T, source string, seq uint64) {
	t.Helper()
	c := l.chains[source]
	c[seq-1].User = "mallory"
	for i := int(seq) - 1; i < len(c); i++ {
		var prev []byte
		if i > 0 {
			prev = c[i-1].Hash
		}
		h, err := proto.ChainHash(prev, &c[i])
		if err != nil {
			t.Fatal(err)
		}
		c[i].Hash = h
	}
}

// export writes the log in the export format.
func (l *log) export(t testing.TB, pub ed25519.PublicKey, end bool) []byte {
	t.Helper()
	var b bytes.Buffer
	w := NewWriter(&b)
	h := &Header{Version: Version, Cluster: "fleet", Exported: time.Now().UTC(), Key: KeyString(pub)}
	var sources []string
	for s := range l.chains {
		sources = append(sources, s)
	}
	sort.Strings(sources)
	for _, s := range sources {
		h.Sources = append(h.Sources, Source{Source: s})
	}
	w.WriteHeader(h)
	for _, c := range l.cps {
		w.WriteCheckpoint(c)
	}
	for _, s := range sources {
		for _, e := range l.chains[s] {
			raw, err := proto.MarshalEvent(&e)
			if err != nil {
				t.Fatal(err)
			}
			w.WriteEvent(s, e.Seq, raw, nil)
		}
	}
	if end {
		w.Close()
	} else {
		w.w.Flush()
	}
	return b.Bytes()
}

func (l *log) pub() ed25519.PublicKey { return l.key.Public().(ed25519.PublicKey) }

func TestVerify(t *testing.T) {
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name string
		// change alters the log after an earlier export was taken; it
		// returns the options to verify with.
		change func(t *testing.T, l *log, earlier []*Checkpoint) Options
		want   string // "" for a good export
	}{
		{"untouched", func(t *testing.T, l *log, _ []*Checkpoint) Options { return Options{} }, ""},
		{"more events since, with a checkpoint", func(t *testing.T, l *log, earlier []*Checkpoint) Options {
			l.add(t, "dev-1", 5)
			l.checkpoint(l.key)
			return Options{Earlier: earlier, Key: l.pub()}
		}, ""},
		{"chain rewritten consistently", func(t *testing.T, l *log, _ []*Checkpoint) Options {
			l.rewrite(t, "dev-1", 3)
			return Options{}
		}, "differs from the one signed in checkpoint"},
		{"rewritten and re-signed with the stolen key: the earlier export catches it", func(t *testing.T, l *log, earlier []*Checkpoint) Options {
			l.rewrite(t, "dev-1", 3)
			l.cps, l.signed = nil, map[string]uint64{}
			l.checkpoint(l.key)
			l.checkpoint(l.key)
			l.add(t, "dev-1", 1)
			l.checkpoint(l.key)
			return Options{Earlier: earlier}
		}, "differs from the one signed in checkpoint 2"},
		{"chain cut below a signed head", func(t *testing.T, l *log, _ []*Checkpoint) Options {
			l.chains["dev-1"] = l.chains["dev-1"][:7]
			return Options{}
		}, "event 10, signed in checkpoint 2, is missing"},
		{"event edited without its hash", func(t *testing.T, l *log, _ []*Checkpoint) Options {
			l.chains["fleet"][1].Type = "nothing.happened"
			return Options{}
		}, "event 2 was altered"},
		{"a checkpoint removed", func(t *testing.T, l *log, _ []*Checkpoint) Options {
			l.add(t, "dev-1", 1)
			l.checkpoint(l.key)
			l.cps = append(l.cps[:1], l.cps[2:]...)
			return Options{}
		}, "checkpoints 2 to 2 are missing"},
		{"signed with another key than the pinned one", func(t *testing.T, l *log, _ []*Checkpoint) Options {
			l.cps, l.signed = nil, map[string]uint64{}
			l.checkpoint(otherKey)
			return Options{Key: l.pub()}
		}, "the signature does not verify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLog(t)
			l.add(t, "dev-1", 6)
			l.add(t, "fleet", 3)
			l.checkpoint(l.key)
			l.add(t, "dev-1", 4)
			l.checkpoint(l.key)
			earlier := append([]*Checkpoint(nil), l.cps...)
			opts := tt.change(t, l, earlier)
			pub := l.pub()
			rep, err := Verify(bytes.NewReader(l.export(t, pub, true)), opts)
			if err != nil {
				t.Fatal(err)
			}
			all := strings.Join(rep.Problems, "; ")
			for _, c := range rep.Chains {
				all += "; " + strings.Join(c.Problems, "; ")
			}
			switch {
			case tt.want == "" && !rep.OK:
				t.Errorf("a good export failed: %s", all)
			case tt.want != "" && (rep.OK || !strings.Contains(all, tt.want)):
				t.Errorf("OK %v, problems %q; want a failure saying %q", rep.OK, all, tt.want)
			}
		})
	}
}

func TestVerifyFindsACutExport(t *testing.T) {
	l := newLog(t)
	l.add(t, "dev-1", 3)
	l.checkpoint(l.key)
	rep, err := Verify(bytes.NewReader(l.export(t, l.pub(), false)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || !strings.Contains(strings.Join(rep.Problems, ";"), "cut short") {
		t.Errorf("an export without its end line: OK %v, %v", rep.OK, rep.Problems)
	}
	full := l.export(t, l.pub(), true)
	lines := bytes.Split(bytes.TrimSpace(full), []byte("\n"))
	dropped := append(append([][]byte{}, lines[:len(lines)-2]...), lines[len(lines)-1]) // the last event gone
	rep, err = Verify(bytes.NewReader(bytes.Join(dropped, []byte("\n"))), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK {
		t.Error("an export missing its last event verified")
	}
}

func TestReadCheckpoints(t *testing.T) {
	l := newLog(t)
	l.add(t, "dev-1", 3)
	l.checkpoint(l.key)
	l.add(t, "dev-1", 3)
	l.checkpoint(l.key)
	cps, pub, err := ReadCheckpoints(bytes.NewReader(l.export(t, l.pub(), true)))
	if err != nil || len(cps) != 2 || !pub.Equal(l.pub()) {
		t.Fatalf("ReadCheckpoints = %d, %v, %v", len(cps), pub, err)
	}
	if _, problems := CheckChain(cps, pub); len(problems) != 0 {
		t.Errorf("problems: %v", problems)
	}
}

func TestDecodeRejectsBadInput(t *testing.T) {
	l := newLog(t)
	l.add(t, "dev-1", 2)
	l.checkpoint(l.key)
	good := l.cps[0].Encode()
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"garbage", []byte{0xff, 0x00, 0x13}},
		{"trailing bytes", append(append([]byte{}, good...), 0)},
		{"truncated", good[:len(good)-3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeCheckpoint(tt.b); err == nil {
				t.Error("decoded")
			}
		})
	}
	lines := []string{
		`{"kind":"header","header":{"version":1,"cluster":"f","exported":"2026-01-01T00:00:00Z","key":"ed25519:AAAA","sources":[]},"extra":1}`,
		`{"kind":"nope"}`,
		`{"kind":"event","source":"d"}`,
		`{"kind":"header","header":{"version":9,"cluster":"f","exported":"2026-01-01T00:00:00Z","key":"k","sources":[]}}`,
		`{"kind":"end","end":{"checkpoints":0,"events":0}} {}`,
	}
	for _, l := range lines {
		if _, err := NewReader(strings.NewReader(l)).Next(); err == nil {
			t.Errorf("line %s was accepted", l)
		}
	}
}

func FuzzDecodeCheckpoint(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c := &Checkpoint{N: 2, Time: 1, Prev: make([]byte, 32), Heads: []Head{{Source: "dev-1", Seq: 4, Hash: make([]byte, 32)}}}
	c.Sign(key)
	f.Add(c.Encode())
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCheckpoint(b)
		if err != nil {
			return
		}
		c2, err := DecodeCheckpoint(c.Encode())
		if err != nil || !bytes.Equal(c2.Encode(), c.Encode()) {
			t.Fatalf("checkpoint does not round-trip: %v", err)
		}
	})
}

// FuzzVerify feeds arbitrary exports to Verify: it answers with an error or
// a report, never a panic, and never calls a mangled export good unless it
// is the unchanged seed.
func FuzzVerify(f *testing.F) {
	l := newLog(f)
	l.add(f, "dev-1", 3)
	l.checkpoint(l.key)
	good := l.export(f, l.pub(), true)
	f.Add(good)
	f.Add([]byte(`{"kind":"header"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := Verify(bytes.NewReader(b), Options{Key: l.pub()})
		if err != nil {
			return
		}
		if rep.OK && !bytes.Equal(bytes.TrimSpace(b), bytes.TrimSpace(good)) && rep.Checkpoints > 0 {
			// A different file may still be a good export (whitespace,
			// the readable copies): it must then hold the same events.
			total := uint64(0)
			for _, c := range rep.Chains {
				total += c.Events
			}
			if total != 3 {
				t.Fatalf("a mangled export verified with %d events", total)
			}
		}
	})
}
