package appsrv

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestRecordKeys: the store key of an app session and its key among the
// server's sessions name the same token, by its hash only.
func TestRecordKeys(t *testing.T) {
	for _, tok := range []string{"A", "TOKENTOKENTOKEN", strings.Repeat("x", 256)} {
		sk := hashKey(tok)
		key := recordKeyOf(sk)
		if !strings.HasPrefix(key, appSessionPrefix) || strings.Contains(key, tok) || len(key) != len(appSessionPrefix)+64 {
			t.Errorf("recordKeyOf(hashKey(%q)) = %q: want the prefix and the token's SHA-256, not the token", tok, key)
		}
		if got := sessionKeyOf(key); got != sk {
			t.Errorf("sessionKeyOf(%q) = %q, want %q", key, got, sk)
		}
	}
}

// TestDecodeRecord: a record missing what a take-up needs is not one.
func TestDecodeRecord(t *testing.T) {
	good := appRecord{User: "alice", App: "hello--pi-1", WebSession: "w1", Expires: time.Unix(2000000000, 0).UTC(), CSRF: "c"}
	b, _ := json.Marshal(good)
	if rec, ok := decodeRecord(b); !ok || rec != good {
		t.Fatalf("decodeRecord(%s) = %+v, %v; want %+v", b, rec, ok, good)
	}
	for _, bad := range []string{``, `null`, `{}`, `[1]`, `{"user":"alice","app":"hello--pi-1","web_session":"w1"}`,
		`{"user":"","app":"hello--pi-1","web_session":"w1","csrf":"c"}`, `{"user":"alice","app":"","web_session":"w1","csrf":"c"}`,
		`{"user":"alice","app":"hello--pi-1","web_session":"","csrf":"c"}`, `{"user":1}`} {
		if rec, ok := decodeRecord([]byte(bad)); ok {
			t.Errorf("decodeRecord(%s) = %+v, want none", bad, rec)
		}
	}
}

// FuzzDecodeRecord: any bytes in the store decode to a whole record or
// none, without a panic.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"user":"alice","app":"hello--pi-1","web_session":"w1","expires":"2033-05-18T03:33:20Z","csrf":"c"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, ok := decodeRecord(b)
		if ok && (rec.User == "" || rec.App == "" || rec.WebSession == "" || rec.CSRF == "") {
			t.Fatalf("decodeRecord(%q) = %+v: a record without what a take-up needs", b, rec)
		}
	})
}
