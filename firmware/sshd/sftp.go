package sshd

import (
	"fmt"
	"io"
	"os"

	"github.com/pkg/sftp"
)

// stdio joins standard input and output into one stream.
type stdio struct {
	io.Reader
	io.Writer
}

func (stdio) Close() error {
	return os.Stdin.Close()
}

// ServeSFTPStdio serves one SFTP session on standard input and output with
// the privileges of the calling process, relative paths starting at its
// working directory, and returns when the client is done. It is the body
// of the agent's sftp helper mode: an agent running as root names its own
// binary in that mode in Config.SFTPCommand (for instance
// {"/usr/bin/edge-agent", "sftp-server"}), sshd runs it as the login's user
// with the user's home as working directory, and the helper's main calls
// ServeSFTPStdio and exits.
func ServeSFTPStdio() error {
	srv, err := sftp.NewServer(stdio{os.Stdin, os.Stdout})
	if err != nil {
		return fmt.Errorf("sshd: sftp helper: %w", err)
	}
	if err := srv.Serve(); err != nil {
		return fmt.Errorf("sshd: sftp helper: %w", err)
	}
	return nil
}
