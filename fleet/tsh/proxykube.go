package tsh

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/fleet/kubeconfig"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/kubestatus"
	"remoteler.dev/edge/proto/kubewire"
	"remoteler.dev/edge/proto/printable"
)

func (r *runner) proxyKubeCommand() *cobra.Command {
	var port int
	var as, asGroups, namespace string
	c := &cobra.Command{
		Use:   "kube NAME",
		Short: "Serve a device's Kubernetes API on a local port, in sessions that survive a fleet replica's loss",
		Long: `Serve the Kubernetes API of the device NAME on https://127.0.0.1:PORT, and
write a kubeconfig for it (its path is printed: export KUBECONFIG=PATH).
Each of kubectl's connections is a session that tsh holds, as tsh ssh's
are: if the fleet replica it crosses dies, tsh resumes it through another,
and a kubectl exec, a port-forward or a watch goes on without losing a
byte. The device audits every request and records kubectl exec -it and
attach -it terminals. The kubeconfig holds a certificate made for this
proxy alone, and is removed when it stops.

It reaches the clusters of devices that hold a tunnel to this fleet (for
the fleet's own cluster, a direct node's or a leaf cluster's, use tsh kube
login). On one fleetd, the sessions outlive a restart of fleetd. Ctrl-C
stops it.`,
		Example: `  tsh proxy kube pi-1 --port=8443 &
  export KUBECONFIG=...   # the path it printed
  kubectl exec -it web -- sh`,
		Args:              cli.ExactArgs(1, "the cluster's NAME (tsh kube ls lists them)"),
		ValidArgsFunction: cli.CompleteArgs(1, r.completeClusters),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.proxyKube(cmd.Context(), args[0], port, as, asGroups, namespace)
		},
	}
	c.Flags().IntVar(&port, "port", 0, "local port to listen on, on 127.0.0.1 (default: a free one, printed)")
	c.Flags().StringVar(&as, "as", "", "the Kubernetes user to act as, when your roles allow several (default: the only one, or your fleet name)")
	c.Flags().StringVar(&asGroups, "as-group", "", "act in only these of your Kubernetes groups, comma-separated (default: all of them)")
	c.Flags().StringVar(&namespace, "namespace", "", "the kubeconfig's default namespace (default: the cluster's default)")
	return c
}

// proxyKube runs "tsh proxy kube NAME": a local TLS endpoint for kubectl
// whose every connection is a user-held session to the device's
// Kubernetes API (client.ConnectKube), and a kubeconfig that reaches it.
// Only a holder of that kubeconfig's certificate (made now, for this
// proxy) is served.
func (r *runner) proxyKube(ctx context.Context, name string, port int, as, asGroups, namespace string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
		return fmt.Errorf("proxy kube: %q is not a cluster name (tsh kube ls lists them)", name)
	}
	st, err := r.site("")
	if err != nil {
		return err
	}
	if st.leaf != "" {
		return fmt.Errorf("proxy kube: reaches clusters of this fleet only; you are in %s (tsh login %s)", st.leaf, st.p.Cluster)
	}
	c, err := r.client(st)
	if err != nil {
		return err
	}
	defer c.Close()
	var groups []string
	if asGroups != "" {
		groups = strings.Split(asGroups, ",")
	}
	pki, err := newProxyPKI(r.stdio.Now())
	if err != nil {
		return fmt.Errorf("proxy kube: %w", err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("proxy kube: listen: %w", err)
	}
	defer ln.Close()
	// Not in the profile's directory: its name has the fleet's port, and
	// a colon cannot be in KUBECONFIG, a list of paths.
	home, err := r.home()
	if err != nil {
		return err
	}
	_, lport, _ := net.SplitHostPort(ln.Addr().String())
	path := filepath.Join(home, "kube-proxy", name+"-"+lport+".yaml")
	if err := kubeconfig.WriteStandalone(path, kubeconfig.Standalone{
		Name: name + "-via-tsh-proxy", Server: "https://" + ln.Addr().String(), Namespace: namespace,
		CA: pki.caPEM, Cert: pki.clientPEM, Key: pki.clientKey,
	}); err != nil {
		return fmt.Errorf("proxy kube: %w", err)
	}
	defer os.Remove(path)
	fmt.Fprintf(r.stdio.Out, "Serving the Kubernetes API of %s on https://%s; kubectl's connections are sessions tsh holds, which survive the loss of a fleet replica.\n", name, ln.Addr())
	fmt.Fprintf(r.stdio.Out, "Use it with:\n  export KUBECONFIG=%s\nCtrl-C stops.\n", path)
	p := &kubeProxy{r: r, c: c, device: name, as: as, groups: groups, tls: pki.serverTLS()}
	return p.serve(ctx, ln)
}

// kubeProxy serves kubectl's connections for tsh proxy kube.
type kubeProxy struct {
	r      *runner
	c      *client.Client
	device string
	as     string
	groups []string
	tls    *tls.Config
}

// serve takes connections on ln until ctx ends, then closes them.
func (p *kubeProxy) serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("proxy kube: %w", err)
		}
		wg.Go(func() { p.serveConn(ctx, conn) })
	}
}

// serveConn serves one kubectl connection: it checks kubectl's
// certificate, opens a session held here to the device's Kubernetes API,
// and copies the bytes both ways until either side ends.
func (p *kubeProxy) serveConn(ctx context.Context, raw net.Conn) {
	tc := tls.Server(raw, p.tls)
	defer tc.Close()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		return // not the kubeconfig's holder, or not TLS
	}
	kc, err := p.c.ConnectKube(ctx, p.device, p.as, p.groups, 0)
	if err != nil {
		p.refuse(tc, err)
		return
	}
	client.OnResume(kc, func(msg string) {
		fmt.Fprintf(p.r.stdio.Err, "tsh: %s: %s\n", p.device, printable.Escape(msg))
	})
	client.OnEnd(kc, func(reason string) { p.r.printEnd(p.device, reason) })
	stop := context.AfterFunc(ctx, func() { kc.Close() })
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(kc, tc)
		if cw, ok := kc.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	io.Copy(tc, kc)
	kc.Close()
	tc.Close()
	<-done
}

// refuse answers kubectl's first request on conn with why the session
// could not start, as a Kubernetes Status (kubectl prints it), and says it
// here too.
func (p *kubeProxy) refuse(conn net.Conn, err error) {
	fmt.Fprintf(p.r.stdio.Err, "tsh: %s: %s\n", p.device, printable.Escape(err.Error()))
	code := http.StatusBadGateway
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case api.CodeForbidden:
			code = http.StatusForbidden
		case api.CodeUnauthorized:
			code = http.StatusUnauthorized
		case api.CodeNotFound:
			code = http.StatusNotFound
		case api.CodeBadRequest:
			code = http.StatusBadRequest
		case api.CodeDeviceOffline, api.CodeUnavailable, api.CodeBusy:
			code = http.StatusServiceUnavailable
		}
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	req, rerr := http.ReadRequest(bufio.NewReader(conn))
	if rerr != nil {
		return
	}
	// As the fleet answers (kubewire.WriteStatus): a Status for a
	// resource, text for discovery, which client-go reads only as text.
	body, ctype := kubestatus.JSON(code, err.Error()), "application/json"
	if !kubewire.ParseRequest(req.Method, req.URL).IsResource {
		body, ctype = []byte(err.Error()+"\n"), "text/plain; charset=utf-8"
	}
	fmt.Fprintf(conn, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), ctype, len(body), body)
}

// proxyPKI is the certificates of one tsh proxy kube: a CA made for it
// alone, the server's certificate for 127.0.0.1, and kubectl's.
type proxyPKI struct {
	caPEM                []byte
	server               tls.Certificate
	clientPEM, clientKey []byte
	pool                 *x509.CertPool
}

// newProxyPKI makes the proxy's certificates, valid for 30 days from now.
func newProxyPKI(now time.Time) (*proxyPKI, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	notBefore, notAfter := now.Add(-time.Minute), now.Add(30*24*time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "tsh proxy kube"}, NotBefore: notBefore, NotAfter: notAfter,
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	issue := func(tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial(), notBefore, notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		return der, key, err
	}
	srvDER, srvKey, err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "127.0.0.1"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return nil, err
	}
	cliDER, cliKey, err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "kubectl"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, err
	}
	cliKeyDER, err := x509.MarshalECPrivateKey(cliKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &proxyPKI{
		caPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		server:    tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey},
		clientPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cliDER}),
		clientKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: cliKeyDER}),
		pool:      pool,
	}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// serverTLS is the proxy's TLS: its certificate, and kubectl's required.
// HTTP/1.1 only: the device's API proxy and upgrades (exec) speak it.
func (k *proxyPKI) serverTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{k.server}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: k.pool,
		NextProtos: []string{"http/1.1"}, MinVersion: tls.VersionTLS12,
	}
}
