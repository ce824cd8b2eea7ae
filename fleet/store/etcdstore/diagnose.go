package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// diagnose dials every endpoint the way the client would (TCP, then the
// TLS handshake, then a short read, where a member refusing the client's
// certificate says so) and returns what went wrong with each, for the
// messages Open logs: the client itself only reports a deadline when no
// member answers.
func diagnose(ctx context.Context, endpoints []string, tlsc *tls.Config) string {
	var out []string
	for _, ep := range endpoints {
		if err := probe(ctx, ep, tlsc); err != nil {
			out = append(out, fmt.Sprintf("%s: %v", ep, err))
		}
	}
	if len(out) == 0 {
		return "every endpoint accepts connections (no quorum? check that most members run and see each other)"
	}
	return strings.Join(out, "; ")
}

func probe(ctx context.Context, endpoint string, tlsc *tls.Config) error {
	host := endpoint
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		host = u.Host
	}
	// Open's context may have ended already: diagnose the last attempt
	// anyway.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	defer conn.Close()
	if tlsc == nil {
		return nil
	}
	cfg := tlsc.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName, _, _ = net.SplitHostPort(host)
	}
	cfg.NextProtos = []string{"h2"}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS: %w", err)
	}
	// With TLS 1.3 a refused client certificate shows on the first read.
	tc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := tc.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			if strings.Contains(err.Error(), "bad certificate") || strings.Contains(err.Error(), "certificate required") {
				return fmt.Errorf("TLS: etcd refused the client certificate (none given, or not signed by a CA etcd trusts): %w", err)
			}
			return fmt.Errorf("TLS: %w", err)
		}
	}
	return nil
}
