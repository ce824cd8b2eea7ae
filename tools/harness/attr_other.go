//go:build !linux

package harness

import (
	"os"
	"syscall"
)

// childAttr has nothing to add off Linux, where the harness is not used
// for measurements.
func childAttr() *syscall.SysProcAttr { return nil }

// signalGroup signals p alone.
func signalGroup(p *os.Process, sig syscall.Signal) error { return p.Signal(sig) }
