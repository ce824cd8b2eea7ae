// Package printable tells text that is safe to show on a terminal from text
// that could drive one, and escapes the rest. A device chooses its version,
// OS, architecture and the strings of its audit events; written raw to an
// admin's terminal, an escape sequence in them could set the clipboard,
// erase lines or retitle the window, and a bidirectional override could make
// text read differently from what it is. The fleet refuses such identifiers
// on ingest (Check), and tsh and fleetctl print every string through Escape.
//
// Both sides import it; it imports nothing from the project.
package printable

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Unsafe reports whether r must not reach a terminal as it is: C0 controls
// (tab and newline included), DEL, C1 controls, the line and paragraph
// separators, and the bidirectional formatting characters.
func Unsafe(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r <= 0x9f:
		return true
	case r == 0x061c, r == 0x200e, r == 0x200f, r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069:
		return true
	case r == 0x2028, r == 0x2029:
		return true
	}
	return false
}

// Escape returns s with every unsafe rune written as a Go escape (\t, \n,
// \r, \x1b, \u202e) and every byte that is not UTF-8 as \xNN. Safe text
// comes back unchanged; backslashes are left as they are, so the escapes
// are for reading, not for decoding.
func Escape(s string) string {
	i := firstUnsafe(s)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x80 && Unsafe(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case Unsafe(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// firstUnsafe returns the index of the first unsafe rune or non-UTF-8 byte
// in s, or -1.
func firstUnsafe(s string) int {
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c < 0x7f {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if (r == utf8.RuneError && size == 1) || Unsafe(r) {
			return i
		}
		i += size
	}
	return -1
}

// ErrUnsafe is what Check's error wraps when text holds an unsafe rune or
// is not UTF-8.
var ErrUnsafe = errors.New("holds a control or formatting character")

// Check returns an error when s is longer than max bytes (max 0: no limit),
// is not UTF-8, or holds an unsafe rune. The error quotes s escaped.
func Check(s string, max int) error {
	if max > 0 && len(s) > max {
		return fmt.Errorf(`"%s..." is longer than %d bytes`, Escape(s[:max]), max)
	}
	if firstUnsafe(s) >= 0 {
		if !utf8.ValidString(s) {
			return fmt.Errorf(`"%s" is not UTF-8: %w`, Escape(s), ErrUnsafe)
		}
		return fmt.Errorf(`"%s" %w`, Escape(s), ErrUnsafe)
	}
	return nil
}
