package dashboard

import (
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"remoteler.dev/edge/fleet/devices"
)

// FuzzParams: the pages' query strings never panic the parsers, and what
// they accept is what the pages may use: printable text within bounds,
// valid labels, a known status, a page in range, a cursor of hex digits.
func FuzzParams(f *testing.F) {
	for _, seed := range []string{
		"", "q=pi&label=site%3Dnorth&status=online&page=2&per=50", "label=model", "status=%3Cscript%3E", "page=-1",
		"user=alice&device=pi-1&type=session.*&since=2026-11-21T08:00&until=2026-11-21T09:00&cursor=00ab",
		"q=%07", "label=a%3Db%2Cc%3D%2A", "x=1", "q=a&q=b", "type=a*b",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		if d, err := parseDeviceFilter(q); err == nil {
			if len(d.Text) > maxText || !utf8.ValidString(d.Text) || d.Page < 1 || d.Per < 25 || d.Per > 200 {
				t.Fatalf("accepted %+v", d)
			}
			for k, v := range d.Labels {
				if !devices.ValidLabelKey(k) || (v != "*" && !devices.ValidLabelValue(v)) {
					t.Fatalf("accepted label %q=%q", k, v)
				}
			}
			// The filter makes the query it came from, or one it accepts.
			again, err := url.ParseQuery(d.query(d.Page))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parseDeviceFilter(again); err != nil {
				t.Fatalf("the filter's own query %q is refused: %v", d.query(d.Page), err)
			}
		}
		if a, err := parseAuditFilter(q); err == nil {
			if strings.Trim(a.Cursor, "0123456789abcdefABCDEF") != "" || len(a.Type) > 64 {
				t.Fatalf("accepted %+v", a)
			}
			if !a.Since.IsZero() && !a.Until.IsZero() && !a.Since.Before(a.Until) {
				t.Fatalf("accepted since %s after until %s", a.Since, a.Until)
			}
		}
	})
}
