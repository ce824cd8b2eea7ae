// Command auditgen is edge-agent with a generator of numbered test audit
// events, for tests and benchmarks of audit delivery: it runs the real
// agent (package agent: identity, tunnel, audit queue and shipper) and, as
// well, writes events of type "test.generated" through the agent's queue.
// Each event carries the run's random ID and a number; once the queue has
// fsync'd one, auditgen prints
//
//	committed run=RUN i=N seq=SEQ
//
// so a test that kills it at any moment knows which events the device
// committed. When --count events are written it prints "generated N" and
// goes on shipping until it is stopped.
//
// --claim-user and --claim-session make every event name that user and
// session: a device speaking for a user, for tests of the fleet's checks.
//
//	auditgen --fleet HOST:PORT [--token JOIN_STRING] --data-dir DIR --name NAME
//	         [--workers 4] [--interval 0] [--count 0] [--audit-max-bytes N]
//	         [--claim-user USER] [--claim-session ID]
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/proto"
)

// EventType is the type of the events auditgen writes.
const EventType = "test.generated"

func main() {
	fs := flag.NewFlagSet("auditgen", flag.ExitOnError)
	fleet := fs.String("fleet", "", "the fleet's `HOST:PORT` (HTTPS for joining, QUIC for the tunnel)")
	token := fs.String("token", "", "join string, for the first start")
	dataDir := fs.String("data-dir", "", "the agent's data `DIR`")
	name := fs.String("name", "auditgen", "device name")
	workers := fs.Int("workers", 4, "goroutines writing events at once (0: write none, only ship)")
	interval := fs.Duration("interval", 0, "pause between one worker's events (0: none)")
	count := fs.Int("count", 0, "events to write in this run (0: until stopped)")
	maxBytes := fs.Int64("audit-max-bytes", 0, "the audit queue's cap in bytes (default 64 MiB)")
	logLevel := fs.String("log-level", "warn", "log level: debug, info, warn or error")
	claimUser := fs.String("claim-user", "", "a user every event names (a test of the fleet's checks)")
	claimSession := fs.String("claim-session", "", "a session ID every event names (a test of the fleet's checks)")
	fs.Parse(os.Args[1:])
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "auditgen: --log-level:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	run := rand.Text()[:10]
	var mu sync.Mutex // serialises stdout lines
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf(format+"\n", args...)
	}
	gen := func(ctx context.Context, emit func(*proto.AuditEvent) (uint64, error)) {
		var next, done atomic.Int64
		var wg sync.WaitGroup
		for range *workers {
			wg.Go(func() {
				for ctx.Err() == nil {
					i := next.Add(1) - 1
					if *count > 0 && i >= int64(*count) {
						return
					}
					seq, err := emit(&proto.AuditEvent{Type: EventType, Message: "generated for a delivery test",
						User: *claimUser, Session: *claimSession,
						Fields: map[string]string{"run": run, "i": strconv.FormatInt(i, 10)}})
					if err != nil {
						say("dropped run=%s i=%d err=%q", run, i, err.Error())
					} else {
						say("committed run=%s i=%d seq=%d", run, i, seq)
						done.Add(1)
					}
					if *interval > 0 {
						select {
						case <-ctx.Done():
						case <-time.After(*interval):
						}
					}
				}
			})
		}
		wg.Wait()
		if ctx.Err() == nil && *workers > 0 {
			say("generated %d", done.Load())
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err := agent.Run(ctx, agent.Config{
		Fleet: *fleet, Token: *token, DataDir: *dataDir, Name: *name, AuditMaxBytes: *maxBytes,
		NoRecording: true, EventSource: gen, Logger: log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "auditgen:", err)
		os.Exit(1)
	}
}
