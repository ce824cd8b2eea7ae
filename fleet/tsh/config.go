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
and sftp work as usual. Each leaf cluster you logged in to (tsh login LEAF)
gets a block of its own: its devices are DEVICE.LEAF.`,
		Example: `  tsh config >> ~/.ssh/config
  ssh root@pi-1.fleet
  tsh login plant-7 && tsh config > ~/.ssh/config.d/fleet
  ssh pi@plc-3.plant-7`,
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
	// Leaves first: OpenSSH takes the first value it finds, and a leaf's
	// name may end with the fleet's.
	sites := append(r.leafSites(p, dir), &site{p: p, dir: dir})
	for _, s := range sites {
		if err := r.configBlock(s); err != nil {
			return err
		}
	}
	return nil
}

// configBlock prints the block of one site.
func (r *runner) configBlock(s *site) error {
	p, dir := s.p, s.dir
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
	for _, path := range []string{filepath.Join(dir, fileKey), s.certFile(), filepath.Join(home, "known_hosts")} {
		q, err := sshConfigQuote(path)
		if err != nil {
			return fmt.Errorf("config: %w; set TSH_HOME to a simpler path and log in again", err)
		}
		quoted = append(quoted, q)
	}
	proxyCmd := shellQuote(exe) + " proxy ssh %r@%h:%p"
	what := fmt.Sprintf("the fleet %q at %s", p.Cluster, p.Proxy)
	if s.leaf != "" {
		proxyCmd = shellQuote(exe) + " proxy ssh --cluster=" + s.leaf + " %r@%h:%p"
		what = fmt.Sprintf("the leaf cluster %q through %s", s.leaf, p.Proxy)
	}
	if r.stdio.Getenv("TSH_HOME") != "" {
		proxyCmd = "env TSH_HOME=" + shellQuote(home) + " " + proxyCmd
	}
	fmt.Fprintf(r.stdio.Out, `# Remoteler edge: devices of %s as DEVICE.%s (written by tsh config)
Host *.%s
    Port 22
    IdentityFile %s
    CertificateFile %s
    IdentitiesOnly yes
    UserKnownHostsFile %s
    StrictHostKeyChecking yes
    ProxyCommand %s
`, what, s.name(), s.name(), quoted[0], quoted[1], quoted[2], proxyCmd)
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
