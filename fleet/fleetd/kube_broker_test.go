package fleetd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/proto"
)

// fakeOpener stands in for the tunnel server (no device here); it checks,
// when asked to open, that the fleet's record of the stream is already
// committed.
type fakeOpener struct {
	events *audit.Log
	fail   error
	seen   error // what the check found when Open was called
}

func (o *fakeOpener) Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	_, o.seen = o.events.Brokered(deviceID, h.SessionID)
	if o.fail != nil {
		return nil, o.fail
	}
	a, b := net.Pipe()
	go func() { b.Close() }()
	return a, nil
}

func TestKubeStreamsAreRecordedBeforeTheyOpen(t *testing.T) {
	events, err := audit.Open(audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	fake := &fakeOpener{events: events}
	o := &brokeredOpener{tunnels: fake, events: events, cluster: "fleet", log: slog.New(slog.DiscardHandler)}
	h := &proto.StreamHeader{Service: proto.ServiceKube, SessionID: "k1",
		Identity: proto.Identity{User: "alice", KubeUser: "alice", KubeGroups: []string{"dev"}}}
	conn, err := o.Open(context.Background(), "dev-1", h)
	if err != nil {
		t.Fatal(err)
	}
	if fake.seen != nil {
		t.Errorf("when the stream was opened, the fleet's record of it was not there: %v", fake.seen)
	}
	conn.Close()
	conn.Close()
	recs, _, _ := events.Search(context.Background(), audit.Query{Session: "k1"})
	if len(recs) != 2 || recs[0].Event.Type != proto.EventSessionStart || recs[1].Event.Type != proto.EventSessionEnd ||
		recs[0].Event.User != "alice" || recs[0].Event.Device != "dev-1" {
		t.Errorf("events of the stream: %+v, want its session.start and one session.end", recs)
	}

	// A stream the device does not take ends recorded as a failure.
	fake.fail = errors.New("device offline")
	h.SessionID = "k2"
	if _, err := o.Open(context.Background(), "dev-1", h); err == nil {
		t.Fatal("a failed open succeeded")
	}
	recs, _, _ = events.Search(context.Background(), audit.Query{Session: "k2"})
	if len(recs) != 2 || recs[1].Event.Outcome != proto.OutcomeFailure {
		t.Errorf("events of the failed stream: %+v", recs)
	}

	// No audit log, no stream.
	events.Close()
	fake.fail = nil
	h.SessionID = "k3"
	if _, err := o.Open(context.Background(), "dev-1", h); err == nil {
		t.Error("a stream was opened that the audit log could not record")
	}
}
