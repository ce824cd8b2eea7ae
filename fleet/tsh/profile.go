package tsh

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/pin"
)

// File names in a profile directory.
const (
	fileKey     = "key"
	filePub     = "key.pub"
	fileCert    = "key-cert.pub"
	fileTLSKey  = "tls.key"
	fileTLSCert = "tls.crt"
	fileCAs     = "cas.pem"
	fileProfile = "profile.json"
)

// profile is one login, as kept in profile.json.
type profile struct {
	Proxy   string    `json:"proxy"`
	User    string    `json:"user"`
	Cluster string    `json:"cluster"`
	Roles   []string  `json:"roles"`
	Logins  []string  `json:"logins"`
	Expires time.Time `json:"expires"`
	// CAPin is the pin of the fleet CA: the one given at first login, else
	// that of the first CA certificate the fleet sent.
	CAPin string `json:"ca_pin,omitempty"`
	// HostCAKeys are the fleet's SSH host CA keys in authorized_keys
	// format; tsh ssh trusts device host certificates they sign.
	HostCAKeys []string `json:"host_ca_keys"`
	// Auth is how the login was made: "" with a password, a single
	// sign-on connector's name, or "headless". tsh login again logs in
	// the same way.
	Auth string `json:"auth,omitempty"`
	// Current is the leaf cluster commands work in by default (tsh login
	// LEAF); "" for the fleet itself.
	Current string `json:"current_cluster,omitempty"`
}

// loginFlag is the tsh login flag that logs in again as this profile did:
// --user=NAME, --auth=CONNECTOR or --headless.
func (p *profile) loginFlag() string {
	switch p.Auth {
	case "":
		return "--user=" + p.User
	case authHeadless:
		return "--headless"
	}
	return "--auth=" + p.Auth
}

// name is how the profile is named in $TSH_HOME/current: PROXY/USER.
func (p *profile) name() string { return p.Proxy + "/" + p.User }

// marker tags this profile's lines in $TSH_HOME/known_hosts.
func (p *profile) marker() string { return "tsh:" + p.name() }

// hostCAs parses HostCAKeys.
func (p *profile) hostCAs() ([]ssh.PublicKey, error) { return parseHostCAs(p.HostCAKeys) }

// parseProfile decodes and checks profile.json. Everything in it ends up in
// file paths, known_hosts or ssh_config lines, so it is checked strictly.
func parseProfile(data []byte) (*profile, error) {
	var p profile
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := checkProxy(p.Proxy); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := checkName("user", p.User); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if err := checkCluster(p.Cluster); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if p.CAPin != "" {
		if _, err := pin.Parse(p.CAPin); err != nil {
			return nil, fmt.Errorf("profile: %w", err)
		}
	}
	if _, err := p.hostCAs(); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	if p.Auth != "" {
		if err := checkName("connector", p.Auth); err != nil {
			return nil, fmt.Errorf("profile: %w", err)
		}
	}
	if p.Current != "" {
		if err := checkCluster(p.Current); err != nil {
			return nil, fmt.Errorf("profile: current cluster: %w", err)
		}
	}
	return &p, nil
}

// checkName accepts names that are safe as one path element and as one word
// in a config line.
func checkName(what, s string) error {
	if s == "" || s == "." || s == ".." || len(s) > 255 {
		return fmt.Errorf("%s name %q is empty, too long or a dot name", what, s)
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f || strings.ContainsRune(`/\"'`+"`", c) {
			return fmt.Errorf("%s name %q holds a space, slash, quote or control character", what, s)
		}
	}
	return nil
}

// checkProxy accepts HOST:PORT.
func checkProxy(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return fmt.Errorf("fleet address %q is not HOST:PORT (e.g. fleet.example.com:3080)", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("fleet address %q has no valid port (e.g. fleet.example.com:3080)", s)
	}
	return checkName("fleet address", s)
}

// checkCluster accepts a DNS-like name usable in a host pattern (*.CLUSTER).
func checkCluster(s string) error {
	if s == "" || len(s) > 253 || s[0] == '.' || s[0] == '-' {
		return fmt.Errorf("cluster name %q cannot be used in a host pattern", s)
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("cluster name %q cannot be used in a host pattern", s)
		}
	}
	return nil
}

// parseCurrent decodes $TSH_HOME/current: PROXY/USER.
func parseCurrent(data []byte) (proxy, user string, err error) {
	proxy, user, ok := strings.Cut(strings.TrimSpace(string(data)), "/")
	if !ok {
		return "", "", errors.New("current: want PROXY/USER")
	}
	if err := checkProxy(proxy); err != nil {
		return "", "", fmt.Errorf("current: %w", err)
	}
	if err := checkName("user", user); err != nil {
		return "", "", fmt.Errorf("current: %w", err)
	}
	return proxy, user, nil
}

// errNotLoggedIn is what commands that need a login say without one.
var errNotLoggedIn = errors.New("not logged in; run tsh login --proxy=HOST:PORT --user=NAME")

// profileDir is $TSH_HOME/keys/PROXY/USER.
func (r *runner) profileDir(proxy, user string) (string, error) {
	home, err := r.home()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, "keys", proxy, user), nil
}

// loadProfile reads a profile by proxy and user.
func (r *runner) loadProfile(proxy, user string) (*profile, string, error) {
	dir, err := r.profileDir(proxy, user)
	if err != nil {
		return nil, "", err
	}
	data, err := os.ReadFile(filepath.Join(dir, fileProfile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", errNotLoggedIn
	}
	if err != nil {
		return nil, "", fmt.Errorf("read profile: %w", err)
	}
	p, err := parseProfile(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s is damaged (%w); run tsh login again", filepath.Join(dir, fileProfile), err)
	}
	if p.Proxy != proxy || p.User != user {
		return nil, "", fmt.Errorf("%s names %s, not %s/%s; run tsh login again", filepath.Join(dir, fileProfile), p.name(), proxy, user)
	}
	return p, dir, nil
}

// currentProfile reads the active profile.
func (r *runner) currentProfile() (*profile, string, error) {
	home, err := r.home()
	if err != nil {
		return nil, "", err
	}
	data, err := os.ReadFile(filepath.Join(home, "current"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, "", errNotLoggedIn
	}
	if err != nil {
		return nil, "", fmt.Errorf("read current profile: %w", err)
	}
	proxy, user, err := parseCurrent(data)
	if err != nil {
		return nil, "", fmt.Errorf("%s is damaged (%w); run tsh login again", filepath.Join(home, "current"), err)
	}
	return r.loadProfile(proxy, user)
}

// allProfiles lists the profiles under $TSH_HOME/keys, with the errors of
// those that cannot be read.
func (r *runner) allProfiles() ([]*profile, []error) {
	home, err := r.home()
	if err != nil {
		return nil, []error{err}
	}
	paths, _ := filepath.Glob(filepath.Join(home, "keys", "*", "*", fileProfile))
	slices.Sort(paths)
	var (
		out  []*profile
		errs []error
	)
	for _, path := range paths {
		userDir := filepath.Dir(path)
		p, _, err := r.loadProfile(filepath.Base(filepath.Dir(userDir)), filepath.Base(userDir))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	return out, errs
}

// newClient returns a fleet client that trusts the profile's CA
// certificates and presents its TLS certificate.
func (r *runner) newClient(p *profile, dir string) (*client.Client, error) {
	damaged := func(err error) error {
		return fmt.Errorf("the login in %s is incomplete (%w); run tsh login again", dir, err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, fileTLSCert), filepath.Join(dir, fileTLSKey))
	if err != nil {
		return nil, damaged(err)
	}
	casPEM, err := os.ReadFile(filepath.Join(dir, fileCAs))
	if err != nil {
		return nil, damaged(err)
	}
	cas, err := client.ParseCertsPEM(casPEM)
	if err != nil {
		return nil, damaged(err)
	}
	conf, err := client.CATLS(p.Proxy, cas, &cert)
	if err != nil {
		return nil, err
	}
	return client.New(client.Config{
		Addr:      p.Proxy,
		TLS:       conf,
		UserAgent: "tsh/" + Version,
		Now:       r.stdio.Now,
		LoginHint: fmt.Sprintf("run tsh login --proxy=%s --user=%s", p.Proxy, p.User),
	})
}

// writeFileAtomic writes data to path with mode perm through a temporary
// file in the same directory, so readers never see half a file.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	return nil
}

// updateKnownHosts replaces the lines that end with marker in the
// known_hosts file at path with add (each a line without newline).
func updateKnownHosts(path, marker string, add []string) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	out := rewriteKnownHosts(old, marker, add)
	if bytes.Equal(out, old) {
		return nil
	}
	if err := writeFileAtomic(path, out, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// rewriteKnownHosts drops the lines of a known_hosts file whose last field
// is marker and appends add. Other lines are kept as they are.
func rewriteKnownHosts(old []byte, marker string, add []string) []byte {
	var out bytes.Buffer
	for line := range strings.Lines(string(old)) {
		fields := strings.Fields(line)
		if len(fields) > 0 && fields[len(fields)-1] == marker {
			continue
		}
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteByte('\n')
		}
	}
	for _, l := range add {
		out.WriteString(l + "\n")
	}
	return out.Bytes()
}
