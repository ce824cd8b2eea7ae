package pin

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"

	"remoteler.dev/edge/tools/pkitest"
)

var hex64 = strings.Repeat("0123456789abcdef", 4)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{"canonical", "sha256:" + hex64, "sha256:" + hex64, false},
		{"upper case", "SHA256:" + strings.ToUpper(hex64), "sha256:" + hex64, false},
		{"surrounding space", "  sha256:" + hex64 + "\n", "sha256:" + hex64, false},
		{"empty", "", "", true},
		{"prefix only", "sha256:", "", true},
		{"no prefix", hex64, "", true},
		{"other hash", "sha1:" + hex64[:40], "", true},
		{"short", "sha256:" + hex64[:62], "", true},
		{"odd length", "sha256:" + hex64[:63], "", true},
		{"long", "sha256:" + hex64 + "00", "", true},
		{"not hex", "sha256:" + strings.Repeat("zz", 32), "", true},
		{"inner space", "sha256: " + hex64, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Parse(%q): err = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("Parse(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestOf(t *testing.T) {
	ca := pkitest.NewCA(t)
	p := Of(ca.Cert)
	if got, err := Parse(p); err != nil || got != p {
		t.Errorf("Parse(Of(ca)) = %q, %v; want %q, nil", got, err, p)
	}
	if other := Of(pkitest.NewCA(t).Cert); other == p {
		t.Errorf("two CAs have the same pin %s", p)
	}
}

func TestParseJoin(t *testing.T) {
	pin := "sha256:" + hex64
	tests := []struct {
		name      string
		in        string
		wantToken string
		wantPin   string
		wantErr   bool
	}{
		{"token and pin", JoinString("abc123", pin), "abc123", pin, false},
		{"pin not canonical", " abc123@SHA256:" + strings.ToUpper(hex64) + " ", "abc123", pin, false},
		{"bare token", "abc123", "abc123", "", false},
		{"empty", "", "", "", true},
		{"spaces", "   ", "", "", true},
		{"no token", "@" + pin, "", "", true},
		{"empty pin", "abc123@", "", "", true},
		{"bad pin", "abc123@sha256:00", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, p, err := ParseJoin(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseJoin(%q): err = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if token != tt.wantToken || p != tt.wantPin {
				t.Errorf("ParseJoin(%q) = %q, %q; want %q, %q", tt.in, token, p, tt.wantToken, tt.wantPin)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	ca, other := pkitest.NewCA(t), pkitest.NewCA(t)
	leaf, otherLeaf := ca.Server(t, "fleet", "fleet.example").Leaf, other.Server(t, "fleet", "fleet.example").Leaf
	chain := [][]byte{leaf.Raw, ca.Cert.Raw}
	tests := []struct {
		name       string
		raw        [][]byte
		pin        string
		serverName string
		wantErr    error // ErrMismatch, or errAny for any error, or nil
	}{
		{"good IP", chain, Of(ca.Cert), "127.0.0.1", nil},
		{"good name", chain, Of(ca.Cert), "fleet.example", nil},
		{"no name check", chain, Of(ca.Cert), "", nil},
		{"wrong pin", chain, Of(other.Cert), "127.0.0.1", ErrMismatch},
		{"pin of the leaf", chain, Of(leaf), "127.0.0.1", ErrMismatch},
		{"leaf only", [][]byte{leaf.Raw}, Of(ca.Cert), "127.0.0.1", ErrMismatch},
		{"wrong host", chain, Of(ca.Cert), "10.0.0.1", errAny},
		{"wrong name", chain, Of(ca.Cert), "other.example", errAny},
		{"leaf of another CA", [][]byte{otherLeaf.Raw, ca.Cert.Raw}, Of(ca.Cert), "127.0.0.1", errAny},
		{"no certs", nil, Of(ca.Cert), "127.0.0.1", errAny},
		{"garbage", [][]byte{[]byte("not a certificate")}, Of(ca.Cert), "127.0.0.1", errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Verify(tt.raw, tt.pin, tt.serverName)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("Verify: %v, want success", err)
			case tt.wantErr == nil && !got.Equal(ca.Cert):
				t.Errorf("Verify returned %v, want the pinned CA", got.Subject)
			case tt.wantErr == errAny && err == nil:
				t.Errorf("Verify: err = nil, want an error")
			case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Errorf("Verify: err = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

// errAny stands for "some error" in test tables.
var errAny = errors.New("any error")

func TestClientConfig(t *testing.T) {
	ca, other := pkitest.NewCA(t), pkitest.NewCA(t)
	chain := [][]byte{ca.Server(t, "fleet", "fleet.example").Leaf.Raw, ca.Cert.Raw}
	tests := []struct {
		name       string
		pin        string
		serverName string
		wantOK     bool
	}{
		{"right pin", Of(ca.Cert), "127.0.0.1", true},
		{"wrong pin", Of(other.Cert), "127.0.0.1", false},
		{"wrong host", Of(ca.Cert), "10.0.0.1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := ClientConfig(tt.pin, tt.serverName)
			if cfg.ServerName != tt.serverName || cfg.MinVersion != tls.VersionTLS13 {
				t.Errorf("ServerName %q, MinVersion %x; want %q, TLS 1.3", cfg.ServerName, cfg.MinVersion, tt.serverName)
			}
			err := cfg.VerifyPeerCertificate(chain, nil)
			if gotOK := err == nil; gotOK != tt.wantOK {
				t.Errorf("VerifyPeerCertificate: err = %v, want ok %v", err, tt.wantOK)
			}
		})
	}
}

func FuzzParseJoin(f *testing.F) {
	f.Add("abc@sha256:" + hex64)
	f.Add("abc")
	f.Add("@")
	f.Fuzz(func(t *testing.T, s string) {
		token, p, err := ParseJoin(s)
		if err != nil {
			return
		}
		if token == "" {
			t.Fatalf("ParseJoin(%q): empty token without error", s)
		}
		if p != "" {
			if again, err := Parse(p); err != nil || again != p {
				t.Fatalf("ParseJoin(%q) pin %q is not canonical", s, p)
			}
		}
	})
}

// FuzzVerify feeds certificate bytes as a server would send them.
func FuzzVerify(f *testing.F) {
	ca := pkitest.NewCA(f)
	f.Add(ca.Server(f, "fleet", "fleet.example").Leaf.Raw, ca.Cert.Raw)
	f.Add([]byte{0x30, 0x00}, []byte{})
	want := Of(ca.Cert)
	f.Fuzz(func(t *testing.T, leaf, caDER []byte) {
		got, err := Verify([][]byte{leaf, caDER}, want, "127.0.0.1")
		if err == nil && Of(got) != want {
			t.Fatalf("Verify returned a CA whose pin is %s, want %s", Of(got), want)
		}
	})
}
