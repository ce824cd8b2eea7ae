//go:build !linux

package devsim

// raiseFileLimit does nothing off Linux: the simulator is measured there.
func raiseFileLimit(need int) error { return nil }

// RaiseFileLimit is raiseFileLimit, for devsim's other processes.
func RaiseFileLimit(need int) error { return nil }
