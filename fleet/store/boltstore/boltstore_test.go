package boltstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
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

// op is one step of a contract case. want is the value Get must return when
// do is "get" and wantErr is nil.
type op struct {
	do       string // get, put, create, cas, delete
	key      string
	val, old string
	want     string
	wantErr  error
}

func (o op) run(ctx context.Context, s store.Store) (string, error) {
	switch o.do {
	case "get":
		v, err := s.Get(ctx, o.key)
		return string(v), err
	case "put":
		return "", s.Put(ctx, o.key, []byte(o.val))
	case "create":
		return "", s.Create(ctx, o.key, []byte(o.val))
	case "cas":
		return "", s.CompareAndSwap(ctx, o.key, []byte(o.old), []byte(o.val))
	case "delete":
		return "", s.Delete(ctx, o.key)
	}
	panic("unknown op " + o.do)
}

func TestContract(t *testing.T) {
	tests := []struct {
		name string
		ops  []op
	}{
		{"get missing", []op{
			{do: "get", key: "a", wantErr: store.ErrNotFound},
		}},
		{"put then get", []op{
			{do: "put", key: "a", val: "1"},
			{do: "get", key: "a", want: "1"},
		}},
		{"put replaces", []op{
			{do: "put", key: "a", val: "1"},
			{do: "put", key: "a", val: "2"},
			{do: "get", key: "a", want: "2"},
		}},
		{"empty value is not missing", []op{
			{do: "put", key: "a", val: ""},
			{do: "get", key: "a", want: ""},
			{do: "create", key: "a", val: "x", wantErr: store.ErrExists},
			{do: "cas", key: "a", old: "", val: "1"},
			{do: "get", key: "a", want: "1"},
		}},
		{"create new", []op{
			{do: "create", key: "a", val: "1"},
			{do: "get", key: "a", want: "1"},
		}},
		{"create existing", []op{
			{do: "put", key: "a", val: "1"},
			{do: "create", key: "a", val: "2", wantErr: store.ErrExists},
			{do: "get", key: "a", want: "1"},
		}},
		{"cas match", []op{
			{do: "put", key: "a", val: "1"},
			{do: "cas", key: "a", old: "1", val: "2"},
			{do: "get", key: "a", want: "2"},
		}},
		{"cas mismatch", []op{
			{do: "put", key: "a", val: "1"},
			{do: "cas", key: "a", old: "0", val: "2", wantErr: store.ErrConflict},
			{do: "get", key: "a", want: "1"},
		}},
		{"cas missing", []op{
			{do: "cas", key: "a", old: "", val: "2", wantErr: store.ErrNotFound},
			{do: "get", key: "a", wantErr: store.ErrNotFound},
		}},
		{"delete existing", []op{
			{do: "put", key: "a", val: "1"},
			{do: "delete", key: "a"},
			{do: "get", key: "a", wantErr: store.ErrNotFound},
			{do: "create", key: "a", val: "3"},
			{do: "get", key: "a", want: "3"},
		}},
		{"delete missing", []op{
			{do: "delete", key: "a", wantErr: store.ErrNotFound},
		}},
		{"keys are independent", []op{
			{do: "put", key: "a", val: "1"},
			{do: "put", key: "a/b", val: "2"},
			{do: "delete", key: "a"},
			{do: "get", key: "a/b", want: "2"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTemp(t)
			ctx := t.Context()
			for i, o := range tt.ops {
				got, err := o.run(ctx, s)
				if !errors.Is(err, o.wantErr) || (o.wantErr == nil && err != nil) {
					t.Fatalf("step %d %s %q: err = %v, want %v", i, o.do, o.key, err, o.wantErr)
				}
				if o.do == "get" && err == nil && got != o.want {
					t.Fatalf("step %d get %q = %q, want %q", i, o.key, got, o.want)
				}
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	s, _ := openTemp(t)
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		o       op
		wantErr error
	}{
		{"empty key get", t.Context(), op{do: "get"}, nil},
		{"empty key put", t.Context(), op{do: "put", val: "1"}, nil},
		{"empty key create", t.Context(), op{do: "create", val: "1"}, nil},
		{"empty key cas", t.Context(), op{do: "cas", val: "1"}, nil},
		{"empty key delete", t.Context(), op{do: "delete"}, nil},
		{"canceled get", canceled, op{do: "get", key: "a"}, context.Canceled},
		{"canceled put", canceled, op{do: "put", key: "a", val: "1"}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.o.run(tt.ctx, s)
			if err == nil {
				t.Fatalf("%s: err = nil, want an error", tt.o.do)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: err = %v, want %v", tt.o.do, err, tt.wantErr)
			}
		})
	}
	if _, err := s.List(canceled, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("List(canceled): err = %v, want %v", err, context.Canceled)
	}
}

func TestList(t *testing.T) {
	s, _ := openTemp(t)
	ctx := t.Context()
	// Put in an order unlike key order.
	keys := []string{"users/bob", "roles/admin", "users/alice", "users", "usersx/z", "users/alice/x", "a"}
	for _, k := range keys {
		if err := s.Put(ctx, k, []byte("v:"+k)); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a", "roles/admin", "users", "users/alice", "users/alice/x", "users/bob", "usersx/z"}},
		{"users/", []string{"users/alice", "users/alice/x", "users/bob"}},
		{"users", []string{"users", "users/alice", "users/alice/x", "users/bob", "usersx/z"}},
		{"users/alice", []string{"users/alice", "users/alice/x"}},
		{"roles/", []string{"roles/admin"}},
		{"tokens/", nil},
		{"zzz", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("prefix %q", tt.prefix), func(t *testing.T) {
			items, err := s.List(ctx, tt.prefix)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			var got []string
			for _, it := range items {
				got = append(got, it.Key)
				if want := "v:" + it.Key; string(it.Value) != want {
					t.Errorf("value of %q = %q, want %q", it.Key, it.Value, want)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("List(%q) = %q, want %q", tt.prefix, got, tt.want)
			}
		})
	}
}

func TestValuesAreCopies(t *testing.T) {
	s, _ := openTemp(t)
	ctx := t.Context()
	in := []byte("value")
	if err := s.Put(ctx, "k", in); err != nil {
		t.Fatal(err)
	}
	in[0] = 'X' // the store must not keep the caller's slice
	got, err := s.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	got[0] = 'Y' // nor hand out its own
	items, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	items[0].Value[1] = 'Z'
	// Write more so bbolt reuses pages that returned slices might alias.
	for i := range 100 {
		if err := s.Put(ctx, "fill/"+strconv.Itoa(i), make([]byte, 512)); err != nil {
			t.Fatal(err)
		}
	}
	again, err := s.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != "value" {
		t.Errorf("Get after changing copies = %q, want %q", again, "value")
	}
	if string(got) != "Yalue" || string(items[0].Value) != "vZlue" {
		t.Errorf("returned copies changed under the caller: %q, %q", got, items[0].Value)
	}
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

func TestConcurrentCAS(t *testing.T) {
	s, _ := openTemp(t)
	ctx := t.Context()
	const workers, each = 8, 25
	if err := s.Create(ctx, "counter", []byte("0")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range each {
				if err := increment(ctx, s, "counter"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	v, err := s.Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(v), strconv.Itoa(workers*each); got != want {
		t.Errorf("counter = %s, want %s", got, want)
	}
}

// increment adds one to the decimal number at key with a CAS retry loop.
func increment(ctx context.Context, s store.Store, key string) error {
	for {
		old, err := s.Get(ctx, key)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(string(old))
		if err != nil {
			return err
		}
		err = s.CompareAndSwap(ctx, key, old, []byte(strconv.Itoa(n+1)))
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return err
	}
}
