package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"remoteler.dev/edge/tools/harness"
)

// setup starts a fleet with one device, pi-1 (site=north), and a user
// alice (role access, login root) logged in with tsh.
func setup(t *testing.T) (*harness.Fleet, *harness.Agent, *harness.User) {
	t.Helper()
	f := startFleet(t)
	a := f.StartAgent("pi-1", "site=north")
	pw := f.AddUser("alice", "access", "root")
	return f, a, f.Login("alice", pw)
}

func TestTshSSH(t *testing.T) {
	_, _, u := setup(t)

	t.Run("ls", func(t *testing.T) {
		out := u.Tsh("ls")
		if !strings.Contains(out, "pi-1") || !strings.Contains(out, "online") || !strings.Contains(out, "site=north") {
			t.Errorf("tsh ls = %q, want pi-1 online with site=north", out)
		}
	})
	t.Run("exec", func(t *testing.T) {
		if out := u.Tsh("ssh", "root@pi-1", "echo", "hi"); out != "hi\n" {
			t.Errorf("tsh ssh echo hi = %q, want %q", out, "hi\n")
		}
	})
	t.Run("exit status", func(t *testing.T) {
		_, _, err := u.TshErr("", "ssh", "root@pi-1", "exit 7")
		if got := harness.ExitCode(err); got != 7 {
			t.Errorf("exit code = %d (%v), want 7", got, err)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		out, _, err := u.TshErr("from stdin\n", "ssh", "root@pi-1", "cat")
		if err != nil || out != "from stdin\n" {
			t.Errorf("cat = %q, %v", out, err)
		}
	})
	t.Run("interactive pty", func(t *testing.T) {
		cmd := exec.Command(filepath.Join(string(bin), "tsh"), "ssh", "root@pi-1")
		cmd.Env = append(os.Environ(), u.Env()...)
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 100})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		out := &lockedBuffer{}
		go io.Copy(out, tty)
		io.WriteString(tty, "stty size; echo $((6*7))zz\r")
		if !harness.Eventually(20*time.Second, func() bool { return strings.Contains(out.String(), "42zz") }) {
			t.Fatalf("no 42 from the interactive shell: %q", out.String())
		}
		if !strings.Contains(out.String(), "40 100") {
			t.Errorf("window size not passed on: %q", out.String())
		}
		io.WriteString(tty, "exit 3\r")
		err = cmd.Wait()
		if got := harness.ExitCode(err); got != 3 {
			t.Errorf("interactive exit code = %d (%v), want 3", got, err)
		}
	})
}

// lockedBuffer is a bytes.Buffer safe for one writer and one reader.
type lockedBuffer struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// openSSHConfig writes tsh config's block to a file for ssh -F.
func openSSHConfig(t *testing.T, u *harness.User) string {
	t.Helper()
	cfg := u.Tsh("config")
	if !strings.Contains(cfg, "Host *.fleet") || !strings.Contains(cfg, "ProxyCommand") {
		t.Fatalf("tsh config = %q", cfg)
	}
	path := filepath.Join(t.TempDir(), "ssh_config")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func randomFile(t *testing.T, dir string, size int) (string, [32]byte) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	path := filepath.Join(dir, "payload")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, sha256.Sum256(b)
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestOpenSSH(t *testing.T) {
	_, _, u := setup(t)
	cfg := openSSHConfig(t, u)
	ssh := func(args ...string) (string, string, error) {
		return run("", nil, "ssh", append([]string{"-F", cfg, "-o", "BatchMode=yes"}, args...)...)
	}
	t.Run("ssh command", func(t *testing.T) {
		out, errOut, err := ssh("root@pi-1.fleet", "echo", "hi")
		if err != nil || out != "hi\n" {
			t.Fatalf("ssh = %q, %v\n%s", out, err, errOut)
		}
		_, _, err = ssh("root@pi-1.fleet", "exit 5")
		if harness.ExitCode(err) != 5 {
			t.Errorf("ssh exit code = %d, want 5", harness.ExitCode(err))
		}
	})

	const size = 50 << 20
	local := t.TempDir()
	src, sum := randomFile(t, local, size)
	remote := t.TempDir() // the device is this machine: its files are ours to check

	t.Run("scp both ways", func(t *testing.T) {
		up := filepath.Join(remote, "scp-up")
		if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", src, "root@pi-1.fleet:"+up); err != nil {
			t.Fatalf("scp up: %v\n%s%s", err, out, errOut)
		}
		if fileSum(t, up) != sum {
			t.Fatal("scp up: checksum differs")
		}
		down := filepath.Join(local, "scp-down")
		if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", "root@pi-1.fleet:"+up, down); err != nil {
			t.Fatalf("scp down: %v\n%s%s", err, out, errOut)
		}
		if fileSum(t, down) != sum {
			t.Fatal("scp down: checksum differs")
		}
	})
	t.Run("sftp both ways", func(t *testing.T) {
		up := filepath.Join(remote, "sftp-up")
		down := filepath.Join(local, "sftp-down")
		batch := filepath.Join(local, "batch")
		os.WriteFile(batch, []byte("put "+src+" "+up+"\nget "+up+" "+down+"\n"), 0o600)
		if out, errOut, err := run("", nil, "sftp", "-F", cfg, "-o", "BatchMode=yes", "-b", batch, "root@pi-1.fleet"); err != nil {
			t.Fatalf("sftp: %v\n%s%s", err, out, errOut)
		}
		if fileSum(t, up) != sum || fileSum(t, down) != sum {
			t.Fatal("sftp: checksum differs")
		}
	})
	t.Run("tsh scp both ways", func(t *testing.T) {
		up := filepath.Join(remote, "tsh-up")
		u.Tsh("scp", src, "root@pi-1:"+up)
		down := filepath.Join(local, "tsh-down")
		u.Tsh("scp", "root@pi-1:"+up, down)
		if fileSum(t, up) != sum || fileSum(t, down) != sum {
			t.Fatal("tsh scp: checksum differs")
		}
	})
}
