package store_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/store/storetest"
)

func fill(t *testing.T, s store.Store, kv ...string) {
	t.Helper()
	for i := 0; i < len(kv); i += 2 {
		if err := s.Put(t.Context(), kv[i], []byte(kv[i+1])); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCopy(t *testing.T) {
	ctx := t.Context()
	src := memstore.New()
	defer src.Close()
	fill(t, src, "users/alice", "a", "users/bob", "b", "roles/admin", "r", "devices/1", "", "ca/x509", "key")
	lease, err := src.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Put(ctx, "presence/dev1", []byte("replica-a"), store.WithLease(lease)); err != nil {
		t.Fatal(err)
	}

	t.Run("into an empty store", func(t *testing.T) {
		dst := memstore.New()
		defer dst.Close()
		var calls, last int
		stats, err := store.Copy(ctx, dst, src, store.CopyOptions{Progress: func(done, total int) { calls++; last = done }})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := storetest.Dump(t, dst), "ca/x509=key\ndevices/1=\nroles/admin=r\nusers/alice=a\nusers/bob=b\n"; got != want {
			t.Errorf("destination = %s, want %s", got, want)
		}
		if stats.Total() != 5 || stats.Leased != 1 || stats.Deleted != 0 || stats.Summary() != "ca 1, devices 1, roles 1, users 2" {
			t.Errorf("stats = %+v (%s)", stats, stats.Summary())
		}
		if calls != 5 || last != 5 {
			t.Errorf("progress called %d times, last with %d; want 5 and 5", calls, last)
		}
	})
	t.Run("refuses a non-empty destination", func(t *testing.T) {
		dst := memstore.New()
		defer dst.Close()
		fill(t, dst, "users/mallory", "m")
		_, err := store.Copy(ctx, dst, src, store.CopyOptions{})
		if !errors.Is(err, store.ErrNotEmpty) || !strings.Contains(err.Error(), "holds 1 items") {
			t.Fatalf("err = %v, want ErrNotEmpty saying how many", err)
		}
		if got := storetest.Dump(t, dst); got != "users/mallory=m\n" {
			t.Errorf("a refused copy changed the destination: %s", got)
		}
	})
	t.Run("overwrite makes an equal copy", func(t *testing.T) {
		dst := memstore.New()
		defer dst.Close()
		fill(t, dst, "users/mallory", "m", "users/alice", "old")
		stats, err := store.Copy(ctx, dst, src, store.CopyOptions{Overwrite: true})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := storetest.Dump(t, dst), "ca/x509=key\ndevices/1=\nroles/admin=r\nusers/alice=a\nusers/bob=b\n"; got != want {
			t.Errorf("destination = %s, want %s", got, want)
		}
		if stats.Deleted != 1 {
			t.Errorf("deleted %d, want 1 (mallory)", stats.Deleted)
		}
	})
	t.Run("refuses a destination in use", func(t *testing.T) {
		dst := memstore.New()
		defer dst.Close()
		l, _ := dst.Grant(ctx, time.Minute)
		dst.Put(ctx, "leader/rollouts", []byte("x"), store.WithLease(l))
		if _, err := store.Copy(ctx, dst, src, store.CopyOptions{Overwrite: true}); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Fatalf("err = %v, want the destination in use", err)
		}
	})
}
