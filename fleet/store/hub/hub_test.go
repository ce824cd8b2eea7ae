package hub

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"remoteler.dev/edge/fleet/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func put(key string, rev int64) store.Event {
	return store.Event{Kind: store.EventPut, Key: key, Value: []byte(key), Revision: rev}
}

func recv(t *testing.T, ch <-chan store.Event) (store.Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(time.Minute):
		t.Fatal("no event and no close within a minute")
	}
	return store.Event{}, false
}

// TestHistoryKeepsWholeRevisions evicts part of a revision that changed
// several keys: a watcher that needs the evicted part must resync; one
// that has the whole revision gets only what follows.
func TestHistoryKeepsWholeRevisions(t *testing.T) {
	h := New(1, Options{History: 3})
	defer h.Close()
	h.Publish(put("a", 2))
	h.Publish(put("b", 3), put("c", 3), put("d", 3)) // a lease's end, say
	h.Publish(put("e", 4))                           // evicts a and b
	tests := []struct {
		name   string
		after  int64
		want   []string
		resync bool
	}{
		{"before the history", 1, nil, true},
		{"inside a partly evicted revision", 2, nil, true},
		{"after it", 3, []string{"e"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ch, err := h.Watch(t.Context(), "", tt.after)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range tt.want {
				if ev, _ := recv(t, ch); ev.Key != k {
					t.Fatalf("got %v, want %s", ev, k)
				}
			}
			if tt.resync {
				ev, ok := recv(t, ch)
				if !ok || ev.Kind != store.EventResync || !errors.Is(ev.Err, ErrCompacted) {
					t.Fatalf("got %v (open %v), want a resync for compacted history", ev, ok)
				}
				if _, ok := recv(t, ch); ok {
					t.Fatal("channel open after the resync")
				}
			}
		})
	}
}

// TestCloseWithBlockedWatcher closes a hub whose watcher never reads, with
// a resync pending: Close returns and the channel closes.
func TestCloseWithBlockedWatcher(t *testing.T) {
	h := New(1, Options{Queue: 2})
	ch, err := h.Watch(t.Context(), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		h.Publish(put("k", int64(i+2)))
	}
	h.Close()
	for {
		ev, ok := recv(t, ch)
		if !ok {
			break
		}
		if ev.Kind == store.EventPut && ev.Revision > 3 {
			t.Errorf("delivered %v after the queue of 2 overflowed", ev)
		}
	}
	if _, err := h.Watch(t.Context(), "", 0); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Watch after Close: err = %v, want ErrClosed", err)
	}
}

// TestWatchersGetTheirOwnValues checks that one watcher changing an
// event's value does not change another's.
func TestWatchersGetTheirOwnValues(t *testing.T) {
	h := New(1, Options{})
	defer h.Close()
	a, _ := h.Watch(t.Context(), "", 0)
	b, _ := h.Watch(t.Context(), "", 0)
	h.Publish(put("k", 2))
	ea, _ := recv(t, a)
	ea.Value[0] = 'X'
	if eb, _ := recv(t, b); string(eb.Value) != "k" {
		t.Errorf("the other watcher's value = %q, want %q", eb.Value, "k")
	}
}

// TestQueueTakesARevisionWhole: a queue of 4 takes the 10 events of one
// revision that nobody has read yet, and resyncs only when a later
// revision is pushed while it is still over its limit.
func TestQueueTakesARevisionWhole(t *testing.T) {
	q := NewQueue(4)
	for i := range 10 {
		if !q.Push(put(string(rune('a'+i)), 7)) {
			t.Fatalf("push %d of revision 7 refused by a queue of 4: a revision must be taken whole", i)
		}
	}
	if q.Push(put("k", 8)) {
		t.Fatal("a later revision was taken while 10 events wait in a queue of 4")
	}
	out := make(chan store.Event)
	go q.Run(t.Context(), out, 6)
	ev, ok := recv(t, out)
	if !ok || ev.Kind != store.EventResync || !errors.Is(ev.Err, ErrBehind) {
		t.Fatalf("got %v (open %v), want a resync for falling behind", ev, ok)
	}
	if _, ok := recv(t, out); ok {
		t.Fatal("the channel stayed open after the resync")
	}

	q = NewQueue(4)
	for i := range 10 {
		q.Push(put(string(rune('a'+i)), 7))
	}
	out = make(chan store.Event)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan struct{})
	go func() { q.Run(ctx, out, 6); close(done) }()
	for i := range 10 {
		if ev, ok := recv(t, out); !ok || ev.Key != string(rune('a'+i)) || ev.Revision != 7 {
			t.Fatalf("event %d = %v (open %v), want put %c at revision 7", i, ev, ok, 'a'+i)
		}
	}
	if !q.Push(put("k", 8)) {
		t.Fatal("the next revision was refused once the watcher had caught up")
	}
	if ev, ok := recv(t, out); !ok || ev.Key != "k" {
		t.Fatalf("got %v (open %v), want put k", ev, ok)
	}
	cancel()
	<-done
}
