package tsh

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) appsCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "apps",
		Short: "Web apps on devices, through the fleet",
		Long: `Web apps on devices: a browser opens one at its address after the
fleet's login; scripts and curl reach it through tsh proxy app, with a
certificate for the app from tsh apps login. See docs/apps.md.`,
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the web apps you may open, with their addresses",
		Args:  cli.NoArgs,
	}
	format := cli.FormatFlag(ls, "")
	var lsCluster, loginCluster, logoutCluster string
	r.clusterFlag(ls, &lsCluster)
	ls.RunE = func(cmd *cobra.Command, _ []string) error { return r.appsLs(cmd.Context(), lsCluster, *format) }

	var ttl time.Duration
	login := &cobra.Command{
		Use:   "login APP",
		Short: "Get a short-lived certificate for an app, for tsh proxy app",
		Long: `Get a short-lived client certificate for one app: APP is its name when one
device offers it, else APP--DEVICE (tsh apps ls shows both). With
--cluster, an app of that leaf cluster, reached through the fleet.`,
		Example: `  tsh apps login nodered
  tsh proxy app nodered --port=8080
  tsh apps login --cluster=plant-7 nodered`,
		Args: cli.ExactArgs(1, "the APP (tsh apps ls lists them)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.appsLogin(cmd.Context(), args[0], loginCluster, ttl)
		},
	}
	r.clusterFlag(login, &loginCluster)
	login.Flags().DurationVar(&ttl, "ttl", 0, "the certificate's lifetime (default and at most: what is left of your login)")

	logout := &cobra.Command{
		Use:   "logout [APP]",
		Short: "Forget the app certificates of this login (or APP's)",
		Args:  cli.RangeArgs(0, 1, "APP"),
		RunE:  func(cmd *cobra.Command, args []string) error { return r.appsLogout(args, logoutCluster) },
	}
	r.clusterFlag(logout, &logoutCluster)
	group.AddCommand(ls, login, logout)
	return group
}

// proxyAppCommand is tsh proxy app.
func (r *runner) proxyAppCommand() *cobra.Command {
	var port int
	var cluster string
	c := &cobra.Command{
		Use:   "app APP",
		Short: "Serve a web app on a local port, through the fleet",
		Long: `Serve APP on http://127.0.0.1:PORT: requests go to the app's address
through the fleet with the certificate tsh apps login got, so that curl
and scripts reach the app. Redirects to the app's address come back as
the local one. Ctrl-C stops it.`,
		Example: `  tsh apps login nodered
  tsh proxy app nodered --port=8080 &
  curl http://127.0.0.1:8080/`,
		Args: cli.ExactArgs(1, "the APP (tsh apps login APP first)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.proxyApp(cmd.Context(), args[0], cluster, port)
		},
	}
	r.clusterFlag(c, &cluster)
	c.Flags().IntVar(&port, "port", 0, "local port to listen on, on 127.0.0.1 (default: a free one, printed)")
	return c
}

// appsLs lists the apps the user may open: the fleet's, or with cluster
// (or the current cluster of tsh login LEAF) a leaf cluster's, at their
// addresses through the fleet.
func (r *runner) appsLs(ctx context.Context, cluster string, format cli.Format) error {
	s, err := r.site(cluster)
	if err != nil {
		return fmt.Errorf("apps ls: %w", err)
	}
	c, err := r.newClient(s.p, s.dir)
	if err != nil {
		return err
	}
	defer c.Close()
	var all []api.App
	if s.leaf != "" {
		all, err = c.LeafApps(ctx, s.leaf)
	} else {
		all, err = c.Apps(ctx)
	}
	if err != nil {
		return fmt.Errorf("apps ls: %w", clusterError(apiHint(err), s.leaf))
	}
	return cli.PrintList(r.stdio.Out, format, "apps", all, false, func() error {
		if len(all) == 0 {
			who := "your fleet admin"
			if s.leaf != "" {
				who = "the admin of " + s.leaf
			}
			fmt.Fprintf(r.stdio.Err, "No web app you may open; if you expected some, ask %s about your roles (app_labels).\n", who)
			return nil
		}
		return cli.AppTable{}.Write(r.stdio.Out, all)
	})
}

// appFiles are where an app certificate is kept in a profile directory:
// apps/LABEL.crt, .key and .json (the fleet's answer but the certificate).
func appFiles(dir, label string) (crt, key, meta string) {
	base := filepath.Join(dir, "apps", label)
	return base + ".crt", base + ".key", base + ".json"
}

func (r *runner) appsLogin(ctx context.Context, app, cluster string, ttl time.Duration) error {
	s, err := r.site(cluster)
	if err != nil {
		return fmt.Errorf("apps login: %w", err)
	}
	p, dir := s.p, s.dir
	c, err := r.newClient(p, dir)
	if err != nil {
		return err
	}
	defer c.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("apps login: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: p.User}}, key)
	if err != nil {
		return fmt.Errorf("apps login: %w", err)
	}
	resp, err := c.AppLogin(ctx, &api.AppLoginRequest{App: app, CSR: csr, TTL: ttl, Cluster: s.leaf})
	if err != nil {
		return fmt.Errorf("apps login: %w", clusterError(apiHint(err), s.leaf))
	}
	if err := saveAppCert(dir, key, resp); err != nil {
		return fmt.Errorf("apps login: %w", err)
	}
	fmt.Fprintf(r.stdio.Out, "Logged in to app %s (on %s) until %s.\nReach it with: tsh proxy app %s --port=8080\n",
		resp.App.Label, resp.App.Device, resp.Expires.Local().Format(time.DateTime), resp.App.Label)
	return nil
}

// saveAppCert keeps an app certificate in the profile directory.
func saveAppCert(dir string, key *ecdsa.PrivateKey, resp *api.AppLoginResponse) error {
	label := resp.App.Label
	if err := checkName("app", label); err != nil {
		return err
	}
	leaf, err := x509.ParseCertificate(resp.Cert)
	if err != nil {
		return fmt.Errorf("the fleet sent a bad certificate: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "apps"), 0o700); err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	meta := *resp
	meta.Cert, meta.CACerts = nil, nil
	mb, err := jsonIndent(meta)
	if err != nil {
		return err
	}
	crt, keyPath, metaPath := appFiles(dir, label)
	for _, f := range []profileFile{
		{keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600},
		{crt, client.EncodeCertsPEM(leaf), 0o644},
		{metaPath, mb, 0o600},
	} {
		if err := writeFileAtomic(f.name, f.data, f.perm); err != nil {
			return err
		}
	}
	return nil
}

// appCert is an app certificate kept by tsh apps login.
type appCert struct {
	meta api.AppLoginResponse
	cert tls.Certificate
}

// loadAppCerts reads the profile's app certificates.
func loadAppCerts(dir string) ([]appCert, error) {
	matches, _ := filepath.Glob(filepath.Join(dir, "apps", "*.json"))
	var out []appCert
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			return nil, err
		}
		var ac appCert
		if err := json.Unmarshal(b, &ac.meta); err != nil {
			return nil, fmt.Errorf("%s: %w", m, err)
		}
		crt, key, _ := appFiles(dir, ac.meta.App.Label)
		if ac.cert, err = tls.LoadX509KeyPair(crt, key); err != nil {
			return nil, fmt.Errorf("app certificate of %s: %w", ac.meta.App.Label, err)
		}
		out = append(out, ac)
	}
	return out, nil
}

// findAppCert picks the app certificate for name (a label, or an app's
// name when one certificate is for it); with cluster, only among the
// certificates for that leaf cluster's apps.
func findAppCert(certs []appCert, name, cluster string) (*appCert, error) {
	var byName []*appCert
	for i := range certs {
		a := &certs[i].meta.App
		if a.Label == name {
			return &certs[i], nil
		}
		if a.Name == name && (cluster == "" || a.Cluster == cluster) {
			byName = append(byName, &certs[i])
		}
	}
	switch len(byName) {
	case 0:
		if cluster != "" {
			return nil, fmt.Errorf("no certificate for app %q of cluster %s: run tsh apps login --cluster=%s %s", name, cluster, cluster, name)
		}
		return nil, fmt.Errorf("no certificate for app %q: run tsh apps login %s", name, name)
	case 1:
		return byName[0], nil
	}
	var labels []string
	for _, c := range byName {
		labels = append(labels, c.meta.App.Label)
	}
	return nil, fmt.Errorf("you have certificates for several apps called %q: name one of %s", name, strings.Join(labels, ", "))
}

func (r *runner) appsLogout(args []string, cluster string) error {
	_, dir, err := r.currentProfile()
	if err != nil {
		return err
	}
	certs, err := loadAppCerts(dir)
	if err != nil {
		return fmt.Errorf("apps logout: %w", err)
	}
	if len(args) == 1 {
		c, err := findAppCert(certs, args[0], cluster)
		if err != nil {
			return fmt.Errorf("apps logout: %w", err)
		}
		certs = []appCert{*c}
	}
	for _, c := range certs {
		crt, key, meta := appFiles(dir, c.meta.App.Label)
		for _, f := range []string{key, crt, meta} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("apps logout: %w", err)
			}
		}
		fmt.Fprintf(r.stdio.Out, "Logged out of app %s.\n", c.meta.App.Label)
	}
	return nil
}

// proxyApp runs tsh proxy app APP [--port=N]: a local HTTP listener that
// passes requests to the app through the fleet with its certificate.
func (r *runner) proxyApp(ctx context.Context, app, cluster string, port int) error {
	p, dir, err := r.currentProfile()
	if err != nil {
		return err
	}
	certs, err := loadAppCerts(dir)
	if err != nil {
		return fmt.Errorf("proxy app: %w", err)
	}
	ac, err := findAppCert(certs, app, cluster)
	if err != nil {
		return fmt.Errorf("proxy app: %w", err)
	}
	if leaf := ac.cert.Leaf; leaf != nil && !r.stdio.Now().Before(leaf.NotAfter) {
		return fmt.Errorf("proxy app: your certificate for %s expired at %s: run tsh apps login %s", ac.meta.App.Label, leaf.NotAfter.Local().Format(time.DateTime), ac.meta.App.Label)
	}
	casPEM, err := os.ReadFile(filepath.Join(dir, fileCAs))
	if err != nil {
		return fmt.Errorf("proxy app: the login in %s is incomplete (%w); run tsh login again", dir, err)
	}
	cas, err := client.ParseCertsPEM(casPEM)
	if err != nil {
		return fmt.Errorf("proxy app: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	h, err := client.NewAppProxy(client.AppProxyConfig{Fleet: p.Proxy, Host: ac.meta.PublicHost, Cert: ac.cert, CAs: pool})
	if err != nil {
		return fmt.Errorf("proxy app: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("proxy app: listen: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	fmt.Fprintf(r.stdio.Out, "Proxying http://%s to app %s (on %s); Ctrl-C stops.\n", ln.Addr(), ac.meta.App.Label, ac.meta.App.Device)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	case err := <-errc:
		return fmt.Errorf("proxy app: %w", err)
	}
}
