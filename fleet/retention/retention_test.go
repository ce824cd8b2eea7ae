package retention

import (
	"context"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
)

func TestPolicy(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	a := &Service{Store: st, Now: func() time.Time { return now }}
	b := &Service{Store: st, Now: func() time.Time { return now }} // another replica
	for _, s := range []*Service{a, b} {
		if got := s.Current(); got != api.DefaultRetention() {
			t.Errorf("before any is set: %+v, want the defaults", got)
		}
	}
	p := api.DefaultRetention()
	p.AuditDeviceQuota = 5 << 20
	if err := a.Set(ctx, p); err != nil {
		t.Fatal(err)
	}
	if got := a.Current(); got != p {
		t.Errorf("on the replica that set it: %+v", got)
	}
	if got := b.Current(); got == p {
		t.Error("the other replica's cache did not last") // its cached copy is still good for cacheFor
	}
	now = now.Add(cacheFor)
	if got := b.Current(); got != p {
		t.Errorf("the other replica after its cache expired: %+v", got)
	}
	p.MinFreeBytes = -1
	if err := a.Set(ctx, p); err == nil {
		t.Error("a negative floor was accepted")
	}
}
