package tsh

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/tools/pkitest"
)

func TestSSH(t *testing.T) {
	type device struct {
		hostCA     string // "fleet", "other" or "" (plain host key)
		principals []string
		offline    bool
	}
	good := device{hostCA: "fleet", principals: []string{"gw1", "gw1.fleet"}}
	tests := []struct {
		name       string
		device     device
		args       []string
		wantCode   int
		wantOut    string
		wantErr    string // in stderr
		wantLogin  string // the login the fleet was asked for
		wantDevice string
	}{
		{"exit status", good, []string{"pi@gw1", "echo hi; exit 7"}, 7, "hi\n", "", "pi", "gw1"},
		{"success", good, []string{"-l", "pi", "gw1", "echo", "ok"}, 0, "ok\n", "", "pi", "gw1"},
		{"cluster suffix", good, []string{"pi@gw1.fleet", "exit 3"}, 3, "", "", "pi", "gw1"},
		{"flags after the device are the command's", good, []string{"pi@gw1", "echo", "-l", "x", "--help"}, 0, "-l x --help\n", "", "pi", "gw1"},
		{"-- ends tsh's flags", good, []string{"-l", "pi", "--", "gw1", "echo", "-t"}, 0, "-t\n", "", "pi", "gw1"},
		{"-l wins", good, []string{"-l", "tester", "pi@gw1", "exit 0"}, 0, "", "", "tester", "gw1"},
		{"exit signal", good, []string{"pi@gw1", "kill -TERM"}, 128 + 15, "", "", "pi", "gw1"},
		{"principal with suffix only", device{hostCA: "fleet", principals: []string{"gw1.fleet"}}, []string{"pi@gw1", "exit 0"}, 0, "", "", "pi", "gw1"},
		{"host CA unknown", device{hostCA: "other", principals: []string{"gw1"}}, []string{"pi@gw1", "exit 0"}, 255, "",
			"the host key of gw1 is not a certificate from the fleet's host CA for that name", "pi", "gw1"},
		{"plain host key", device{}, []string{"pi@gw1", "exit 0"}, 255, "",
			"gw1 offered no host certificate, only a plain host key, so it cannot be verified", "pi", "gw1"},
		{"wrong principal", device{hostCA: "fleet", principals: []string{"gw2"}}, []string{"pi@gw1", "exit 0"}, 255, "",
			"the host key of gw1 is not a certificate from the fleet's host CA for that name", "pi", "gw1"},
		{"login denied", good, []string{"root@gw1", "exit 0"}, 255, "",
			`access denied: login "root" on "gw1"; your logins are pi, tester: use tsh ssh LOGIN@gw1`, "", ""},
		{"offline", device{offline: true}, []string{"pi@gw1", "exit 0"}, 255, "",
			`device "gw1" is offline; tsh ls shows when it was last seen`, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.login()
			if !tt.device.offline {
				var hostCA ssh.Signer
				switch tt.device.hostCA {
				case "fleet":
					hostCA = e.fleet.HostCA
				case "other":
					hostCA = pkitest.SSHSigner(t)
				}
				d := newSSHDevice(t, e.fleet.UserCA.PublicKey(), hostCA, tt.device.principals...)
				d.exec = echoExec
				type asked struct{ device, login string }
				got := make(chan asked, 1)
				e.fleet.SetConnect(func(device, login, service string, conn net.Conn) {
					got <- asked{device, login}
					d.serve(device, login, service, conn)
				})
				t.Cleanup(func() {
					select {
					case a := <-got:
						if a.device != tt.wantDevice || a.login != tt.wantLogin {
							t.Errorf("fleet was asked for %s@%s, want %s@%s", a.login, a.device, tt.wantLogin, tt.wantDevice)
						}
					default:
						if tt.wantDevice != "" {
							t.Errorf("fleet was never asked to connect")
						}
					}
				})
			}
			r := e.run(strings.NewReader(""), append([]string{"ssh"}, tt.args...)...)
			if r.code != tt.wantCode {
				t.Errorf("got exit %d, want %d", r.code, tt.wantCode)
			}
			if r.stdout != tt.wantOut {
				t.Errorf("got stdout %q, want %q", r.stdout, tt.wantOut)
			}
			if !strings.Contains(r.stder, tt.wantErr) {
				t.Errorf("got stderr %q, want it to contain %q", r.stder, tt.wantErr)
			}
		})
	}
}

func TestProxySSH(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	type asked struct{ device, login, service string }
	got := make(chan asked, 1)
	// The fake device echoes until its input ends, then closes.
	e.fleet.SetConnect(func(device, login, service string, conn net.Conn) {
		defer conn.Close()
		got <- asked{device, login, service}
		io.Copy(conn, conn)
	})
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	go func() {
		io.WriteString(pw, "SSH-2.0-OpenSSH_9.9\r\nmore bytes")
		pw.Close()
	}()
	r := e.run(pr, "proxy", "ssh", "pi@gw1.fleet:22")
	if r.code != 0 {
		t.Fatalf("got exit %d, want 0", r.code)
	}
	if want := "SSH-2.0-OpenSSH_9.9\r\nmore bytes"; r.stdout != want {
		t.Errorf("got %q, want %q", r.stdout, want)
	}
	if a := <-got; a != (asked{"gw1", "pi", "ssh"}) {
		t.Errorf("fleet was asked for %+v, want gw1 pi ssh", a)
	}
}

func TestSCP(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	d := newSSHDevice(t, e.fleet.UserCA.PublicKey(), e.fleet.HostCA, "gw1")
	d.sftpOK = true
	e.fleet.SetConnect(d.serve)

	local := t.TempDir()
	remote := t.TempDir() // the "device's" file system, served by SFTP
	write := func(path, data string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(data), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(local, "a.txt"), "alpha")
	write(filepath.Join(local, "tree", "sub", "b.txt"), "beta")
	write(filepath.Join(remote, "c.txt"), "gamma")
	write(filepath.Join(remote, "rtree", "d.txt"), "delta")

	tests := []struct {
		name     string
		args     []string
		wantCode int
		check    map[string]string // path: content
		wantErr  string
	}{
		{"upload file", []string{"scp", filepath.Join(local, "a.txt"), "pi@gw1:" + remote + "/"}, 0,
			map[string]string{filepath.Join(remote, "a.txt"): "alpha"}, ""},
		{"upload renamed", []string{"scp", filepath.Join(local, "a.txt"), "pi@gw1:" + remote + "/renamed.txt"}, 0,
			map[string]string{filepath.Join(remote, "renamed.txt"): "alpha"}, ""},
		{"upload dir", []string{"scp", "-r", filepath.Join(local, "tree"), "pi@gw1:" + remote}, 0,
			map[string]string{filepath.Join(remote, "tree", "sub", "b.txt"): "beta"}, ""},
		{"upload dir without -r", []string{"scp", filepath.Join(local, "tree"), "pi@gw1:" + remote}, 1, nil, "is a directory; use -r"},
		{"download file", []string{"scp", "pi@gw1:" + filepath.Join(remote, "c.txt"), local}, 0,
			map[string]string{filepath.Join(local, "c.txt"): "gamma"}, ""},
		{"download dir", []string{"scp", "-r", "pi@gw1:" + filepath.Join(remote, "rtree"), filepath.Join(local, "copy")}, 0,
			map[string]string{filepath.Join(local, "copy", "d.txt"): "delta"}, ""},
		{"two devices", []string{"scp", "gw1:x", "gw2:y"}, 1, nil, "copying between two devices is not supported"},
		{"no remote", []string{"scp", "x", "y"}, 1, nil, "neither x nor the destination is remote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run(strings.NewReader(""), tt.args...)
			if r.code != tt.wantCode {
				t.Fatalf("got exit %d, want %d", r.code, tt.wantCode)
			}
			if !strings.Contains(r.stder, tt.wantErr) {
				t.Errorf("got stderr %q, want it to contain %q", r.stder, tt.wantErr)
			}
			for path, want := range tt.check {
				got, err := os.ReadFile(path)
				if err != nil || !bytes.Equal(got, []byte(want)) {
					t.Errorf("%s: got %q, %v; want %q", path, got, err, want)
				}
				if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() != 0o640 {
					t.Errorf("%s: got mode %v, want 0640", path, fi.Mode().Perm())
				}
			}
		})
	}
}
