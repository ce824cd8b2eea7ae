package users

import (
	"strings"
	"testing"
)

// cheap are argon2 parameters that make tests fast; never use them in
// production.
var cheap = HashParams{Time: 1, MemoryKiB: 64, Threads: 1}

func TestHashRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		password string
		try      string
		want     bool
	}{
		{"right", "correct horse", "correct horse", true},
		{"wrong", "correct horse", "correct horsf", false},
		{"prefix", "correct horse", "correct hors", false},
		{"empty", "correct horse", "", false},
		{"unicode", "pässwörd-✓✓", "pässwörd-✓✓", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			enc := hashPassword(tt.password, cheap)
			if !strings.HasPrefix(enc, "$argon2id$v=19$m=64,t=1,p=1$") {
				t.Errorf("got %q, want the PHC argon2id form with its parameters", enc)
			}
			h, err := decodePHC(enc)
			if err != nil {
				t.Fatal(err)
			}
			if got := h.verify(tt.try); got != tt.want {
				t.Errorf("verify(%q) = %v, want %v", tt.try, got, tt.want)
			}
			if re := encodePHC(h); re != enc {
				t.Errorf("re-encoded %q, want %q", re, enc)
			}
		})
	}
}

func TestHashSalted(t *testing.T) {
	if a, b := hashPassword("same password", cheap), hashPassword("same password", cheap); a == b {
		t.Errorf("two hashes of one password are equal (%q): the salt is not random", a)
	}
}

func TestDefaultParams(t *testing.T) {
	got := HashParams{}.withDefaults()
	want := HashParams{Time: 1, MemoryKiB: 64 * 1024, Threads: 4}
	if got != want {
		t.Errorf("got defaults %+v, want %+v", got, want)
	}
	if got := (HashParams{MemoryKiB: 1, Threads: 2}).withDefaults().MemoryKiB; got != 16 {
		t.Errorf("got memory %d for 2 threads, want it raised to 16 KiB", got)
	}
}

func TestDecodePHCRefuses(t *testing.T) {
	good := "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U"
	if _, err := decodePHC(good); err != nil {
		t.Fatalf("good hash refused: %v", err)
	}
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"argon2i", strings.Replace(good, "argon2id", "argon2i", 1)},
		{"bcrypt", "$2a$10$abcdefghijklmnopqrstuu5Bq8rQ6WmM5nH1p5F7gU5s5C9y6xYqK"},
		{"old version", strings.Replace(good, "v=19", "v=16", 1)},
		{"param order", strings.Replace(good, "m=64,t=1,p=1", "t=1,m=64,p=1", 1)},
		{"missing param", strings.Replace(good, "m=64,t=1,p=1", "m=64,t=1", 1)},
		{"extra param", strings.Replace(good, "m=64,t=1,p=1", "m=64,t=1,p=1,x=2", 1)},
		{"leading zero", strings.Replace(good, "m=64", "m=064", 1)},
		{"huge memory", strings.Replace(good, "m=64", "m=4194304", 1)},
		{"zero time", strings.Replace(good, "t=1", "t=0", 1)},
		{"too many threads", strings.Replace(good, "p=1", "p=256", 1)},
		{"memory below threads", strings.Replace(good, "m=64,t=1,p=1", "m=8,t=1,p=4", 1)},
		{"padded salt", strings.Replace(good, "c2FsdHNhbHRzYWx0c2FsdA", "c2FsdHNhbHRzYWx0c2FsdA==", 1)},
		{"short salt", strings.Replace(good, "c2FsdHNhbHRzYWx0c2FsdA", "c2FsdA", 1)},
		{"short key", strings.Replace(good, "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U", "a2V5", 1)},
		{"trailing part", good + "$x"},
		{"no leading dollar", good[1:]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodePHC(tt.in); err == nil {
				t.Errorf("decodePHC(%q) accepted it, want an error", tt.in)
			}
		})
	}
}

func FuzzDecodePHC(f *testing.F) {
	f.Add(hashPassword("password", cheap))
	f.Add("$argon2id$v=19$m=65536,t=1,p=4$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("$argon2id$v=19$m=,t=1,p=4$$")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := decodePHC(s)
		if err != nil {
			return
		}
		if h.params.MemoryKiB > maxMemory || h.params.Time > maxTime || h.params.Threads == 0 {
			t.Fatalf("accepted out-of-bounds parameters %+v", h.params)
		}
		if re := encodePHC(h); re != s {
			t.Errorf("accepted %q but re-encodes as %q", s, re)
		}
	})
}
