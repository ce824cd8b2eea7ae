package dashboard

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/fleetview"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/users"
)

// Every parameter a page reads is checked here: a bad one is refused with
// a message that names it, never passed on.

// maxText bounds a free-text parameter.
const maxText = 200

// onlyKnown refuses parameters a page does not read (a typo, or a probe).
func onlyKnown(q url.Values, known ...string) error {
	for k := range q {
		if !slices.Contains(known, k) {
			return fmt.Errorf("unknown parameter %q", truncate(k, 40))
		}
	}
	for _, k := range known {
		if len(q[k]) > 1 {
			return fmt.Errorf("parameter %q is given %d times", k, len(q[k]))
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// text checks a free-text parameter: printable, at most maxText bytes.
func text(name, v string) (string, error) {
	v = strings.TrimSpace(v)
	if len(v) > maxText {
		return "", fmt.Errorf("%s is longer than %d characters", name, maxText)
	}
	if !utf8.ValidString(v) || strings.IndexFunc(v, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return "", fmt.Errorf("%s holds characters that cannot be shown", name)
	}
	return v, nil
}

// deviceFilter is the devices page's query: text, labels, status, page.
type deviceFilter struct {
	Text   string
	Label  string // as given: KEY=VALUE[,KEY=VALUE]
	Labels map[string]string
	Status fleetview.Status
	Page   int // from 1
	Per    int
}

// perPage are the page sizes offered.
var perPage = []int{25, 50, 100, 200}

func parseDeviceFilter(q url.Values) (deviceFilter, error) {
	f := deviceFilter{Page: 1, Per: 100}
	if err := onlyKnown(q, "q", "label", "status", "page", "per", "h"); err != nil {
		return f, err
	}
	var err error
	if f.Text, err = text("the search text", q.Get("q")); err != nil {
		return f, err
	}
	if f.Label, f.Labels, err = parseLabels(q.Get("label")); err != nil {
		return f, err
	}
	st, ok := fleetview.ParseStatus(q.Get("status"))
	if !ok {
		return f, errors.New("status must be online, offline, degraded or outdated")
	}
	f.Status = st
	if p := q.Get("page"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 1_000_000 {
			return f, errors.New("page must be a number from 1")
		}
		f.Page = n
	}
	if p := q.Get("per"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || !slices.Contains(perPage, n) {
			return f, errors.New("per must be 25, 50, 100 or 200")
		}
		f.Per = n
	}
	return f, nil
}

// parseLabels reads a label filter: KEY=VALUE or KEY (any value), several
// separated by commas.
func parseLabels(s string) (string, map[string]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil, nil
	}
	if len(s) > maxText {
		return "", nil, fmt.Errorf("the label filter is longer than %d characters", maxText)
	}
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			v = "*"
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !devices.ValidLabelKey(k) {
			return "", nil, fmt.Errorf("label filter: %q is not a label key (letters, digits, . _ / -)", truncate(k, 40))
		}
		if v != "*" && !devices.ValidLabelValue(v) {
			return "", nil, fmt.Errorf("label filter: %q is not a label value", truncate(v, 40))
		}
		out[k] = v
	}
	return s, out, nil
}

// query is the filter as a URL query, page and all; zero fields are left
// out.
func (f deviceFilter) query(page int) string {
	q := url.Values{}
	if f.Text != "" {
		q.Set("q", f.Text)
	}
	if f.Label != "" {
		q.Set("label", f.Label)
	}
	if f.Status != "" {
		q.Set("status", string(f.Status))
	}
	if page > 1 {
		q.Set("page", strconv.Itoa(page))
	}
	if f.Per != 100 {
		q.Set("per", strconv.Itoa(f.Per))
	}
	return q.Encode()
}

// auditFilter is the audit page's query.
type auditFilter struct {
	User, Device, Type string
	Since, Until       time.Time
	SinceText          string // as given, for the form
	UntilText          string
	Cursor             string
}

// timeForms are the time formats the audit filter takes: the browser's
// datetime-local input, and RFC 3339.
var timeForms = []string{"2006-01-02T15:04", "2006-01-02T15:04:05", time.RFC3339}

func parseTime(name, s string) (time.Time, error) {
	for _, f := range timeForms {
		if t, err := time.ParseInLocation(f, s, time.UTC); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s must be a time like 2026-11-21T08:00 (UTC)", name)
}

func parseAuditFilter(q url.Values) (auditFilter, error) {
	var f auditFilter
	if err := onlyKnown(q, "user", "device", "type", "since", "until", "cursor"); err != nil {
		return f, err
	}
	if u := strings.TrimSpace(q.Get("user")); u != "" {
		if users.CheckName(u) != nil {
			return f, fmt.Errorf("user: %q is not a user name", truncate(u, 40))
		}
		f.User = u
	}
	if d := strings.TrimSpace(q.Get("device")); d != "" {
		if devices.CheckName(d) != nil && !devices.IsID(d) {
			return f, fmt.Errorf("device: %q is not a device name", truncate(d, 40))
		}
		f.Device = d
	}
	if t := strings.TrimSpace(q.Get("type")); t != "" {
		if len(t) > 64 || strings.IndexFunc(t, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r == '.' || r == '_' || r == '-' || r == '*')
		}) >= 0 || strings.Contains(strings.TrimSuffix(t, "*"), "*") {
			return f, fmt.Errorf("type: %q is not an event type (such as session.start, or session.* for every session event)", truncate(t, 40))
		}
		f.Type = t
	}
	var err error
	if f.SinceText = strings.TrimSpace(q.Get("since")); f.SinceText != "" {
		if f.Since, err = parseTime("since", f.SinceText); err != nil {
			return f, err
		}
	}
	if f.UntilText = strings.TrimSpace(q.Get("until")); f.UntilText != "" {
		if f.Until, err = parseTime("until", f.UntilText); err != nil {
			return f, err
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return f, errors.New("since must come before until")
	}
	if c := q.Get("cursor"); c != "" {
		if len(c) > 2048 {
			return f, errors.New("cursor: not one of this page's")
		}
		if _, err := hex.DecodeString(c); err != nil {
			return f, errors.New("cursor: not one of this page's")
		}
		f.Cursor = c
	}
	return f, nil
}

// query is the filter as a URL query, with another cursor.
func (f auditFilter) query(cursor string) string {
	q := url.Values{}
	for k, v := range map[string]string{"user": f.User, "device": f.Device, "type": f.Type, "since": f.SinceText, "until": f.UntilText, "cursor": cursor} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q.Encode()
}

// checkLogin checks a device login name.
func checkLogin(s string) (string, error) {
	if err := rbac.CheckLogin(s); err != nil {
		return "", fmt.Errorf("login: %q is not a login name", truncate(s, 40))
	}
	return s, nil
}

// checkDim checks a terminal dimension (columns or rows).
func checkDim(name, s string, def int) (int, error) {
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 2 || n > 1000 {
		return 0, fmt.Errorf("%s must be a number from 2 to 1000", name)
	}
	return n, nil
}
