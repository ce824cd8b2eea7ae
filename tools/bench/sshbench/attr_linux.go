package main

import "syscall"

// childAttr makes a child die with sshbench (SIGKILL when its parent
// goes), so an interrupted run leaves no fleetd or sshd behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
