//go:build !linux

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// procAttr has nothing to add off Linux; linkbench measures on Linux.
func procAttr() *syscall.SysProcAttr { return nil }

// signalGroup signals p alone where there are no process groups to use.
func signalGroup(p *os.Process, sig syscall.Signal) error { return p.Signal(sig) }

// signalGroupKill kills cmd's process.
func signalGroupKill(cmd *exec.Cmd) {
	if cmd.Process != nil {
		cmd.Process.Kill()
	}
}
