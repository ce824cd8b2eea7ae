// Package leader elects the one fleetd replica that runs what must run
// once (the rollout controller, audit retention, audit checkpoints), and
// fences it: a leader writes through a store view guarded by its term, so
// once another replica has taken over, the deposed leader's writes fail
// with store.ErrFenced, even if it has not noticed yet (a process paused
// past its lease, a partition).
//
// An Elector campaigns for one named job. Two implementations: Local, for
// the embedded stores (one fleetd: its campaign wins at once), built on the
// store contract alone; and fleet/leader/etcdleader, etcd's own election
// (go.etcd.io/etcd/client/v3/concurrency), for replicas on etcd. Run is the
// loop a job runs in: campaign, run while leader with a fenced store,
// resign, campaign again.
//
// Only fleet/... imports this package.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"remoteler.dev/edge/fleet/backoff"
	"remoteler.dev/edge/fleet/store"
)

// Elector campaigns for the leadership of one job.
type Elector interface {
	// Campaign waits until this candidate leads, or ctx ends (then it
	// returns ctx's error and leaves no claim behind).
	Campaign(ctx context.Context) (Term, error)
}

// Term is one candidate's leadership, from the Campaign that won it until
// Resign or its loss.
type Term interface {
	// Guard holds exactly while the term lasts: a write guarded by it
	// (Fenced) happens only while this candidate leads.
	Guard() store.Guard
	// Done is closed when the term is over: resigned, its lease lost (the
	// leader could not renew it in time), or its claim removed.
	Done() <-chan struct{}
	// Resign ends the term so another candidate may lead. It is safe to
	// call more than once and after Done.
	Resign(ctx context.Context) error
}

// Fenced returns st with every write guarded by t's term: once t is over
// (whether or not its holder noticed), writes through the view fail with
// store.ErrFenced and change nothing.
func Fenced(st store.Store, t Term) store.Store {
	return store.Guarded(st, t.Guard())
}

// Job is work that must run on one replica at a time. It runs until ctx
// ends (the term ended, or Run's context did), writing through st, a view
// of the store fenced by its term.
type Job func(ctx context.Context, st store.Store) error

// Run runs job on this replica whenever it leads, until ctx ends: it
// campaigns with e, runs job with a context that ends with the term and a
// store fenced by it, resigns when job returns, and campaigns again (after
// a back-off of 1 s doubling to 30 s when campaigns fail or job returns
// early). It returns ctx's error. log receives leadership changes (nil: no
// logging).
func Run(ctx context.Context, name string, e Elector, st store.Store, log *slog.Logger, job Job) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("job", name)
	wait := time.Duration(0)
	for {
		if wait > 0 && !backoff.Wait(ctx, wait) {
			return ctx.Err()
		}
		term, err := e.Campaign(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			wait = backoff.Next(wait, time.Second, 30*time.Second)
			log.Warn("campaign for leadership failed; retrying", "retry_in", wait.Round(time.Millisecond).String(), "err", err.Error())
			continue
		}
		log.Info("leading", "claim", term.Guard().Key)
		started := time.Now()
		err = runTerm(ctx, term, st, job)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		rerr := term.Resign(rctx)
		cancel()
		if rerr != nil {
			log.Warn("resign", "err", rerr.Error())
		}
		select {
		case <-term.Done():
			log.Info("no longer leading", "led_for", time.Since(started).Round(time.Millisecond).String())
		default:
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch {
		case err != nil && !errors.Is(err, context.Canceled):
			wait = backoff.Next(wait, time.Second, 30*time.Second)
			log.Error("job failed; campaigning again", "retry_in", wait.Round(time.Millisecond).String(), "err", err.Error())
		case time.Since(started) < time.Minute:
			wait = backoff.Next(wait, time.Second, 30*time.Second)
		default:
			wait = 0
		}
	}
}

// runTerm runs job while term lasts.
func runTerm(ctx context.Context, term Term, st store.Store, job Job) error {
	jctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-term.Done():
			cancel()
		case <-jctx.Done():
		}
	}()
	if err := job(jctx, Fenced(st, term)); err != nil {
		return fmt.Errorf("leader: job: %w", err)
	}
	return nil
}
