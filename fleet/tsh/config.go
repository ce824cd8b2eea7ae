package tsh

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client/cli"
)

func (r *runner) configCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "Print an OpenSSH config block for the fleet's devices",
		Long: `Print an OpenSSH client config block that reaches the current fleet's
devices as DEVICE.CLUSTER through "tsh proxy ssh", with your login's key and
certificate and the fleet's host CA; add it to ~/.ssh/config, then ssh, scp
and sftp work as usual.`,
		Example: `  tsh config >> ~/.ssh/config
  ssh root@pi-1.fleet`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.config() },
	}
}

// config prints an OpenSSH client config block that reaches the current
// fleet's devices as DEVICE.CLUSTER through tsh proxy ssh, with the
// profile's key and certificate and the fleet's host CA in known_hosts.
func (r *runner) config() error {
	p, dir, err := r.currentProfile()
	if err != nil {
		return err
	}
	home, err := r.home()
	if err != nil {
		return err
	}
	exe, err := r.stdio.Executable()
	if err == nil {
		exe, err = filepath.Abs(exe)
	}
	if err != nil {
		return fmt.Errorf("config: find the path of tsh: %w", err)
	}
	var quoted []string
	for _, path := range []string{filepath.Join(dir, fileKey), filepath.Join(dir, fileCert), filepath.Join(home, "known_hosts")} {
		q, err := sshConfigQuote(path)
		if err != nil {
			return fmt.Errorf("config: %w; set TSH_HOME to a simpler path and log in again", err)
		}
		quoted = append(quoted, q)
	}
	proxyCmd := shellQuote(exe) + " proxy ssh %r@%h:%p"
	if r.stdio.Getenv("TSH_HOME") != "" {
		proxyCmd = "env TSH_HOME=" + shellQuote(home) + " " + proxyCmd
	}
	fmt.Fprintf(r.stdio.Out, `# Remoteler edge: devices of the fleet %q at %s as DEVICE.%s (written by tsh config)
Host *.%s
    Port 22
    IdentityFile %s
    CertificateFile %s
    IdentitiesOnly yes
    UserKnownHostsFile %s
    StrictHostKeyChecking yes
    ProxyCommand %s
`, p.Cluster, p.Proxy, p.Cluster, p.Cluster, quoted[0], quoted[1], quoted[2], proxyCmd)
	return nil
}

// sshConfigQuote quotes a path for an ssh_config option that expands %
// tokens (IdentityFile, CertificateFile, UserKnownHostsFile).
func sshConfigQuote(path string) (string, error) {
	if strings.ContainsAny(path, "\"\\\n\r") {
		return "", fmt.Errorf("the path %q holds a quote, backslash or newline, which ssh_config cannot express", path)
	}
	return `"` + strings.ReplaceAll(path, "%", "%%") + `"`, nil
}

// shellQuote quotes a word for the /bin/sh that runs a ProxyCommand, after
// OpenSSH's % expansion.
func shellQuote(s string) string {
	s = strings.ReplaceAll(s, "%", "%%")
	if s != "" && strings.IndexFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("/._-+:,@%", c))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
