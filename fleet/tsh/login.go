package tsh

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// loginFlags are tsh login's flags.
type loginFlags struct {
	proxy, user, caPin string
	insecure           bool
	ttl                time.Duration
	// auth is a single sign-on connector's name, or "headless" (from
	// --auth or --headless); browser is --browser.
	auth, browser string
	headless      bool
}

func (r *runner) loginCommand() *cobra.Command {
	var f loginFlags
	cmd := &cobra.Command{
		Use:   "login --proxy=HOST:PORT [--user=NAME | --auth=CONNECTOR | --headless] [CLUSTER]",
		Short: "Log in to a fleet and get short-lived certificates",
		Long: `Log in to a fleet with your password (and a TOTP code when you enrolled
one): tsh asks the fleet for an SSH and an X.509 certificate for keys it
makes on this machine, and keeps them under TSH_HOME (default ~/.tsh) until
they expire. The first login to a fleet verifies it by its CA pin
(--ca-pin, from your admin: fleetctl status prints it); later logins trust
the CA saved by the first. The password is read without echo from a
terminal, else one line from standard input.

With single sign-on, --auth=CONNECTOR logs you in through your identity
provider in a browser (tsh opens it, or prints the address with
--browser=none) and receives the certificates on a loopback port; your
fleet user name, roles and traits come from the provider. --headless is for
a machine without a browser: tsh shows a code and an address, you approve
the login in any browser where you can log in to the fleet, and the
certificates arrive here. A later tsh login logs in the same way again.

tsh login CLUSTER, with a leaf cluster of the fleet (tsh clusters lists
them), makes it where commands work: the fleet issues a certificate for
the leaf's devices without asking for your password again, once the leaf
says its roles let you in; tsh login with the fleet's own name goes back.
With login flags, or when your login has expired, tsh logs in first.`,
		Example: `  tsh login --proxy=fleet.example.com:3080 --user=alice --ca-pin=sha256:6f1c...
  tsh login --proxy=fleet.example.com:3080 --auth=okta
  tsh login --proxy=fleet.example.com:3080 --headless
  tsh login          # again, as the current login
  tsh login plant-7  # work in the leaf cluster plant-7`,
		Args:              cli.RangeArgs(0, 1, "at most one cluster: tsh login [CLUSTER]"),
		ValidArgsFunction: cli.CompleteArgs(1, r.completeClusterNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return r.login(cmd, f)
			}
			if !r.loginNeeded(cmd) {
				return r.loginCluster(cmd.Context(), args[0])
			}
			if err := r.login(cmd, f); err != nil {
				return err
			}
			return r.loginCluster(cmd.Context(), args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.proxy, "proxy", "", "the fleet's address, HOST:PORT (default: that of the current login)")
	fl.StringVar(&f.user, "user", "", "your fleet user name (default: that of the current login, else your local user name)")
	fl.StringVar(&f.caPin, "ca-pin", "", "trust the fleet whose CA has this pin, sha256:HEX (your admin has it: fleetctl status); default: the CA saved by an earlier login, else the system's roots")
	fl.BoolVar(&f.insecure, "insecure", false, "do not verify the fleet's certificate: for development only")
	fl.DurationVar(&f.ttl, "ttl", 8*time.Hour, "requested lifetime of your certificates; the fleet caps it by your roles")
	fl.StringVar(&f.auth, "auth", "", "log in through this single sign-on `connector` in a browser (ask your fleet admin for its name)")
	fl.BoolVar(&f.headless, "headless", false, "log in from a machine without a browser: approve the login in a browser elsewhere")
	fl.StringVar(&f.browser, "browser", "", "the browser `program` that opens the login page (default $BROWSER, else the system's); none prints the address only")
	cmd.MarkFlagsMutuallyExclusive("auth", "headless")
	cmd.MarkFlagsMutuallyExclusive("user", "auth")
	cmd.MarkFlagsMutuallyExclusive("user", "headless")
	return cmd
}

func (r *runner) login(cmd *cobra.Command, f loginFlags) error {
	ctx := cmd.Context()
	proxy, userName, caPin, insecure, ttl := &f.proxy, &f.user, &f.caPin, &f.insecure, &f.ttl
	auth := f.auth
	if f.headless {
		auth = authHeadless
	}
	if cur, _, err := r.currentProfile(); err == nil {
		if *proxy == "" {
			*proxy = cur.Proxy
		}
		if *userName == "" && auth == "" && *proxy == cur.Proxy {
			// Again, the way the current login was made.
			if cur.Auth != "" {
				auth = cur.Auth
			} else {
				*userName = cur.User
			}
		}
	}
	if *proxy == "" {
		return cli.Usagef(cmd, "--proxy=HOST:PORT is required: the fleet's address (ask your fleet admin)")
	}
	if *userName == "" && auth == "" {
		*userName = r.localUser()
	}
	if err := checkProxy(*proxy); err != nil {
		return fmt.Errorf("login: --proxy: %w", err)
	}
	if auth != "" {
		if err := checkName("connector", auth); err != nil {
			return fmt.Errorf("login: --auth: %w", err)
		}
	} else if err := checkName("user", *userName); err != nil {
		return fmt.Errorf("login: --user: %w", err)
	}
	if *caPin != "" && *insecure {
		return cli.Usagef(cmd, "use --ca-pin or --insecure, not both")
	}
	if *ttl <= 0 {
		return cli.Usagef(cmd, "--ttl must be positive, e.g. 8h")
	}
	conf, wantPin, err := r.loginTrust(*proxy, *userName, *caPin, *insecure)
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	c, err := client.New(client.Config{Addr: *proxy, TLS: conf, UserAgent: "tsh/" + Version, Now: r.stdio.Now})
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	defer c.Close()

	keyName := *userName
	if keyName == "" {
		keyName = "sso"
	}
	keys, err := newKeys(keyName)
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	var resp *api.LoginResponse
	switch auth {
	case "":
		resp, err = r.passwordLogin(ctx, c, *userName, *proxy, keys, *ttl)
	case authHeadless:
		resp, err = r.headlessLogin(ctx, c, keys, *ttl)
	default:
		resp, err = r.ssoLogin(ctx, c, auth, keys, *ttl, f.browser)
	}
	if err != nil {
		return loginError(err)
	}
	if auth != "" {
		if err := checkName("user", resp.User); err != nil {
			return fmt.Errorf("login: the fleet's answer: %w", err)
		}
		*userName = resp.User
	}
	got, err := checkLogin(resp, keys, *userName, wantPin)
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	p := &profile{
		Proxy:      *proxy,
		User:       *userName,
		Cluster:    resp.Cluster,
		Roles:      resp.Roles,
		Logins:     resp.Logins,
		Expires:    resp.Expires,
		CAPin:      wantPin,
		HostCAKeys: got.hostCAKeys,
		Auth:       auth,
	}
	if p.CAPin == "" {
		p.CAPin = pin.Of(got.cas[0])
	}
	if p.Expires.IsZero() {
		p.Expires = got.leaf.NotAfter
	}
	dir, err := r.save(p, keys, resp, got)
	if err != nil {
		return fmt.Errorf("login: save to %s: %w", dir, err)
	}
	if len(p.HostCAKeys) == 0 {
		fmt.Fprintln(r.stdio.Err, "tsh: warning: the fleet sent no SSH host CA key, so tsh ssh cannot verify devices; tell your fleet admin")
	}
	now := r.stdio.Now()
	fmt.Fprintf(r.stdio.Out, "Logged in to the fleet %q at %s as %s.\n", p.Cluster, p.Proxy, p.User)
	fmt.Fprintf(r.stdio.Out, "  Roles:       %s\n", cli.List(p.Roles))
	fmt.Fprintf(r.stdio.Out, "  Logins:      %s\n", cli.List(p.Logins))
	fmt.Fprintf(r.stdio.Out, "  Valid until: %s (for %s)\n", cli.Time(p.Expires), cli.Duration(p.Expires.Sub(now)))
	fmt.Fprintln(r.stdio.Out, "Next: tsh ls lists your devices, tsh ssh LOGIN@DEVICE logs in to one, tsh config sets up OpenSSH.")
	return nil
}

// loginNeeded reports whether tsh login CLUSTER must log in to the fleet
// first: login flags were given, or there is no current login valid for a
// while yet.
func (r *runner) loginNeeded(cmd *cobra.Command) bool {
	for _, f := range []string{"proxy", "user", "auth", "headless", "ca-pin", "insecure", "ttl"} {
		if cmd.Flags().Changed(f) {
			return true
		}
	}
	p, _, err := r.currentProfile()
	return err != nil || !r.stdio.Now().Add(time.Minute).Before(p.Expires)
}

// passwordLogin logs in with a password and, when asked for one, a TOTP
// code.
func (r *runner) passwordLogin(ctx context.Context, c *client.Client, userName, proxy string, k *keys, ttl time.Duration) (*api.LoginResponse, error) {
	password, err := r.prompt.Secret(ctx, fmt.Sprintf("Password for %s at %s: ", userName, proxy))
	if err != nil {
		return nil, fmt.Errorf("read password: %w", err)
	}
	if password == "" {
		return nil, errors.New("empty password; type your fleet password (or pipe it on standard input)")
	}
	req := &api.LoginRequest{
		User:         userName,
		Password:     password,
		CSR:          k.csr,
		SSHPublicKey: string(ssh.MarshalAuthorizedKey(k.sshPub)),
		TTL:          ttl,
	}
	resp, err := c.Login(ctx, req)
	if apiErr, ok := errors.AsType[*api.Error](err); ok && apiErr.Code == api.CodeTOTPRequired {
		code, err := r.prompt.Line(ctx, fmt.Sprintf("TOTP code for %s (from your authenticator app): ", userName))
		if err != nil {
			return nil, fmt.Errorf("read TOTP code: %w", err)
		}
		req.TOTP = strings.TrimSpace(code)
		return c.Login(ctx, req)
	}
	return resp, err
}

// loginTrust picks how login trusts the fleet: the pin, --insecure, the CA
// certificates an earlier login to the same proxy saved, or the system's
// roots. It returns the pin the fleet's CAs must match (empty: none).
func (r *runner) loginTrust(proxy, user, caPin string, insecure bool) (*tls.Config, string, error) {
	switch {
	case caPin != "":
		p, err := pin.Parse(caPin)
		if err != nil {
			return nil, "", fmt.Errorf("--ca-pin: %w", err)
		}
		conf, err := client.PinnedTLS(proxy, p, nil)
		return conf, p, err
	case insecure:
		conf, err := client.InsecureTLS(proxy, r.stdio.Err, nil)
		return conf, "", err
	}
	home, err := r.home()
	if err != nil {
		return nil, "", err
	}
	// The same user's saved CAs first, then any other user's at this proxy.
	candidates := []string{filepath.Join(home, "keys", proxy, user, fileCAs)}
	more, _ := filepath.Glob(filepath.Join(home, "keys", proxy, "*", fileCAs))
	for _, path := range append(candidates, more...) {
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		cas, err := client.ParseCertsPEM(data)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w; remove it, or log in with --ca-pin", path, err)
		}
		conf, err := client.CATLS(proxy, cas, nil)
		return conf, "", err
	}
	conf, err := client.SystemTLS(proxy, nil)
	return conf, "", err
}

// loginError adds what to do to a failed login.
func loginError(err error) error {
	if strings.HasPrefix(err.Error(), "login: ") {
		return err
	}
	if apiErr, ok := errors.AsType[*api.Error](err); ok {
		switch apiErr.Code {
		case api.CodeUnauthorized:
			return fmt.Errorf("login: %s; check your user name, password and TOTP code, and try again", apiErr.Message)
		case api.CodeForbidden:
			return fmt.Errorf("login: %s; ask your fleet admin for access", apiErr.Message)
		}
		return fmt.Errorf("login: %w", err)
	}
	return fmt.Errorf("login: %w", err)
}

// keys are the keys a login certifies.
type keys struct {
	sshKey ed25519.PrivateKey
	sshPub ssh.PublicKey
	tlsKey *ecdsa.PrivateKey
	csr    []byte // DER
}

func newKeys(user string) (*keys, error) {
	_, sshKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate SSH key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(sshKey.Public())
	if err != nil {
		return nil, fmt.Errorf("generate SSH key: %w", err)
	}
	tlsKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate TLS key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: user}}, tlsKey)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return &keys{sshKey: sshKey, sshPub: sshPub, tlsKey: tlsKey, csr: csr}, nil
}

// loginResult is the parsed and checked content of a LoginResponse.
type loginResult struct {
	sshCert    *ssh.Certificate
	leaf       *x509.Certificate
	cas        []*x509.Certificate
	hostCAKeys []string // normalised authorized_keys lines
}

// checkLogin checks that the fleet certified our keys, that its CAs match
// the pin the user gave, and that the leaf chains to them.
// profileFile is one file of a saved login.
type profileFile struct {
	name string
	data []byte
	perm os.FileMode
}

func checkLogin(resp *api.LoginResponse, k *keys, user, wantPin string) (*loginResult, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("the fleet's answer is not usable: "+format+"; is the fleet's version compatible with tsh %s?", append(args, Version)...)
	}
	if err := checkCluster(resp.Cluster); err != nil {
		return nil, bad("%v", err)
	}
	var out loginResult
	var err error
	// A user whose roles give no SSH logins (Kubernetes only, say) gets no
	// SSH certificate.
	if resp.SSHCert != "" {
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(resp.SSHCert))
		if err != nil {
			return nil, bad("SSH certificate: %v", err)
		}
		cert, ok := key.(*ssh.Certificate)
		if !ok || cert.CertType != ssh.UserCert {
			return nil, bad("SSH certificate is not a user certificate")
		}
		if string(cert.Key.Marshal()) != string(k.sshPub.Marshal()) {
			return nil, bad("SSH certificate is for another key")
		}
		out.sshCert = cert
	}
	if out.leaf, err = x509.ParseCertificate(resp.Cert); err != nil {
		return nil, bad("TLS certificate: %v", err)
	}
	if !k.tlsKey.PublicKey.Equal(out.leaf.PublicKey) {
		return nil, bad("TLS certificate is for another key")
	}
	if len(resp.CACerts) == 0 {
		return nil, bad("no CA certificate")
	}
	pool := x509.NewCertPool()
	pinned := wantPin == ""
	for _, der := range resp.CACerts {
		ca, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, bad("CA certificate: %v", err)
		}
		out.cas = append(out.cas, ca)
		pool.AddCert(ca)
		if pin.Of(ca) == wantPin {
			pinned = true
		}
	}
	if !pinned {
		return nil, errors.New("the fleet's CA certificates do not match --ca-pin; check the pin with your fleet admin")
	}
	if _, err := out.leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, CurrentTime: out.leaf.NotBefore.Add(time.Second)}); err != nil {
		return nil, bad("TLS certificate does not chain to the fleet's CA: %v", err)
	}
	for _, line := range resp.HostCAKeys {
		hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, bad("host CA key: %v", err)
		}
		out.hostCAKeys = append(out.hostCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hk))))
	}
	return &out, nil
}

// save writes the profile's files and makes it current.
func (r *runner) save(p *profile, k *keys, resp *api.LoginResponse, got *loginResult) (string, error) {
	home, err := r.home()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(home, "keys", p.Proxy, p.User)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return dir, err
	}
	for _, d := range []string{home, filepath.Join(home, "keys"), filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o700); err != nil {
			return dir, err
		}
	}
	privBlock, err := ssh.MarshalPrivateKey(k.sshKey, p.User+"@"+p.Cluster)
	if err != nil {
		return dir, err
	}
	tlsDER, err := x509.MarshalPKCS8PrivateKey(k.tlsKey)
	if err != nil {
		return dir, err
	}
	profileJSON, err := jsonIndent(p)
	if err != nil {
		return dir, err
	}
	files := []profileFile{
		{fileKey, pem.EncodeToMemory(privBlock), 0o600},
		{filePub, ssh.MarshalAuthorizedKey(k.sshPub), 0o644},
		{fileTLSKey, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: tlsDER}), 0o600},
		{fileTLSCert, client.EncodeCertsPEM(got.leaf), 0o644},
		{fileCAs, client.EncodeCertsPEM(got.cas...), 0o644},
		{fileProfile, profileJSON, 0o600},
	}
	if got.sshCert != nil {
		files = append(files, profileFile{fileCert, ssh.MarshalAuthorizedKey(got.sshCert), 0o644})
	} else {
		os.Remove(filepath.Join(dir, fileCert)) // no stale certificate from an earlier login
	}
	// The leaf clusters' certificates were for the earlier login's key.
	if err := os.RemoveAll(filepath.Join(dir, dirClusters)); err != nil {
		return dir, err
	}
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return dir, err
		}
	}
	var lines []string
	for _, k := range p.HostCAKeys {
		lines = append(lines, fmt.Sprintf("@cert-authority *.%s %s %s", p.Cluster, k, p.marker()))
	}
	if err := updateKnownHosts(filepath.Join(home, "known_hosts"), p.marker(), lines); err != nil {
		return dir, err
	}
	return dir, writeFileAtomic(filepath.Join(home, "current"), []byte(p.name()+"\n"), 0o644)
}
