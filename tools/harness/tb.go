package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
)

// TB is the part of testing.TB the harness uses. *testing.T and
// *testing.B satisfy it; a command gets one from Do.
type TB interface {
	// Helper marks the caller as a helper (for testing's line numbers).
	Helper()
	// Cleanup registers f to run, last registered first, when the test
	// (or Do's function) is done.
	Cleanup(f func())
	// Logf logs a line.
	Logf(format string, args ...any)
	// Fatalf records an error and ends the calling goroutine, which must
	// be the one running the test (or Do's function).
	Fatalf(format string, args ...any)
	// Failed reports whether the test (or Do's function) failed.
	Failed() bool
	// TempDir returns a new directory, removed at the end.
	TempDir() string
	// Context is cancelled just before the clean-ups run.
	Context() context.Context
}

// DoConfig configures Do. Its zero value works.
type DoConfig struct {
	// Log receives Logf lines; nil discards them.
	Log io.Writer
	// Dir is where TempDir makes its directories; empty makes a temporary
	// directory, removed at the end unless Keep.
	Dir string
	// Keep keeps the temporary directory (its path is logged).
	Keep bool
}

// Do runs fn with a TB for code that is not a test, such as a benchmark
// command, and returns fn's error or the first Fatalf's. The TB's context
// derives from ctx. When fn returns (or a Fatalf ends it), the context is
// cancelled and the clean-ups run, last registered first: every process
// started with the TB is stopped. fn runs on a goroutine of its own, the
// only one that may call Fatalf; other goroutines use the XErr forms.
func Do(ctx context.Context, cfg DoConfig, fn func(tb TB) error) error {
	s := &script{log: cfg.Log, dir: cfg.Dir, keep: cfg.Keep}
	if s.log == nil {
		s.log = io.Discard
	}
	s.ctx, s.cancel = context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fn(s); err != nil {
			s.fail(err)
		}
	}()
	<-done
	s.cancel()
	s.runCleanups()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// script is the TB that Do hands out.
type script struct {
	ctx    context.Context
	cancel context.CancelFunc
	log    io.Writer
	dir    string
	keep   bool

	mu       sync.Mutex // guards the fields below
	cleanups []func()
	err      error
	tmp      string // the root of TempDir's directories, once made
	made     bool   // tmp was made by this script (and is removed)
	n        int    // TempDir directories so far
}

func (s *script) Helper() {}

func (s *script) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanups = append(s.cleanups, f)
}

func (s *script) Logf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(s.log, format+"\n", args...)
}

func (s *script) Fatalf(format string, args ...any) {
	s.fail(fmt.Errorf(format, args...))
	runtime.Goexit()
}

func (s *script) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

func (s *script) Failed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err != nil
}

func (s *script) Context() context.Context { return s.ctx }

func (s *script) TempDir() string {
	s.mu.Lock()
	if s.tmp == "" {
		var err error
		if s.dir != "" {
			s.tmp, err = s.dir, os.MkdirAll(s.dir, 0o700)
		} else if s.tmp, err = os.MkdirTemp("", "harness-"); err == nil {
			s.made = true
		}
		if err != nil {
			s.tmp = ""
			s.mu.Unlock()
			s.Fatalf("harness: temp dir: %v", err)
		}
	}
	s.n++
	dir := filepath.Join(s.tmp, strconv.Itoa(s.n))
	s.mu.Unlock()
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		s.Fatalf("harness: temp dir: %v", err)
	}
	return dir
}

// runCleanups runs the clean-ups, last first, each on a goroutine of its
// own so that one that calls Fatalf does not stop the others.
func (s *script) runCleanups() {
	for {
		s.mu.Lock()
		if len(s.cleanups) == 0 {
			s.mu.Unlock()
			break
		}
		f := s.cleanups[len(s.cleanups)-1]
		s.cleanups = s.cleanups[:len(s.cleanups)-1]
		s.mu.Unlock()
		done := make(chan struct{})
		go func() {
			defer close(done)
			f()
		}()
		<-done
	}
	s.mu.Lock()
	tmp, made := s.tmp, s.made
	s.mu.Unlock()
	switch {
	case made && s.keep:
		s.Logf("kept %s", tmp)
	case made:
		os.RemoveAll(tmp)
	}
}
