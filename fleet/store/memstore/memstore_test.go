package memstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"remoteler.dev/edge/fleet/store"
)

func TestContract(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		run  func(s *Store) error
		want error
	}{
		{"get missing", func(s *Store) error { _, err := s.Get(ctx, "a"); return err }, store.ErrNotFound},
		{"delete missing", func(s *Store) error { return s.Delete(ctx, "a") }, store.ErrNotFound},
		{"create twice", func(s *Store) error {
			if err := s.Create(ctx, "a", []byte("1")); err != nil {
				return err
			}
			return s.Create(ctx, "a", []byte("2"))
		}, store.ErrExists},
		{"cas missing", func(s *Store) error { return s.CompareAndSwap(ctx, "a", nil, []byte("x")) }, store.ErrNotFound},
		{"cas wrong old", func(s *Store) error {
			if err := s.Put(ctx, "a", []byte("1")); err != nil {
				return err
			}
			return s.CompareAndSwap(ctx, "a", []byte("2"), []byte("3"))
		}, store.ErrConflict},
		{"cas right old", func(s *Store) error {
			if err := s.Put(ctx, "a", []byte("1")); err != nil {
				return err
			}
			if err := s.CompareAndSwap(ctx, "a", []byte("1"), []byte("3")); err != nil {
				return err
			}
			v, err := s.Get(ctx, "a")
			if err != nil {
				return err
			}
			if string(v) != "3" {
				return fmt.Errorf("got %q, want %q", v, "3")
			}
			return nil
		}, nil},
		{"cas empty value", func(s *Store) error {
			if err := s.Put(ctx, "a", nil); err != nil {
				return err
			}
			return s.CompareAndSwap(ctx, "a", []byte{}, []byte("x"))
		}, nil},
		{"cancelled context", func(s *Store) error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			_, err := s.Get(c, "a")
			return err
		}, context.Canceled},
		{"closed", func(s *Store) error {
			s.Close()
			_, err := s.List(ctx, "")
			return err
		}, ErrClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.run(New()); !errors.Is(got, tt.want) {
				t.Errorf("got error %v, want %v", got, tt.want)
			}
		})
	}
}

func TestListPrefixOrderAndCopies(t *testing.T) {
	ctx := context.Background()
	s := New()
	for _, k := range []string{"users/b", "roles/x", "users/a", "users", "usersx/c"} {
		if err := s.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	items, err := s.List(ctx, "users/")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, it := range items {
		got = append(got, it.Key)
		it.Value[0] = 'X' // must not change the store
	}
	if want := "[users/a users/b]"; fmt.Sprint(got) != want {
		t.Errorf("got keys %v, want %s", got, want)
	}
	v, _ := s.Get(ctx, "users/a")
	if string(v) != "users/a" {
		t.Errorf("got value %q after changing a listed copy, want %q", v, "users/a")
	}
}

func TestConcurrentCreate(t *testing.T) {
	ctx := context.Background()
	s := New()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 20 {
		wg.Go(func() {
			if err := s.Create(ctx, "k", []byte{byte(i)}); err == nil {
				mu.Lock()
				wins++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Errorf("got %d successful creates, want 1", wins)
	}
}
