package appjwt

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"remoteler.dev/edge/fleet/store/memstore"
)

// verify checks token against the key set as an app would: fetched from
// the handler, parsed and verified with go-jose, claims validated.
func verify(t *testing.T, h http.Handler, token, audience string) (Claims, error) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/.well-known/jwks.json", nil))
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(rec.Body.Bytes(), &set); err != nil {
		t.Fatalf("key set: %v: %s", err, rec.Body)
	}
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return Claims{}, err
	}
	var c Claims
	if err := tok.Claims(set, &c); err != nil {
		return Claims{}, err
	}
	return c, c.Validate(jwt.Expected{Issuer: "https://fleet.test", AnyAudience: jwt.Audience{audience}, Time: time.Now()})
}

func claims(aud string) *Claims {
	now := time.Now()
	return &Claims{Claims: jwt.Claims{Issuer: "https://fleet.test", Subject: "alice", Audience: jwt.Audience{aud},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-time.Minute)), Expiry: jwt.NewNumericDate(now.Add(time.Minute))},
		Username: "alice", Roles: []string{"access"}}
}

func TestSignVerifyRotate(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	k, err := Open(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	aud := "https://nodered--pi-1.fleet.test"
	before, err := k.Sign(claims(aud))
	if err != nil {
		t.Fatal(err)
	}
	c, err := verify(t, k.Handler(), before, aud)
	if err != nil || c.Username != "alice" || c.Roles[0] != "access" || c.Subject != "alice" {
		t.Fatalf("verify: %+v, %v", c, err)
	}
	if _, err := verify(t, k.Handler(), before, "https://other--pi-1.fleet.test"); err == nil {
		t.Error("a token for one app verified for another")
	}
	// A second replica on the same store signs with the same key.
	k2, err := Open(ctx, st, nil)
	if err != nil || k2.ActiveID() != k.ActiveID() {
		t.Fatalf("second replica: %v, key %s vs %s", err, k2.ActiveID(), k.ActiveID())
	}
	oldID := k.ActiveID()
	newID, err := k.Rotate(ctx)
	if err != nil || newID == oldID {
		t.Fatalf("rotate: %q, %v", newID, err)
	}
	after, _ := k.Sign(claims(aud))
	for name, tok := range map[string]string{"before the rotation": before, "after the rotation": after} {
		if _, err := verify(t, k.Handler(), tok, aud); err != nil {
			t.Errorf("a token signed %s does not verify: %v", name, err)
		}
	}
	if set := k.JWKS(); len(set.Keys) != 2 || set.Keys[0].KeyID != newID || set.Keys[1].KeyID != oldID {
		t.Errorf("key set %v, want the new key then the old", set.Keys)
	}
	// A second rotation drops the first key: its tokens no longer verify.
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, k.Handler(), before, aud); err == nil {
		t.Error("a token of a key rotated out twice still verifies")
	}
	if err := k2.Reload(ctx); err != nil || k2.ActiveID() != k.ActiveID() {
		t.Errorf("the other replica did not pick the rotation up: %v", err)
	}
}
