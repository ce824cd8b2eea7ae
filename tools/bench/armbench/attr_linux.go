package main

import "syscall"

// childAttr makes a child die with armbench (SIGKILL when its parent
// goes), so an interrupted run leaves no fleetd, agent or qemu behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
