package proto

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// AppNameSep joins an app's name and its device's name in the app's
// public DNS label (APP--DEVICE): app names may not contain it.
const AppNameSep = "--"

var appNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// CheckAppName reports whether name may name an app (App.Name): a DNS
// label of lower-case letters, digits and '-', not starting or ending
// with '-', without AppNameSep, and not two characters long (a label with
// "--" in its third and fourth places is reserved for IDNA, as in "xn--":
// browsers may refuse it). Both sides check it: the agent its
// configuration, the fleet each hello.
func CheckAppName(name string) error {
	switch {
	case !appNameRE.MatchString(name):
		return fmt.Errorf("app name %q must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'", name)
	case strings.Contains(name, AppNameSep):
		return fmt.Errorf("app name %q may not contain %q, which separates the app from its device in its address", name, AppNameSep)
	case len(name) == 2:
		return fmt.Errorf("app name %q is two characters long: its address would start like an IDNA label (xn--); use one or three or more", name)
	}
	return nil
}

// ParseAppURI parses an app's URI (App.URI): http or https, a host, an
// optional port, no user, path (but "/"), query or fragment.
func ParseAppURI(uri string) (*url.URL, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("app URI %q: %w", uri, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("app URI %q: the scheme must be http or https", uri)
	case u.Opaque != "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return nil, fmt.Errorf("app URI %q: only scheme://host[:port] is allowed (no user, path, query or fragment)", uri)
	case u.Hostname() == "":
		return nil, fmt.Errorf("app URI %q names no host", uri)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("app URI %q: bad port", uri)
		}
	}
	return u, nil
}

// AppHostPort is the host:port an app URI names, with the scheme's
// default port when it names none.
func AppHostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return u.Host + ":443"
	}
	return u.Host + ":80"
}
