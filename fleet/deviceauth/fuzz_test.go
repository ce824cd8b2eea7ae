package deviceauth

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/ticket"
)

// FuzzParseRequest feeds device authorization request bodies (open to
// anyone) to ParseRequest: it must never panic, and what it accepts is
// bounded and printable.
func FuzzParseRequest(f *testing.F) {
	f.Add("client_id=tsh&ssh_public_key=ssh-ed25519+AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl&csr=MIIB&code_challenge=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU&ttl=60")
	f.Add("client_id=tsh&ttl=99999999999999999999")
	f.Add("client_id=tsh&client_host=%1b%5d0%3bx%07")
	k := newKeys(f)
	f.Add(url.Values{"client_id": {"tsh"}, "ssh_public_key": {k.sshPub}, "csr": {base64.RawURLEncoding.EncodeToString(k.csr)},
		"code_challenge": {ticket.Challenge(k.verifier)}, "ttl": {"3600"}, "client_host": {"box"}}.Encode())
	f.Fuzz(func(t *testing.T, body string) {
		form, err := url.ParseQuery(body)
		if err != nil {
			return
		}
		req, err := ParseRequest(form)
		if err != nil {
			return
		}
		if req.TTL < 0 || req.TTL > MaxTTL || len(req.Host) > 64 || len(req.CSR) > 8192 || strings.ContainsAny(req.Host, "\x00\x1b\n") {
			t.Fatalf("accepted %+v", req)
		}
	})
}

// FuzzNormalizeUserCode: whatever a user types, a code it accepts is in
// the fleet's form and normalises to itself.
func FuzzNormalizeUserCode(f *testing.F) {
	f.Add("bcdf-ghjk")
	f.Add("ＢCDF-GHJK")
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := NormalizeUserCode(s)
		if !ok {
			return
		}
		if len(c) != 9 || c[4] != '-' {
			t.Fatalf("%q -> %q", s, c)
		}
		if again, ok := NormalizeUserCode(c); !ok || again != c {
			t.Fatalf("%q does not normalise to itself", c)
		}
	})
}
