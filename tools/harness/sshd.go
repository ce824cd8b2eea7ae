package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// SSHDPath is where Debian's openssh-server installs sshd.
const SSHDPath = "/usr/sbin/sshd"

// SSHDConfig says how to start sshd. AuthorizedKeys is required.
type SSHDConfig struct {
	// Name names the process and its directory; default "sshd".
	Name string
	// Dir holds the host key and sshd_config; default a new tb.TempDir().
	Dir string
	// AuthorizedKeys is the file of public keys it accepts. Required.
	AuthorizedKeys string
	// Config is more sshd_config lines (such as "Subsystem sftp
	// internal-sftp").
	Config string
	// LogDir, when set, also gets its output (see Cmd.LogDir).
	LogDir string
}

// SSHD is Debian's sshd on a loopback port with a throw-away host key,
// the peer that benchmarks compare the fleet with.
type SSHD struct {
	// Proc is the sshd process (sshd -D -e: it logs to stderr).
	Proc *Proc
	// Port is its port on 127.0.0.1.
	Port int
	// HostPub is its host public key, in authorized_keys form.
	HostPub []byte
}

var (
	sshdListeningRE = regexp.MustCompile(`Server listening on 127\.0\.0\.1 port`)
	sshdPortTakenRE = regexp.MustCompile(`(?i)address already in use`)
)

// StartSSHD starts sshd on a free loopback port with a new host key. It
// accepts public-key logins only, of the keys in cfg.AuthorizedKeys, for
// any user (StrictModes off), without PAM or DNS look-ups. It fails the
// TB when sshd does not start.
func StartSSHD(tb TB, cfg SSHDConfig) *SSHD {
	tb.Helper()
	s, err := StartSSHDErr(tb, cfg)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return s
}

// StartSSHDErr is StartSSHD returning the error.
func StartSSHDErr(tb TB, cfg SSHDConfig) (*SSHD, error) {
	if _, err := os.Stat(SSHDPath); err != nil {
		return nil, fmt.Errorf("start sshd: Debian's OpenSSH server is needed at %s (apt-get install openssh-server; tools/setup/setup.sh does): %w", SSHDPath, err)
	}
	if cfg.Name == "" {
		cfg.Name = "sshd"
	}
	if cfg.Dir == "" {
		cfg.Dir = tb.TempDir()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	hostKey := filepath.Join(cfg.Dir, "host_ed25519")
	if err := KeygenErr(tb, hostKey, cfg.Name); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	if os.Geteuid() == 0 {
		// sshd wants its privilege separation directory, which Debian's
		// service unit makes at boot.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("start sshd: %w", err)
		}
	}
	conf := filepath.Join(cfg.Dir, "sshd_config")
	// SetEnv SHLVL=1: bash sources ~/.bashrc for a command whose stdin is
	// a socket (sshd's sessions) unless it is a nested shell; the agent
	// gives commands pipes, where bash never does. Without it the peer
	// would be charged for the login's shell start-up files.
	text := fmt.Sprintf(`ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
PidFile none
PrintMotd no
SetEnv SHLVL=1
%s`, hostKey, cfg.AuthorizedKeys, cfg.Config)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	// sshd takes a port number, not a listener: a port free a moment ago
	// may be taken by the time sshd binds it. Try again then.
	for attempt := 1; ; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, fmt.Errorf("start sshd: %w", err)
		}
		p, err := StartErr(tb, Cmd{Name: cfg.Name, Path: SSHDPath, Args: []string{"-D", "-e", "-f", conf, "-p", strconv.Itoa(port)}, LogDir: cfg.LogDir})
		if err != nil {
			return nil, err
		}
		_, _, err = p.AwaitLine(tb.Context(), 0, sshdListeningRE, time.Minute)
		if err == nil {
			return &SSHD{Proc: p, Port: port, HostPub: hostPub}, nil
		}
		p.Stop()
		if attempt == 5 || p.Count(sshdPortTakenRE) == 0 {
			return nil, fmt.Errorf("start sshd: %w", err)
		}
	}
}

// Keygen makes a new ed25519 key pair without a passphrase at path and
// path.pub; it fails the TB when ssh-keygen fails.
func Keygen(tb TB, path, comment string) {
	tb.Helper()
	if err := KeygenErr(tb, path, comment); err != nil {
		tb.Fatalf("%v", err)
	}
}

// KeygenErr is Keygen returning the error.
func KeygenErr(tb TB, path, comment string) error {
	_, err := RunErr(tb.Context(), "", Cmd{Path: "ssh-keygen", Args: []string{"-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path}})
	return err
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago,
// for programs that take a port number rather than a listener. Prefer
// passing 127.0.0.1:0 where a program takes that.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// NeedPrograms returns an error naming the programs (in PATH, or paths)
// that are missing, with what installs them.
func NeedPrograms(install string, programs ...string) error {
	var missing []string
	for _, p := range programs {
		if strings.Contains(p, "/") {
			if _, err := os.Stat(p); err != nil {
				missing = append(missing, p)
			}
		} else if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return errors.New("missing " + strings.Join(missing, ", ") + ": " + install)
	}
	return nil
}
