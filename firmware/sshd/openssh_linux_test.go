package sshd

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// openSSH is an OpenSSH client set up to log in to a fixture: a key, its
// certificate and a known_hosts that trusts the fleet's host CA.
type openSSH struct {
	t    *testing.T
	dir  string
	host string
	port string
	opts []string
}

func newOpenSSH(t *testing.T, f *fixture, addr, login string) *openSSH {
	t.Helper()
	for _, bin := range []string{"ssh", "sftp", "scp"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("no OpenSSH %s: %v", bin, err)
		}
	}
	dir := t.TempDir()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	cert := sign(t, f.userCA, signer.PublicKey(), certSpec{keyID: "alice", principals: []string{login}, extensions: allPermits})
	files := map[string][]byte{
		"id":          pem.EncodeToMemory(block),
		"id-cert.pub": ssh.MarshalAuthorizedKey(cert),
		"known_hosts": append([]byte("@cert-authority * "), ssh.MarshalAuthorizedKey(f.hostCA.PublicKey())...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return &openSSH{t: t, dir: dir, host: login + "@" + host, port: port, opts: []string{
		"-F", "/dev/null",
		"-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile=" + filepath.Join(dir, "known_hosts"),
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "CertificateFile=" + filepath.Join(dir, "id-cert.pub"),
		"-o", "ConnectTimeout=10",
		"-i", filepath.Join(dir, "id"),
	}}
}

// run runs an OpenSSH tool and returns its output.
func (o *openSSH) run(name string, args ...string) string {
	o.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		o.t.Fatalf("%s %q: %v\nstdout: %s\nstderr: %s", name, args, err, out.String(), errOut.String())
	}
	return out.String()
}

func TestOpenSSHClients(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	o := newOpenSSH(t, f, addr, f.login)
	ssh := func(args ...string) []string {
		return append(append(append([]string{}, o.opts...), "-p", o.port, o.host), args...)
	}

	t.Run("ssh exec", func(t *testing.T) {
		if got := o.run("ssh", ssh("echo", "hi")...); got != "hi\n" {
			t.Errorf("ssh echo hi = %q; want %q", got, "hi\n")
		}
	})
	t.Run("cipher", func(t *testing.T) {
		// OpenSSH lists chacha20-poly1305 first; on a CPU with AES in
		// hardware the server offers AES-GCM only, and OpenSSH picks it.
		cmd := exec.Command("ssh", append([]string{"-v"}, ssh("true")...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -v: %v\n%s", err, out)
		}
		want := "cipher: chacha20-poly1305@openssh.com"
		if aesInHardware() {
			want = "cipher: aes128-gcm@openssh.com"
		}
		if !strings.Contains(string(out), "kex: server->client "+want) || !strings.Contains(string(out), "kex: client->server "+want) {
			t.Errorf("OpenSSH did not negotiate %q:\n%s", want, out)
		}
	})
	t.Run("ssh pty", func(t *testing.T) {
		if got := o.run("ssh", append([]string{"-tt"}, ssh("tty")...)...); !strings.Contains(got, "/dev/pts/") {
			t.Errorf("ssh -tt tty = %q; want a /dev/pts terminal", got)
		}
	})

	local := filepath.Join(o.dir, "local")
	data := bytes.Repeat([]byte("edge device bytes\n"), 10_000)
	if err := os.WriteFile(local, data, 0o644); err != nil {
		t.Fatal(err)
	}
	remoteDir := t.TempDir()
	check := func(t *testing.T, path string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s has %d bytes that differ from the %d sent", path, len(got), len(data))
		}
	}
	t.Run("sftp", func(t *testing.T) {
		batch := filepath.Join(o.dir, "batch")
		remote := filepath.Join(remoteDir, "via-sftp")
		back := filepath.Join(o.dir, "back")
		cmds := "put " + local + " " + remote + "\nget " + remote + " " + back + "\n"
		if err := os.WriteFile(batch, []byte(cmds), 0o600); err != nil {
			t.Fatal(err)
		}
		o.run("sftp", append(append([]string{}, o.opts...), "-b", batch, "-P", o.port, o.host)...)
		check(t, remote)
		check(t, back)
	})
	t.Run("scp", func(t *testing.T) {
		remote := filepath.Join(remoteDir, "via-scp")
		o.run("scp", append(append([]string{}, o.opts...), "-P", o.port, local, o.host+":"+remote)...)
		check(t, remote)
	})
	t.Run("legacy scp", func(t *testing.T) {
		// scp -O runs scp on the device instead of using sftp.
		remote := filepath.Join(remoteDir, "via-legacy-scp")
		o.run("scp", append(append([]string{"-O"}, o.opts...), "-P", o.port, local, o.host+":"+remote)...)
		check(t, remote)
	})
}
