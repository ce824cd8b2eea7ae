package kubesrv

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/broker"
)

// DefaultServiceAccountDir is where Kubernetes mounts a pod's service
// account token and the cluster CA.
const DefaultServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Local is the Kubernetes cluster fleetd runs in, reached with fleetd's
// service account, which must be allowed to impersonate users and groups
// (images/fleet/ has the ClusterRole). Users reach it like a device's
// cluster, under its Name.
type Local struct {
	// Name is what users call the cluster (tsh kube login NAME).
	Name string
	// Labels are matched by roles' device_labels like a device's.
	Labels map[string]string

	server    *url.URL
	tokenFile string
	tr        *http.Transport
	now       func() time.Time

	mu        sync.Mutex // guards token and tokenRead
	token     string
	tokenRead time.Time
}

// ErrNotInCluster is returned by DetectLocal when fleetd does not run in a
// Kubernetes pod.
var ErrNotInCluster = errors.New("kubesrv: not running in a Kubernetes cluster")

// DetectLocal finds the cluster fleetd runs in the way client-go's
// in-cluster config does: the KUBERNETES_SERVICE_HOST and _PORT variables
// (from getenv) and, in dir (DefaultServiceAccountDir in a pod), the files
// token and ca.crt. It returns ErrNotInCluster when they are missing, and
// another error when they are there but unusable. now may be nil.
func DetectLocal(dir string, getenv func(string) string, name string, labels map[string]string, now func() time.Time) (*Local, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	tokenFile := filepath.Join(dir, "token")
	if _, err := os.Stat(tokenFile); errors.Is(err, fs.ErrNotExist) || host == "" || port == "" {
		return nil, ErrNotInCluster
	}
	if now == nil {
		now = time.Now
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("kubesrv: in-cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("kubesrv: in-cluster CA %s holds no PEM certificate", filepath.Join(dir, "ca.crt"))
	}
	if labels == nil {
		labels = map[string]string{}
	}
	l := &Local{
		Name:      name,
		Labels:    maps.Clone(labels),
		server:    &url.URL{Scheme: "https", Host: net.JoinHostPort(host, port)},
		tokenFile: tokenFile,
		now:       now,
		tr: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
			// Upgrades need HTTP/1.1.
			TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 10 * time.Second,
			MaxIdleConnsPerHost: 32,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
	if _, err := l.bearer(); err != nil {
		return nil, err
	}
	return l, nil
}

// Server returns the API server's URL.
func (l *Local) Server() string { return l.server.String() }

// bearer returns the service account token, read again every minute:
// projected tokens are rotated by the kubelet.
func (l *Local) bearer() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if l.token != "" && now.Sub(l.tokenRead) < time.Minute {
		return l.token, nil
	}
	b, err := os.ReadFile(l.tokenFile)
	if err != nil {
		if l.token != "" {
			return l.token, nil
		}
		return "", fmt.Errorf("kubesrv: in-cluster token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("kubesrv: in-cluster token %s is empty or malformed", l.tokenFile)
	}
	l.token, l.tokenRead = tok, now
	return tok, nil
}

func (l *Local) rewrite(pr *httputil.ProxyRequest) {
	g := pr.In.Context().Value(grantKey{}).(*broker.Grant)
	pr.SetURL(l.server)
	h := pr.Out.Header
	stripClientAuth(h)
	h.Set("Impersonate-User", g.Session.KubeUser)
	for _, grp := range g.Session.KubeGroups {
		h.Add("Impersonate-Group", grp)
	}
	if tok, err := l.bearer(); err == nil {
		h.Set("Authorization", "Bearer "+tok)
	}
}
