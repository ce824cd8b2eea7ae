package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// TestLocksBenchmark measures how long a lock takes to end a live session
// on three replicas over a three-member etcd (startLockFleet: pi-1's
// tunnel on replica A): alice holds two OpenSSH sessions (tsh proxy ssh),
// one through replica B and one through replica C, and a lock on her is
// written through replica B's API (fleetctl lock). Each session's time
// runs from the lock's write (the lock's Created, stamped by B just
// before it writes the store) to its ssh client exiting: the same
// replica as the write (B), and another replica (C, which hears of the
// lock through etcd's watch). The lock is removed and every replica's
// view is clear of it before the next sample.
//
// It runs in CI with few samples (so it cannot rot) and prints its figures
// with -v; set LOCK_BENCH_N for more samples:
//
//	LOCK_BENCH_N=100 go test -count=1 -v -run TestLocksBenchmark ./tools/e2e
func TestLocksBenchmark(t *testing.T) {
	n := 5
	if s := os.Getenv("LOCK_BENCH_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 5 {
			t.Fatalf("LOCK_BENCH_N=%q: want a number of at least 5", s)
		}
		n = v
	}
	lf := startLockFleet(t)
	var same, other, command []time.Duration
	for i := range n {
		// Alternate which session opens first.
		order := []int{repB, repC}
		if i%2 == 1 {
			order = []int{repC, repB}
		}
		sessions := map[int]*harness.Proc{}
		for _, r := range order {
			sessions[r] = lf.openSSH(t, r)
		}
		began := time.Now()
		l := lf.lock(t, repB, "--user=alice", fmt.Sprintf("--message=sample %d", i))
		command = append(command, time.Since(began))
		same = append(same, cutBy(t, sessions[repB], l))
		other = append(other, cutBy(t, sessions[repC], l))
		lf.reps[repB].Ctl("", "locks", "rm", l.ID)
		lf.awaitViews(t, l.ID, false)
	}

	ms := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| lock written on B, OpenSSH session through | p50 | p90 | p99 | max | samples |\n|---|---:|---:|---:|---:|---:|\n")
	for _, row := range []struct {
		name string
		ds   []time.Duration
	}{{"B (the same replica)", same}, {"C (another replica)", other}, {"(fleetctl lock, the whole command)", command}} {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %d |\n", row.name, ms(pct(row.ds, 50)), ms(pct(row.ds, 90)), ms(pct(row.ds, 99)), ms(pct(row.ds, 100)), len(row.ds))
	}
	t.Log(sb.String())
}
