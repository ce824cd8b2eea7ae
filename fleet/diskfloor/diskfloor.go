// Package diskfloor keeps a floor of free space under the fleet's data
// dir: below it, devices' uploads (audit events, session recordings) pause
// while what the fleet writes for its users (logins, sessions, its own
// audit events) goes on in the room the floor keeps. Devices keep their
// queues and send again later, so nothing is lost.
//
// Only fleet/... server packages import diskfloor.
package diskfloor

import (
	"errors"
	"fmt"
)

// ErrLow is what Check returns below the floor.
var ErrLow = errors.New("diskfloor: the fleet's disk is nearly full")

// Floor checks the free space of the file system that holds Dir. It asks
// the file system each time (one statfs: a microsecond or two), so a disk
// that fills up stops the next upload, not one a second later.
type Floor struct {
	// Dir is a directory on the file system to watch (the data dir).
	Dir string
	// Min returns the floor in bytes; zero or less means none. Nil means
	// none.
	Min func() int64
	// Free returns the bytes free for Dir's file system; nil means the
	// operating system's answer (statfs on Linux; elsewhere the floor is
	// not kept). Tests set it.
	Free func(dir string) (free, total uint64, err error)
}

// Space returns the free and total bytes of Dir's file system.
func (f *Floor) Space() (free, total uint64, err error) {
	if f.Free != nil {
		return f.Free(f.Dir)
	}
	return space(f.Dir)
}

// Check returns an error matching ErrLow when the free space is below the
// floor. A file system whose space cannot be read passes (and the error is
// the caller's to log through Space).
func (f *Floor) Check() error {
	if f == nil || f.Min == nil {
		return nil
	}
	min := f.Min()
	if min <= 0 {
		return nil
	}
	free, _, err := f.Space()
	if err != nil {
		return nil
	}
	if free < uint64(min) {
		return fmt.Errorf("%w: %d MiB free, the floor is %d MiB", ErrLow, free>>20, min>>20)
	}
	return nil
}
