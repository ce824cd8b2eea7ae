package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// peer is a running Syncthing with its GUI on HTTPS on loopback.
type peer struct {
	URL  string // the GUI, e.g. https://127.0.0.1:PORT/
	SPKI string // base64 SHA-256 of the GUI certificate's public key

	cmd  *exec.Cmd
	out  *bytes.Buffer // its log, shown when it fails
	done chan error
}

// startSyncthing starts bin with a new home under dir: a fresh device
// with no folder and no other device (what a first start shows), its
// global and local discovery, relays and NAT traversal off (there is no
// network here), its GUI on https://127.0.0.1:PORT.
func startSyncthing(ctx context.Context, bin, dir string) (*peer, error) {
	home := filepath.Join(dir, "home")
	gen := exec.CommandContext(ctx, bin, "generate", "--home="+home, "--no-default-folder", "--skip-port-probing")
	if out, err := gen.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("syncthing generate: %w: %s", err, out)
	}
	cfgPath := filepath.Join(home, "config.xml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("syncthing config: %w", err)
	}
	s := string(cfg)
	for _, opt := range []string{"globalAnnounceEnabled", "localAnnounceEnabled", "relaysEnabled", "natEnabled", "crashReportingEnabled"} {
		s = strings.ReplaceAll(s, "<"+opt+">true</"+opt+">", "<"+opt+">false</"+opt+">")
	}
	guiPort, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	syncPort, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	s = strings.ReplaceAll(s, "<listenAddress>default</listenAddress>", "<listenAddress>tcp://127.0.0.1:"+strconv.Itoa(syncPort)+"</listenAddress>")
	if err := os.WriteFile(cfgPath, []byte(s), 0o600); err != nil {
		return nil, fmt.Errorf("syncthing config: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(guiPort))
	p := &peer{URL: "https://" + addr + "/", out: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, "serve", "--home="+home, "--gui-address=https://"+addr,
		"--no-browser", "--no-restart", "--no-upgrade")
	p.cmd.Env = append(os.Environ(), "STNOUPGRADE=1", "STNORESTART=1")
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start syncthing: %w", err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	if err := p.waitReady(ctx, filepath.Join(home, "https-cert.pem")); err != nil {
		p.stop()
		return nil, fmt.Errorf("%w; its log:\n%s", err, p.out.String())
	}
	return p, nil
}

// waitReady waits, a minute at most, for the GUI to answer and reads the key it presents from the certificate Syncthing
// wrote.
func (p *peer) waitReady(ctx context.Context, certPath string) error {
	// The readiness check only: the browser pins the certificate's key.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // a readiness probe on loopback
	}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(time.Minute)
	for {
		select {
		case err := <-p.done:
			p.done <- err
			return fmt.Errorf("syncthing exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // polling the GUI
		}
		resp, err := client.Get(p.URL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			err = errors.New(resp.Status)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("syncthing's GUI did not answer at %s in a minute (last: %v)", p.URL, err)
		}
	}
	b, err := os.ReadFile(certPath)
	if err != nil {
		return fmt.Errorf("syncthing's GUI certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return errors.New("syncthing's GUI certificate: no PEM block")
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("syncthing's GUI certificate: %w", err)
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	p.SPKI = base64.StdEncoding.EncodeToString(sum[:])
	return nil
}

// stop ends Syncthing: SIGTERM, then SIGKILL after 10 s.
func (p *peer) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}
