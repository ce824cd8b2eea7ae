package devsim

import "syscall"

// childAttr makes fleetd die with the tool that started it, so an
// interrupted run leaves no fleetd behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
