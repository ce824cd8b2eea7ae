package ota

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"
)

func newKey(t testing.TB) (minisign.PublicKey, minisign.PrivateKey) {
	t.Helper()
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func sampleManifest() *Manifest {
	return &Manifest{Product: Product, Version: "v1.2.3", Artifacts: []Artifact{
		{Name: "edge-agent-linux-arm64", Target: "linux-arm64", Size: 10, SHA256: strings.Repeat("ab", 32)},
		{Name: "edge-agent-linux-armv6", Target: "linux-armv6", Size: 12, SHA256: strings.Repeat("cd", 32)},
	}}
}

func TestParseManifest(t *testing.T) {
	good := string(sampleManifest().Marshal())
	tests := []struct {
		name, in, want string
	}{
		{"good", good, ""},
		{"unknown field", strings.Replace(good, `"product"`, `"extra": 1, "product"`, 1), "unknown field"},
		{"other product", strings.Replace(good, `"edge-agent"`, `"other"`, 1), "is for"},
		{"bad version", strings.Replace(good, "v1.2.3", "1.2.3", 1), "semantic version"},
		{"non-canonical version", strings.Replace(good, "v1.2.3", "v1.2", 1), "semantic version"},
		{"wrong name", strings.Replace(good, `"edge-agent-linux-arm64"`, `"agent"`, 1), "should be named"},
		{"bad hash", strings.Replace(good, strings.Repeat("ab", 32), "abc", 1), "sha256"},
		{"duplicate target", strings.ReplaceAll(good, "linux-armv6", "linux-arm64"), "twice"},
		{"no artefacts", `{"product":"edge-agent","version":"v1.0.0","artifacts":[]}`, "artefacts"},
		{"trailing", good + "{}", "trailing"},
		{"too large", strings.Repeat(" ", MaxManifest+1), "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseManifest([]byte(tt.in))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if a, ok := m.Artifact("linux-armv6"); !ok || a.Size != 12 {
					t.Errorf("Artifact(linux-armv6) = %+v, %v", a, ok)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one saying %q", err, tt.want)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	pub, priv := newKey(t)
	_, other := newKey(t)
	keys := Keys{pub}
	msg := sampleManifest().Marshal()
	good := Sign(priv, msg, ManifestName)
	tampered := append(bytes.Clone(msg), ' ')
	tests := []struct {
		name    string
		msg     []byte
		sig     []byte
		wantErr error
	}{
		{"good", msg, good, nil},
		{"tampered message", tampered, good, ErrBadSignature},
		{"unknown key", msg, Sign(other, msg, ManifestName), ErrUnknownKey},
		{"garbage signature", msg, []byte("not a signature"), ErrBadSignature},
		{"minisign's own plain signature", msg, minisign.Sign(priv, msg), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := keys.Verify(tt.msg, tt.sig)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Errorf("Verify = %v, want %v", err, tt.wantErr)
			}
		})
	}
	if _, err := keys.VerifyManifest(msg, good); err != nil {
		t.Errorf("VerifyManifest: %v", err)
	}
}

func TestRotate(t *testing.T) {
	oldPub, oldPriv := newKey(t)
	newPub, newPriv := newKey(t)
	thirdPub, _ := newKey(t)
	_, strangerPriv := newKey(t)
	line := KeyString(newPub)
	keys := Keys{oldPub}

	// Signed by the old key: accepted.
	got, added, err := keys.Rotate([]RotationText{{Key: line, Sig: Sign(oldPriv, []byte(line), "new.pub")}})
	if err != nil || added != 1 || len(got) != 2 {
		t.Fatalf("rotation signed by the pinned key: %v, added %d, keys %d", err, added, len(got))
	}
	// A chain: the third key signed by the new one, in the same list.
	third := KeyString(thirdPub)
	got, added, err = keys.Rotate([]RotationText{
		{Key: line, Sig: Sign(oldPriv, []byte(line), "new.pub")},
		{Key: third, Sig: Sign(newPriv, []byte(third), "third.pub")},
	})
	if err != nil || added != 2 || len(got) != 3 {
		t.Errorf("chained rotation: %v, added %d", err, added)
	}
	// Signed by a key nobody pins: refused, nothing added.
	_, added, err = keys.Rotate([]RotationText{{Key: line, Sig: Sign(strangerPriv, []byte(line), "new.pub")}})
	if !errors.Is(err, ErrUnknownKey) || added != 0 {
		t.Errorf("rotation signed by a stranger: %v, added %d", err, added)
	}
	// The old key signing something else: refused.
	_, _, err = keys.Rotate([]RotationText{{Key: line, Sig: Sign(oldPriv, []byte("other"), "x")}})
	if !errors.Is(err, ErrBadSignature) {
		t.Errorf("rotation with a signature of other bytes: %v", err)
	}
}

func TestVersions(t *testing.T) {
	tests := []struct {
		v, running string
		newer      bool
	}{
		{"v1.2.4", "v1.2.3", true},
		{"v1.3.0", "v1.2.9", true},
		{"v1.2.3", "v1.2.3", false},
		{"v1.2.2", "v1.2.3", false},
		{"v1.0.0", "dev", true},
		{"v1.3.0-rc.1", "v1.2.0", true},
		{"v1.3.0-rc.1", "v1.3.0", false},
		{"banana", "v1.0.0", false},
	}
	for _, tt := range tests {
		if got := Newer(tt.v, tt.running); got != tt.newer {
			t.Errorf("Newer(%q, %q) = %v, want %v", tt.v, tt.running, got, tt.newer)
		}
	}
}

func TestWindow(t *testing.T) {
	at := func(h, m int) time.Time { return time.Date(2026, 12, 6, h, m, 0, 0, time.UTC) }
	tests := []struct {
		window string
		t      time.Time
		open   bool
		next   time.Time
	}{
		{"", at(13, 0), true, at(13, 0)},
		{"02:00-05:00", at(3, 0), true, at(3, 0)},
		{"02:00-05:00", at(5, 0), false, at(2, 0).Add(24 * time.Hour)},
		{"02:00-05:00", at(1, 59), false, at(2, 0)},
		{"22:00-04:00", at(23, 30), true, at(23, 30)},
		{"22:00-04:00", at(3, 59), true, at(3, 59)},
		{"22:00-04:00", at(12, 0), false, at(22, 0)},
	}
	for _, tt := range tests {
		w, err := ParseWindow(tt.window)
		if err != nil {
			t.Fatal(err)
		}
		if got := w.Open(tt.t); got != tt.open {
			t.Errorf("%q.Open(%s) = %v", tt.window, tt.t.Format("15:04"), got)
		}
		if got := w.Next(tt.t); !got.Equal(tt.next) {
			t.Errorf("%q.Next(%s) = %s, want %s", tt.window, tt.t.Format("15:04"), got, tt.next)
		}
		if w.String() != tt.window {
			t.Errorf("String() = %q, want %q", w.String(), tt.window)
		}
	}
	for _, bad := range []string{"2-5", "02:00-02:00", "25:00-03:00", "02:00-05:60", "02:00-05:00x", "02:00 05:00"} {
		if _, err := ParseWindow(bad); err == nil {
			t.Errorf("ParseWindow(%q): no error", bad)
		}
	}
}

func TestDelta(t *testing.T) {
	old := make([]byte, 1<<20)
	rand.Read(old)
	nw := bytes.Clone(old)
	copy(nw[1000:], "a patch release changes a few bytes")
	nw = append(nw, []byte("and adds some")...)
	d, err := MakeDelta(old, nw)
	if err != nil {
		t.Fatal(err)
	}
	if len(d) > len(nw)/100 {
		t.Errorf("delta of %d bytes for a small change to %d bytes", len(d), len(nw))
	}
	var out bytes.Buffer
	if err := (Patcher{Max: int64(len(nw))}).Patch(bytes.NewReader(old), &out, bytes.NewReader(d)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), nw) {
		t.Fatal("the delta does not reproduce the new binary")
	}
	// Applied to another binary, or damaged, it fails or differs; the
	// hash check of the result catches what zstd's checksum does not.
	other := bytes.Clone(old)
	other[5000] ^= 1
	out.Reset()
	if err := ApplyDelta(other, &out, bytes.NewReader(d), int64(len(nw))); err == nil && bytes.Equal(out.Bytes(), nw) {
		t.Error("a delta applied to another binary gave the new binary")
	}
	bad := bytes.Clone(d)
	bad[len(bad)/2] ^= 0xff
	out.Reset()
	if err := ApplyDelta(old, &out, bytes.NewReader(bad), int64(len(nw))); err == nil && bytes.Equal(out.Bytes(), nw) {
		t.Error("a damaged delta gave the new binary")
	}
	if err := ApplyDelta(old, &out, bytes.NewReader(d), 100); err == nil {
		t.Error("a result over the limit was accepted")
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add(sampleManifest().Marshal())
	f.Add([]byte(`{"product":"edge-agent","version":"v1.0.0","artifacts":[{}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		// What parses re-encodes to something that parses the same.
		m2, err := ParseManifest(m.Marshal())
		if err != nil || m2.Version != m.Version || len(m2.Artifacts) != len(m.Artifacts) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzParseWindow(f *testing.F) {
	for _, s := range []string{"02:00-05:00", "22:00-04:00", "", "99:99-00:00", "0:0-1:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWindow(s)
		if err != nil {
			return
		}
		if w2, err := ParseWindow(w.String()); err != nil || w2 != w {
			t.Fatalf("%q: round trip %q: %v", s, w.String(), err)
		}
		now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
		if n := w.Next(now); n.Before(now) || !w.Open(n) {
			t.Fatalf("%q: Next(%s) = %s", s, now, n)
		}
	})
}

func FuzzVerify(f *testing.F) {
	pub, priv := newKey(f)
	msg := []byte("manifest")
	f.Add(msg, Sign(priv, msg, "m"))
	f.Add(msg, []byte("untrusted comment: x\nRWQ\n"))
	f.Fuzz(func(t *testing.T, msg, sig []byte) {
		Keys{pub}.Verify(msg, sig) // must not panic
		Keys{pub}.KeyFor(sig)
	})
}
