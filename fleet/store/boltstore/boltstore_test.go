package boltstore

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"go.uber.org/goleak"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
	"remoteler.dev/edge/fleet/store/storetest"
	"remoteler.dev/edge/tools/logtest"
)

// openTemp opens a store in a fresh temp dir and closes it at cleanup.
func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.db")
	s, err := Open(path, Options{Logger: logtest.Logger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, path
}

const (
	testQueue   = 64
	testHistory = 128
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestContract(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) store.Store {
			s, err := Open(filepath.Join(t.TempDir(), "fleet.db"), Options{
				Logger: logtest.Logger(t), Watch: hub.Options{Queue: testQueue, History: testHistory},
			})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			return s
		},
		WatchQueue: testQueue,
		Forget:     storetest.ForgetByWriting(testHistory),
	})
}

func TestReopenKeepsData(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "fleet.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ctx := t.Context()
	for _, k := range []string{"b", "a", "c"} {
		if err := s.Put(ctx, k, []byte(k+k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("file mode = %v, want %v", got, os.FileMode(0o600))
	}

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	items, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.Key+"="+string(it.Value))
	}
	if want := []string{"a=aa", "b=bb", "c=cc"}; !slices.Equal(got, want) {
		t.Errorf("after reopen List = %q, want %q", got, want)
	}
}

func TestSecondOpenFails(t *testing.T) {
	_, path := openTemp(t)
	const timeout = 200 * time.Millisecond
	start := time.Now()
	s2, err := Open(path, Options{LockTimeout: timeout, Logger: logtest.Logger(t)})
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a locked file succeeded, want an error")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("err = %v, want it to wrap ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "in use by another fleetd") {
		t.Errorf("err = %q, want it to say the data dir is in use by another fleetd", err)
	}
	// Generous slack for a loaded machine; the point is that it does not
	// wait forever.
	if elapsed > timeout+5*time.Second {
		t.Errorf("second Open took %v, want about %v", elapsed, timeout)
	}
}

// TestLeasesEndWithTheProcess checks that leased keys do not outlive the
// process that granted their lease: Close deletes them, and Open deletes
// those a killed process left in the file; the revision only grows.
func TestLeasesEndWithTheProcess(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "fleet.db")

	// A process that stops with Close.
	s, err := Open(path, Options{Logger: logtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "presence/a", l)
	mustPut(t, s, "kept", nil)
	_, rev1, _ := s.ListRevision(ctx, "")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	default:
		t.Error("lease Done not closed by Close")
	}
	s, err = Open(path, Options{Logger: logtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, s, "after Close and Open", "kept")
	_, rev2, _ := s.ListRevision(ctx, "")
	if rev2 <= rev1 {
		t.Errorf("revision after reopening = %d, want above %d (it only grows)", rev2, rev1)
	}

	// A process killed with leased keys in the file: simulated by
	// writing the keys as a live lease does and copying the file before
	// Close deletes them.
	l2, err := s.Grant(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "presence/b", l2)
	mustPut(t, s, "presence/c", l2)
	crashed := filepath.Join(t.TempDir(), "crashed.db")
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(crashed, 0o600) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(crashed, Options{Logger: logtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkKeys(t, s, "after a crash and Open", "kept")
}

func mustPut(t *testing.T, s *Store, key string, l store.Lease) {
	t.Helper()
	var opts []store.WriteOption
	if l != nil {
		opts = append(opts, store.WithLease(l))
	}
	if err := s.Put(t.Context(), key, []byte("v"), opts...); err != nil {
		t.Fatal(err)
	}
}

func checkKeys(t *testing.T, s *Store, when string, want ...string) {
	t.Helper()
	items, err := s.List(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.Key)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: keys %q, want %q", when, got, want)
	}
}
