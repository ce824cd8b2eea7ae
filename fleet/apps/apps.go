// Package apps holds the fleet's rules for web apps on devices: the
// public address scheme (one DNS label per app and device under the
// fleet's apps domain, so that one wildcard certificate covers every app:
// https://APP--DEVICE.DOMAIN[:PORT]) and the policy on what a device may
// declare (Policy.Accept: well-formed names and URIs, and only hosts the
// fleet allows). docs/apps.md has the scheme and its edge cases.
//
// Only fleet/... server packages import apps.
package apps

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/proto"
)

// Sep joins an app's name and its device's name in the app's DNS label.
// App names may not contain it, so the first Sep of a label ends the app's
// name; device names may.
const Sep = proto.AppNameSep

// MaxLabel is the longest DNS label (RFC 1035): an app whose name, Sep and
// its device's name are longer has no public address.
const MaxLabel = 63

// MaxApps bounds the apps one device may declare.
const MaxApps = 32

// CheckName reports whether name may name an app (proto.CheckAppName).
func CheckName(name string) error { return proto.CheckAppName(name) }

// Label is the DNS label of app on device: APP--DEVICE. It fails when the
// label would be longer than MaxLabel.
func Label(app, device string) (string, error) {
	l := app + Sep + device
	if len(l) > MaxLabel {
		return "", fmt.Errorf("app %q on device %q has no public address: %q is %d characters, a DNS label may have %d; shorten the app's name", app, device, l, len(l), MaxLabel)
	}
	return l, nil
}

// ParseLabel splits a DNS label into an app's name and its device's, at
// the first Sep; ok is false when it is not an app's label.
func ParseLabel(label string) (app, device string, ok bool) {
	app, device, ok = strings.Cut(label, Sep)
	if !ok || CheckName(app) != nil || devices.CheckName(device) != nil || len(label) > MaxLabel {
		return "", "", false
	}
	return app, device, true
}

// Addr is where users reach the fleet from a browser: the apps domain and
// the HTTPS port.
type Addr struct {
	// Domain is the fleet's own host; apps are one label below it.
	Domain string
	// Port is the public HTTPS port; 443 is left out of addresses.
	Port int
}

func (a Addr) hostPort(host string) string {
	if a.Port == 0 || a.Port == 443 {
		return host
	}
	return net.JoinHostPort(host, strconv.Itoa(a.Port))
}

// FleetOrigin is the fleet's own web origin: https://DOMAIN[:PORT].
func (a Addr) FleetOrigin() string { return "https://" + a.hostPort(a.Domain) }

// Host is the public host of app on device (without port), or an error
// when it has none (Label).
func (a Addr) Host(app, device string) (string, error) {
	l, err := Label(app, device)
	if err != nil {
		return "", err
	}
	return l + "." + a.Domain, nil
}

// Origin is the public origin of app on device: https://APP--DEVICE.DOMAIN[:PORT].
func (a Addr) Origin(app, device string) (string, error) {
	return a.OriginOf(Ref{App: app, Device: device})
}

// HostPort is host with the public port, as a browser's Host header has it.
func (a Addr) HostPort(host string) string { return a.hostPort(host) }

// Parse reads a request's Host (with or without port, any case) and says
// which app and device it names; ok is false for the fleet's own host,
// hosts of other domains and malformed ones. A host with a trailing dot
// is not an app host: browsers keep cookies apart for it.
func (a Addr) Parse(host string) (app, device string, ok bool) {
	r, ok := a.ParseRef(host)
	if !ok || r.Cluster != "" {
		return "", "", false
	}
	return r.App, r.Device, true
}

// IsFleet reports whether host (with or without port) is the fleet's own.
func (a Addr) IsFleet(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.EqualFold(host, a.Domain)
}

// Policy says which app URIs the fleet accepts from devices. The zero
// value accepts loopback and private addresses only.
type Policy struct {
	// Hosts lists what an app URI's host may be, beyond the default
	// (loopback and private IP addresses, and "localhost"): exact host
	// names or addresses, "*.SUFFIX" patterns, and CIDR prefixes
	// ("192.0.2.0/24"). "*" allows every host.
	Hosts []string
}

// CheckURI reports whether uri is a well-formed app URI whose host the
// policy allows: http or https, a host, an optional port, no user, path
// (but "/"), query or fragment.
func (p Policy) CheckURI(uri string) error {
	u, err := proto.ParseAppURI(uri)
	if err != nil {
		return err
	}
	if !p.allows(u.Hostname()) {
		return fmt.Errorf("app URI %q: the fleet does not allow apps at %q (only loopback and private addresses, and the fleet's app_uri_hosts)", uri, u.Hostname())
	}
	return nil
}

func (p Policy) allows(host string) bool {
	host = strings.ToLower(host)
	ip, ipErr := netip.ParseAddr(host)
	if ipErr == nil {
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() {
			return true
		}
	} else if host == "localhost" {
		return true
	}
	for _, h := range p.Hosts {
		h = strings.ToLower(h)
		switch {
		case h == "*" || h == host:
			return true
		case strings.HasPrefix(h, "*.") && ipErr != nil:
			if strings.HasSuffix(host, h[1:]) && len(host) > len(h)-1 {
				return true
			}
		case strings.Contains(h, "/") && ipErr == nil:
			if pfx, err := netip.ParsePrefix(h); err == nil && pfx.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// CheckPolicyHosts reports whether the patterns of Policy.Hosts are well
// formed, for the fleet's configuration.
func CheckPolicyHosts(hosts []string) error {
	for _, h := range hosts {
		switch {
		case h == "" || strings.ContainsAny(h, " :?#@"):
			return fmt.Errorf("app_uri_hosts: %q is not a host name, address, *.SUFFIX or CIDR prefix", h)
		case strings.Contains(h, "/"):
			if _, err := netip.ParsePrefix(h); err != nil {
				return fmt.Errorf("app_uri_hosts: %q: %w", h, err)
			}
		}
	}
	return nil
}

// Refused is an app a device declared that the fleet did not accept, and
// why.
type Refused struct {
	Name string
	Err  error
}

// Accept checks the apps a device declared: names (CheckName, unique, with
// a public address under addr), URIs (CheckURI), labels, rewrites. It
// returns the accepted ones, sorted by name, and the refused ones with
// why; a device that declares more than MaxApps has the rest refused.
func (p Policy) Accept(device string, declared []proto.App) (ok []proto.App, refused []Refused) {
	seen := map[string]bool{}
	for _, a := range declared {
		err := p.check(device, a)
		if err == nil && seen[a.Name] {
			err = fmt.Errorf("app %q is declared twice", a.Name)
		}
		if err == nil && len(ok) >= MaxApps {
			err = fmt.Errorf("more than %d apps on one device", MaxApps)
		}
		if err != nil {
			refused = append(refused, Refused{Name: a.Name, Err: err})
			continue
		}
		seen[a.Name] = true
		ok = append(ok, a)
	}
	slices.SortFunc(ok, func(a, b proto.App) int { return strings.Compare(a.Name, b.Name) })
	return ok, refused
}

var headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")

func (p Policy) check(device string, a proto.App) error {
	if err := CheckName(a.Name); err != nil {
		return err
	}
	if _, err := Label(a.Name, device); err != nil {
		return err
	}
	if err := p.CheckURI(a.URI); err != nil {
		return err
	}
	if err := devices.CheckLabels(a.Labels); err != nil {
		return fmt.Errorf("app %q: %w", a.Name, err)
	}
	if a.Rewrite == nil {
		return nil
	}
	if len(a.Rewrite.Redirect) > 16 || len(a.Rewrite.Headers) > 16 {
		return fmt.Errorf("app %q: at most 16 rewrite redirects and 16 headers", a.Name)
	}
	for _, h := range a.Rewrite.Redirect {
		if h == "" || len(h) > 255 || strings.ContainsAny(h, " /?#@\r\n\t") {
			return fmt.Errorf("app %q: rewrite redirect %q is not HOST or HOST:PORT", a.Name, h)
		}
	}
	for _, h := range a.Rewrite.Headers {
		if !headerNameRE.MatchString(h.Name) {
			return fmt.Errorf("app %q: rewrite header name %q is not a header name", a.Name, h.Name)
		}
		if len(h.Value) > 1024 || strings.ContainsAny(h.Value, "\r\n\x00") {
			return fmt.Errorf("app %q: rewrite header %s: the value must be one line of at most 1024 bytes", a.Name, h.Name)
		}
		if reserved(h.Name) {
			return fmt.Errorf("app %q: rewrite header %s is the fleet's own and cannot be set", a.Name, h.Name)
		}
	}
	return nil
}

// reserved reports whether a rewrite may not set header name: the fleet's
// identity header, hop-by-hop and framing headers.
func reserved(name string) bool {
	switch strings.ToLower(name) {
	case strings.ToLower(JWTHeader), "host", "connection", "upgrade", "transfer-encoding", "content-length", "te", "trailer",
		"keep-alive", "proxy-connection", "cookie":
		return true
	}
	return false
}

// JWTHeader carries the signed identity of the user to every app
// (fleet/appsrv); inbound copies are dropped.
const JWTHeader = "Remoteler-Jwt-Assertion"

// LeafSep follows an app's name in the label of an app on a leaf
// cluster's device (trusted clusters), before the cluster's name:
// APP---CLUSTER--DEVICE. A device name never starts with '-', so no label
// of an app on this fleet's own device has it there.
const LeafSep = Sep + "-"

// Ref names one app: on a device of this fleet (Cluster empty), or on a
// device of a leaf cluster reached through this fleet.
type Ref struct {
	Cluster, App, Device string
}

// Label is the app's DNS label: APP--DEVICE, or APP---CLUSTER--DEVICE for
// a leaf's app. It fails when the label would be longer than MaxLabel, or
// when a leaf's app or cluster name cannot be in one (LeafLabel).
func (r Ref) Label() (string, error) {
	if r.Cluster == "" {
		return Label(r.App, r.Device)
	}
	return LeafLabel(r.Cluster, r.App, r.Device)
}

// LeafLabel is the DNS label of app on device of the leaf cluster:
// APP---CLUSTER--DEVICE. A cluster whose name holds '.' or Sep has no app
// addresses (the name would not end at the first Sep, or not fit one
// label), and neither has a one-character app (its label would have
// "--" as its third and fourth characters, which IDNA reserves).
func LeafLabel(cluster, app, device string) (string, error) {
	switch {
	case strings.ContainsAny(cluster, ".") || strings.Contains(cluster, Sep) || cluster == "":
		return "", fmt.Errorf("the apps of cluster %q have no public address: a cluster name with '.' or %q does not fit a DNS label; name the cluster with a-z, 0-9 and single '-'", cluster, Sep)
	case len(app) == 1:
		return "", fmt.Errorf("app %q on cluster %q has no public address through this fleet: a one-character app name would make its label look like IDNA (%s); rename the app", app, cluster, app+LeafSep)
	}
	l := app + LeafSep + cluster + Sep + device
	if len(l) > MaxLabel {
		return "", fmt.Errorf("app %q on device %q of cluster %q has no public address: %q is %d characters, a DNS label may have %d; shorten the app's name", app, device, cluster, l, len(l), MaxLabel)
	}
	return l, nil
}

// ParseRef splits a DNS label into the app it names: APP--DEVICE for an
// app of this fleet, APP---CLUSTER--DEVICE for a leaf's. The app's name
// ends at the first Sep; a leaf's cluster name at the next. ok is false
// when the label names no app.
func ParseRef(label string) (Ref, bool) {
	if len(label) > MaxLabel {
		return Ref{}, false
	}
	app, rest, found := strings.Cut(label, Sep)
	if !found || CheckName(app) != nil {
		return Ref{}, false
	}
	if !strings.HasPrefix(rest, "-") {
		app, device, ok := ParseLabel(label)
		return Ref{App: app, Device: device}, ok
	}
	cluster, device, found := strings.Cut(rest[1:], Sep)
	r := Ref{Cluster: cluster, App: app, Device: device}
	if !found || !clusterNameRE.MatchString(cluster) || devices.CheckName(device) != nil {
		return Ref{}, false
	}
	if l, err := r.Label(); err != nil || l != label {
		return Ref{}, false
	}
	return r, true
}

// clusterNameRE is what a cluster name in an app's label may be: a
// cluster name (fleet/clusters) without '.'; Sep ends it.
var clusterNameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// ParseRef reads a request's Host as Parse does, and says which app it
// names, of this fleet or of a leaf cluster.
func (a Addr) ParseRef(host string) (Ref, bool) {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.ToLower(host)
	label, rest, found := strings.Cut(host, ".")
	if !found || rest != strings.ToLower(a.Domain) {
		return Ref{}, false
	}
	return ParseRef(label)
}

// OriginOf is the public origin of the app r names.
func (a Addr) OriginOf(r Ref) (string, error) {
	l, err := r.Label()
	if err != nil {
		return "", err
	}
	return "https://" + a.hostPort(l+"."+a.Domain), nil
}
