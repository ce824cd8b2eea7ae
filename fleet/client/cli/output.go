package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

// Format is an output format, the value of --format.
type Format string

// The output formats. Every listing command takes all three.
const (
	Text Format = "text" // a table (or lines) for people
	JSON Format = "json" // an api.List object for scripts (indented)
	YAML Format = "yaml" // the same object as YAML
)

// String, Set and Type make *Format a flag value (pflag.Value).
func (f *Format) String() string { return string(*f) }

// Set accepts text, json or yaml.
func (f *Format) Set(s string) error {
	switch Format(s) {
	case Text, JSON, YAML:
		*f = Format(s)
		return nil
	}
	return fmt.Errorf("want text, json or yaml, not %q", s)
}

// Type names the flag's value in help.
func (f *Format) Type() string { return "text|json|yaml" }

// FormatFlag adds --format (default text, completed with its values) to
// cmd and returns the value it sets. what says what json and yaml hold,
// when that is more than the listing ("" for the usual api.List).
func FormatFlag(cmd *cobra.Command, what string) *Format {
	f := Text
	help := "output format: text (a table), json or yaml (an object: kind, items, truncated)"
	if what != "" {
		help = "output format: text, json or yaml (" + what + ")"
	}
	cmd.Flags().Var(&f, "format", help)
	cmd.RegisterFlagCompletionFunc("format", CompleteValues(string(Text), string(JSON), string(YAML)))
	return &f
}

// PrintList writes a listing: as an api.List in JSON or YAML, or by calling
// text for a table (text prints nothing for an empty list but its own
// message, usually on stderr).
func PrintList[T any](w io.Writer, f Format, kind string, items []T, truncated bool, text func() error) error {
	if f == Text {
		return text()
	}
	return PrintValue(w, f, api.NewList(kind, items, truncated))
}

// PrintValue writes v as indented JSON or as YAML. Strings holding
// control or bidirectional formatting characters are written with escapes
// (\u001b, \u202e): the values are exact, and nothing reaches the
// terminal raw.
func PrintValue(w io.Writer, f Format, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = escapeJSON(b)
	if f == YAML {
		if b, err = toYAML(b); err != nil {
			return err
		}
	} else {
		b = append(b, '\n')
	}
	_, err = w.Write(b)
	return err
}

// escapeJSON escapes the unsafe runes that encoding/json writes as they
// are (C1 controls, bidirectional formatting characters) as \uXXXX. They
// can only stand in strings, where the escape means the same rune.
func escapeJSON(b []byte) []byte {
	if utf8.Valid(b) && !bytes.ContainsFunc(b, func(r rune) bool { return r >= 0x80 && printable.Unsafe(r) }) {
		return b
	}
	var out bytes.Buffer
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r >= 0x80 && printable.Unsafe(r) {
			fmt.Fprintf(&out, `\u%04x`, r)
		} else {
			out.Write(b[:size])
		}
		b = b[size:]
	}
	return out.Bytes()
}

// toYAML converts indented JSON to YAML. A YAML emitter writes some unsafe
// runes raw (and refuses C1 controls), so every string that holds one is
// swapped for a token first and written back as its JSON form, which is a
// valid YAML double-quoted string with the same escapes.
func toYAML(j []byte) ([]byte, error) {
	var v any
	if err := json.Unmarshal(j, &v); err != nil {
		return nil, err
	}
	var nonce [8]byte
	rand.Read(nonce[:])
	prefix := "escaped-" + hex.EncodeToString(nonce[:]) + "-"
	swapped := map[string]string{}
	swap := func(s string) string {
		if s == printable.Escape(s) {
			return s
		}
		tok := fmt.Sprintf("%s%d", prefix, len(swapped))
		q, _ := json.Marshal(s)
		swapped[tok] = string(escapeJSON(q))
		return tok
	}
	v = walkStrings(v, swap)
	y, err := yaml.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(swapped) == 0 {
		return y, nil
	}
	pairs := make([]string, 0, 2*len(swapped))
	// Longest tokens first, so that token 1 does not replace inside 10.
	for _, tok := range slices.SortedFunc(maps.Keys(swapped), func(a, b string) int { return len(b) - len(a) }) {
		pairs = append(pairs, tok, swapped[tok])
	}
	return []byte(strings.NewReplacer(pairs...).Replace(string(y))), nil
}

// walkStrings returns v with fn applied to every string in it, map keys
// included.
func walkStrings(v any, fn func(string) string) any {
	switch x := v.(type) {
	case string:
		return fn(x)
	case []any:
		for i := range x {
			x[i] = walkStrings(x[i], fn)
		}
		return x
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[fn(k)] = walkStrings(e, fn)
		}
		return out
	}
	return v
}

// Table writes rows as aligned columns. Every cell is escaped
// (printable.Escape), so that no string from the fleet or a device can
// drive the terminal, and a tab or newline in a cell cannot break the
// columns.
type Table struct {
	tw *tabwriter.Writer
}

// NewTable starts a table on w with a header row (none when header is
// empty).
func NewTable(w io.Writer, header ...string) *Table {
	t := &Table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	if len(header) > 0 {
		t.Row(header...)
	}
	return t
}

// Row adds a row.
func (t *Table) Row(cells ...string) {
	for i, c := range cells {
		if i > 0 {
			t.tw.Write([]byte{'\t'})
		}
		io.WriteString(t.tw, printable.Escape(c))
	}
	t.tw.Write([]byte{'\n'})
}

// Flush writes the table out.
func (t *Table) Flush() error { return t.tw.Flush() }
