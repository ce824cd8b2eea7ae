package fleetd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/client/clienttest"
	"remoteler.dev/edge/fleet/store/memstore"
)

// TestTicketKeysRotate: ticket keys rotate daily, the previous key stays to
// open tickets, the next is known a day ahead, and replicas (and restarts)
// sharing a store hold the same keys.
func TestTicketKeysRotate(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	a, err := loadQUICKeys(ctx, st, t0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := loadQUICKeys(ctx, st, t0.Add(time.Minute)) // another replica, or a restart
	if err != nil {
		t.Fatal(err)
	}
	if a.Reset != b.Reset || a.Token != b.Token || a.Link != b.Link || len(a.Tickets) != 2 || len(b.Tickets) != 2 || a.Tickets[0] != b.Tickets[0] || a.Tickets[1] != b.Tickets[1] {
		t.Fatalf("two loads of one store differ:\n%+v\n%+v", a, b)
	}
	first := a.active(t0)
	if len(first) != 2 {
		t.Fatalf("at the start: %d active keys, want the current and the next", len(first))
	}
	day1, err := loadQUICKeys(ctx, st, t0.Add(ticketKeyPeriod+time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	after := day1.active(t0.Add(ticketKeyPeriod + time.Hour))
	if len(after) != 3 || after[0] != first[1] || after[2] != first[0] {
		t.Fatalf("a day later the keys are %x, want [the old next, a new next, the old current]", after)
	}
	day3, err := loadQUICKeys(ctx, st, t0.Add(3*ticketKeyPeriod+time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(day3.Tickets) != 3 {
		t.Errorf("three days on the store holds %d ticket keys, want 3", len(day3.Tickets))
	}
	for _, k := range day3.active(t0.Add(3*ticketKeyPeriod + time.Hour)) {
		if k == first[0] || k == first[1] {
			t.Errorf("three days on, a key of the first day is still active")
		}
	}
}

// TestTicketKeysUpgradeKeepsTheOldKey: a store written by a fleetd of the
// earlier revision (one ticket key, no link key) is upgraded in place, and
// the old key stays current so that agents' tickets still open.
func TestTicketKeysUpgradeKeepsTheOldKey(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	var old quicKeys
	rand.Read(old.Ticket[:])
	b, _ := json.Marshal(&old)
	st.Create(ctx, quicKeysKey, b)
	k, err := loadQUICKeys(ctx, st, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if k.Link == ([32]byte{}) {
		t.Error("no link key after the upgrade")
	}
	if act := k.active(time.Now()); len(act) == 0 || act[0] != old.Ticket {
		t.Errorf("the old ticket key is not the current one after the upgrade")
	}
}

// TestTicketsResumeAcrossOneRotation: a TLS client resumes (no certificate
// exchange) with a ticket sealed before one rotation, and not with one
// sealed three rotations ago; the holder's keys change while the server's
// config (and clones of it) stay the same.
func TestTicketsResumeAcrossOneRotation(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	t0 := time.Now()
	holder := newTicketKeys()
	setAt := func(at time.Time) {
		t.Helper()
		k, err := loadQUICKeys(ctx, st, at)
		if err != nil {
			t.Fatal(err)
		}
		holder.set(k.active(at))
	}
	setAt(t0)
	ca := clienttest.NewCA(t, "test ca")
	cert := ca.KeyPair(t, "fleet.test", time.Now().Add(time.Hour), "fleet.test")
	srv := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	holder.install(srv)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cache := tls.NewLRUClientSessionCache(1)
	dial := func() bool {
		t.Helper()
		c1, c2 := net.Pipe()
		defer c1.Close()
		defer c2.Close()
		go func() {
			s := tls.Server(c2, srv.Clone())
			if s.Handshake() == nil {
				s.Write([]byte{1}) // the client reads the session ticket with it
			}
		}()
		c := tls.Client(c1, &tls.Config{RootCAs: pool, ServerName: "fleet.test", ClientSessionCache: cache, MinVersion: tls.VersionTLS13})
		if err := c.Handshake(); err != nil {
			t.Fatal(err)
		}
		c.Read(make([]byte, 1))
		return c.ConnectionState().DidResume
	}
	if dial() {
		t.Fatal("the first connection resumed")
	}
	if !dial() {
		t.Fatal("a second connection with the same keys did not resume")
	}
	setAt(t0.Add(ticketKeyPeriod + time.Hour))
	if !dial() {
		t.Error("a ticket sealed before one rotation was not accepted")
	}
	// That connection got a ticket under the new key. Three days on, that
	// key is gone too.
	setAt(t0.Add(4*ticketKeyPeriod + time.Hour))
	if dial() {
		t.Error("a ticket sealed three rotations ago was accepted")
	}
}
