package main

import (
	"os"
	"os/exec"
	"syscall"
)

// procAttr puts a child in its own process group (so stopping it reaches
// its children, such as ssh's ProxyCommand) and kills it when linkbench
// dies, so an interrupted run leaves nothing behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// signalGroup signals p's process group.
func signalGroup(p *os.Process, sig syscall.Signal) error { return syscall.Kill(-p.Pid, sig) }

// signalGroupKill kills cmd's process group.
func signalGroupKill(cmd *exec.Cmd) {
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
