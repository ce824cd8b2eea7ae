package harness

import (
	"os"
	"syscall"
)

// childAttr puts a child in a process group of its own, so that stopping
// it reaches its children too (ssh's ProxyCommand, a shell's programs),
// and kills it when this process dies, so an interrupted run leaves
// nothing behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// signalGroup signals p's process group.
func signalGroup(p *os.Process, sig syscall.Signal) error { return syscall.Kill(-p.Pid, sig) }
