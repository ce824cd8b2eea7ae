//go:build !unix

package tsh

// watchWindow does nothing where there is no SIGWINCH; the remote terminal
// keeps the size it started with.
func watchWindow(fd int, resize func(width, height int)) (stop func()) {
	return func() {}
}
