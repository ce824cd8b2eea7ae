//go:build unix

package tsh

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// watchWindow calls resize with the terminal's new size on each SIGWINCH
// until the returned stop function is called; stop waits for the watcher
// goroutine to end.
func watchWindow(fd int, resize func(width, height int)) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGWINCH)
	done := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for {
			select {
			case <-done:
				return
			case <-sigs:
				if w, h, err := term.GetSize(fd); err == nil {
					resize(w, h)
				}
			}
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(done)
		<-ended
	}
}
