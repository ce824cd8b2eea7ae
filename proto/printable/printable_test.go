package printable

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscape(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "v1.2.3 (linux/arm64)", "v1.2.3 (linux/arm64)"},
		{"unicode letters", "Gerät-Süd ✓ 日本", "Gerät-Süd ✓ 日本"},
		{"empty", "", ""},
		{"backslash kept", `C:\dir`, `C:\dir`},
		{"clipboard write (OSC 52)", "v1\x1b]52;c;ZXZpbA==\x07", `v1\x1b]52;c;ZXZpbA==\x07`},
		{"erase line", "ok\r\x1b[2K", `ok\r\x1b[2K`},
		{"newline and tab", "a\nb\tc", `a\nb\tc`},
		{"DEL", "a\x7fb", `a\x7fb`},
		{"C1 CSI", "a\u009b2Jb", `a\u009b2Jb`},
		{"right-to-left override", "abc\u202efdp.exe", `abc\u202efdp.exe`},
		{"isolates", "\u2066x\u2069", `\u2066x\u2069`},
		{"line separator", "a\u2028b", `a\u2028b`},
		{"not UTF-8", "a\xffb\xc3", `a\xffb\xc3`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Escape(tt.in); got != tt.want {
				t.Errorf("Escape(%q) = %q, want %q", tt.in, got, tt.want)
			}
			err := Check(tt.in, 0)
			if safe := tt.in == tt.want; safe != (err == nil) {
				t.Errorf("Check(%q) = %v, want an error: %v", tt.in, err, !safe)
			}
			if err != nil && !errors.Is(err, ErrUnsafe) {
				t.Errorf("Check(%q) = %v, want it to wrap ErrUnsafe", tt.in, err)
			}
		})
	}
}

func TestCheckLength(t *testing.T) {
	if err := Check(strings.Repeat("a", 64), 64); err != nil {
		t.Errorf("64 bytes at max 64: %v", err)
	}
	err := Check(strings.Repeat("a", 65), 64)
	if err == nil || !strings.Contains(err.Error(), "longer than 64 bytes") {
		t.Errorf("65 bytes at max 64: %v", err)
	}
}

// FuzzEscape checks that Escape's output is always safe, that it leaves
// safe text alone, and that Check agrees with it.
func FuzzEscape(f *testing.F) {
	for _, s := range []string{"", "v1.2.3", "\x1b]52;c;AA==\x07", "\u202e", "\xff\xfe", "a\u009bb", "日本\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e := Escape(s)
		if !utf8.ValidString(e) {
			t.Fatalf("Escape(%q) = %q is not UTF-8", s, e)
		}
		for _, r := range e {
			if Unsafe(r) {
				t.Fatalf("Escape(%q) = %q holds unsafe rune %U", s, e, r)
			}
		}
		if err := Check(e, 0); err != nil {
			t.Fatalf("Check(Escape(%q)) = %v", s, err)
		}
		if (Check(s, 0) == nil) != (e == s) {
			t.Fatalf("Check(%q) = %v but Escape changed it: %v", s, Check(s, 0), e != s)
		}
	})
}
