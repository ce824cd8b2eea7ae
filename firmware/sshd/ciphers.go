package sshd

import (
	"runtime"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/cpu"
)

// ciphers returns the SSH ciphers the server offers. A client picks the
// first of its own list that the server offers, and OpenSSH lists
// chacha20-poly1305 first: right where there is no AES in hardware (a
// Raspberry Pi's Cortex-A72, say), but on a CPU with AES and carry-less
// multiply instructions AES-GCM costs a fraction of it (x/crypto's
// chacha20 has no amd64 assembly: it took a fifth of the agent's CPU in a
// bulk copy). There the server offers AES-GCM only, which every OpenSSH
// since 6.2 (2013), tsh and the common libraries speak. Nil keeps
// x/crypto's defaults.
func ciphers() []string {
	if !aesInHardware() {
		return nil
	}
	return []string{ssh.CipherAES128GCM, ssh.CipherAES256GCM}
}

// aesInHardware reports whether this CPU runs AES-GCM in hardware.
func aesInHardware() bool {
	switch runtime.GOARCH {
	case "amd64":
		return cpu.X86.HasAES && cpu.X86.HasPCLMULQDQ
	case "arm64":
		return cpu.ARM64.HasAES && cpu.ARM64.HasPMULL
	}
	return false
}
