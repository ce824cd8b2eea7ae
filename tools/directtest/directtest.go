// Package directtest starts the two ends of a direct node's connections
// on loopback for tests: the node's listener (firmware/direct) with a
// device certificate from a fleet's CA (fleet/ca), taking only that
// fleet's client certificate, and the fleet's dialler (fleet/direct). Both
// stop when the test ends. Only tests import it.
package directtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"remoteler.dev/edge/firmware/direct"
	"remoteler.dev/edge/fleet/ca"
	fleetdirect "remoteler.dev/edge/fleet/direct"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

// FleetCA is a new fleet's CA, called name, on an in-memory store.
func FleetCA(t testing.TB, name string) *ca.Authority {
	t.Helper()
	auth, err := ca.LoadOrCreate(context.Background(), memstore.New(), name, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return auth
}

// Header is the header of an SSH stream of session for alice as root.
func Header(session string) *proto.StreamHeader {
	return &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: session, Identity: proto.Identity{User: "alice", Login: "root"}}
}

// NewID returns a new device ID.
func NewID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// DeviceCert issues device id's certificate from auth for a new key, as a
// device's join does. Its Leaf is set.
func DeviceCert(t testing.TB, auth *ca.Authority, id string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	der, err := auth.SignDeviceX509(csr, id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// FleetOnly is a node's TLS config with cert that takes only the client
// certificate of the fleet auth is the CA of (kind "fleet").
func FleetOnly(auth *ca.Authority, cert tls.Certificate) func() (*tls.Config, error) {
	return func() (*tls.Config, error) {
		return &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    auth.CertPool(),
			VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
				if ous := chains[0][0].Subject.OrganizationalUnit; !slices.Equal(ous, []string{proto.FleetOU}) {
					return fmt.Errorf("directtest: a %v certificate is not the fleet's", ous)
				}
				return nil
			},
		}, nil
	}
}

// StartNode listens with cfg (on a free loopback port unless cfg.Listen
// says where; logging to t unless cfg.Logger is set) and serves until the
// test ends, which waits for Serve to return.
func StartNode(t testing.TB, cfg direct.Config) *direct.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = logtest.Logger(t)
	}
	srv, err := direct.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	})
	return srv
}

// Dialer is the fleet's dialler for auth's fleet, on a loopback socket,
// closed when the test ends. devs may be nil when the test calls Open
// itself.
func Dialer(t testing.TB, auth *ca.Authority, devs fleetdirect.Devices) *fleetdirect.Dialer {
	t.Helper()
	d := fleetdirect.New(fleetdirect.Config{CA: auth, Devices: devs, Logger: logtest.Logger(t),
		ListenPacket: func() (net.PacketConn, error) { return net.ListenPacket("udp", "127.0.0.1:0") }})
	t.Cleanup(func() { d.Close() })
	return d
}

// Echo is a node's Handle that sends back what it reads until the fleet
// half-closes, then closes.
func Echo(_ context.Context, _ *proto.StreamHeader, conn net.Conn) {
	defer conn.Close()
	io.Copy(conn, conn)
}
