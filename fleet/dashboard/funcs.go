package dashboard

import (
	"fmt"
	"html/template"
	"strings"
	"time"
)

// funcs are the templates' helpers.
func (s *Server) funcs() template.FuncMap {
	return template.FuncMap{
		// iso is a time for <time datetime>; the page's script shows it
		// relative ("3 min ago").
		"iso": func(t time.Time) string {
			if t.IsZero() {
				return ""
			}
			return t.UTC().Format(time.RFC3339)
		},
		// when is a time as text, UTC, to the second.
		"when": func(t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"ms": func(d time.Duration) string {
			if d <= 0 {
				return "–"
			}
			return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000)
		},
		"pct": func(f float64) string { return fmt.Sprintf("%.1f%%", f) },
		"bytes": func(n any) string {
			var v float64
			switch x := n.(type) {
			case int64:
				v = float64(x)
			case uint64:
				v = float64(x)
			case int:
				v = float64(x)
			}
			for _, u := range []string{"B", "kB", "MB", "GB", "TB"} {
				if v < 1000 || u == "TB" {
					if u == "B" {
						return fmt.Sprintf("%.0f %s", v, u)
					}
					return fmt.Sprintf("%.1f %s", v, u)
				}
				v /= 1000
			}
			return ""
		},
		"dur": func(d time.Duration) string {
			if d <= 0 {
				return "–"
			}
			return d.Round(time.Second).String()
		},
		"timeValue": timeValue,
		"join":      strings.Join,
		"static":    s.staticURL,
	}
}
