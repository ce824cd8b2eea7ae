package tsh

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/client/clienttest"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

func TestLogin(t *testing.T) {
	tests := []struct {
		name       string
		user       clienttest.User
		stdin      string
		args       func(e *testEnv) []string
		wantCode   int
		wantErr    string // in stderr
		wantLogins int    // login requests the fleet saw
	}{
		{
			name:       "password on stdin",
			stdin:      "s3cret\n",
			args:       func(e *testEnv) []string { return []string{"--ca-pin=" + e.fleet.Pin} },
			wantLogins: 1,
		},
		{
			name:       "password without newline",
			stdin:      "s3cret",
			args:       func(e *testEnv) []string { return []string{"--ca-pin", e.fleet.Pin} },
			wantLogins: 1,
		},
		{
			name:       "TOTP retry",
			user:       clienttest.User{TOTP: "424242"},
			stdin:      "s3cret\n424242\n",
			args:       func(e *testEnv) []string { return []string{"--ca-pin=" + e.fleet.Pin} },
			wantLogins: 2,
		},
		{
			name:       "wrong TOTP",
			user:       clienttest.User{TOTP: "424242"},
			stdin:      "s3cret\n000000\n",
			args:       func(e *testEnv) []string { return []string{"--ca-pin=" + e.fleet.Pin} },
			wantCode:   1,
			wantErr:    "wrong TOTP code; check your user name, password and TOTP code, and try again",
			wantLogins: 2,
		},
		{
			name:       "TOTP missing on stdin",
			user:       clienttest.User{TOTP: "424242"},
			stdin:      "s3cret\n",
			args:       func(e *testEnv) []string { return []string{"--ca-pin=" + e.fleet.Pin} },
			wantCode:   1,
			wantErr:    "read TOTP code: standard input ended",
			wantLogins: 1,
		},
		{
			name:       "wrong password",
			stdin:      "nope\n",
			args:       func(e *testEnv) []string { return []string{"--ca-pin=" + e.fleet.Pin} },
			wantCode:   1,
			wantErr:    "tsh: login: wrong user name or password; check your user name, password and TOTP code, and try again",
			wantLogins: 1,
		},
		{
			name:  "wrong pin",
			stdin: "s3cret\n",
			args: func(e *testEnv) []string {
				return []string{"--ca-pin=" + pin.Of(clienttest.NewCA(t, "other").Cert)}
			},
			wantCode: 1,
			wantErr:  "does not match the pin",
		},
		{
			name:       "insecure",
			stdin:      "s3cret\n",
			args:       func(e *testEnv) []string { return []string{"--insecure"} },
			wantErr:    "development only",
			wantLogins: 1,
		},
		{
			name:     "first login trusts only system roots",
			stdin:    "s3cret\n",
			args:     func(e *testEnv) []string { return nil },
			wantCode: 1,
			wantErr:  "does not trust",
		},
		{
			name:     "pin and insecure",
			args:     func(e *testEnv) []string { return []string{"--insecure", "--ca-pin=" + e.fleet.Pin} },
			wantCode: 1,
			wantErr:  "use --ca-pin or --insecure, not both",
		},
		{
			name:     "empty password",
			stdin:    "\n",
			args:     func(e *testEnv) []string { return []string{"--ca-pin=" + e.fleet.Pin} },
			wantCode: 1,
			wantErr:  "empty password",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			u := tt.user
			u.Password, u.Roles, u.Logins = "s3cret", []string{"dev"}, []string{"pi"}
			e.fleet.AddUser("alice", u)
			args := append([]string{"login", "--proxy=" + e.fleet.Addr, "--user=alice"}, tt.args(e)...)
			r := e.run(strings.NewReader(tt.stdin), args...)
			if r.code != tt.wantCode {
				t.Fatalf("got exit %d, want %d; stderr: %s", r.code, tt.wantCode, r.stder)
			}
			if !strings.Contains(r.stder, tt.wantErr) {
				t.Errorf("got stderr %q, want it to contain %q", r.stder, tt.wantErr)
			}
			logins := e.fleet.Logins()
			if len(logins) != tt.wantLogins {
				t.Fatalf("fleet saw %d logins, want %d", len(logins), tt.wantLogins)
			}
			if tt.wantCode != 0 {
				if _, err := os.Stat(filepath.Join(e.home, "current")); err == nil {
					t.Error("a failed login left a current profile")
				}
				return
			}
			if tt.user.TOTP != "" && logins[1].TOTP != tt.user.TOTP {
				t.Errorf("second login sent TOTP %q, want %q", logins[1].TOTP, tt.user.TOTP)
			}
			if logins[0].TTL != 8*time.Hour || logins[0].User != "alice" || logins[0].Password != "s3cret" {
				t.Errorf("login request %+v, want alice, s3cret, 8h", logins[0])
			}
			for _, want := range []string{`Logged in to the fleet "fleet" at ` + e.fleet.Addr + " as alice.", "Roles:       dev", "Logins:      pi", "Valid until:"} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("stdout lacks %q", want)
				}
			}
		})
	}
}

func TestLoginFiles(t *testing.T) {
	e := newTestEnv(t)
	// A line of the user's own must survive login and logout.
	own := "gw9.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
	if err := os.WriteFile(filepath.Join(e.home, "known_hosts"), []byte(own), 0o644); err != nil {
		t.Fatal(err)
	}
	e.login()
	dir := filepath.Join(e.home, "keys", e.fleet.Addr, "alice")
	files := []struct {
		name string
		perm os.FileMode
	}{
		{"key", 0o600}, {"key.pub", 0o644}, {"key-cert.pub", 0o644}, {"tls.key", 0o600},
		{"tls.crt", 0o644}, {"cas.pem", 0o644}, {"profile.json", 0o600},
	}
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Errorf("%s: %v", f.name, err)
			continue
		}
		if got := fi.Mode().Perm(); got != f.perm {
			t.Errorf("%s: got mode %v, want %v", f.name, got, f.perm)
		}
	}
	for _, d := range []string{e.home, dir} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: want mode 0700, got %v (%v)", d, fi.Mode().Perm(), err)
		}
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, "key"))
	if _, err := ssh.ParsePrivateKey(keyPEM); err != nil {
		t.Errorf("key is not an OpenSSH private key: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(e.home, "current")); string(got) != e.fleet.Addr+"/alice\n" {
		t.Errorf("current: got %q, want %q", got, e.fleet.Addr+"/alice\n")
	}
	data, _ := os.ReadFile(filepath.Join(dir, "profile.json"))
	var p profile
	if err := json.Unmarshal(data, &p); err != nil {
		t.Fatal(err)
	}
	hostCA := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(e.fleet.HostCA.PublicKey())))
	if p.Proxy != e.fleet.Addr || p.User != "alice" || p.Cluster != "fleet" || p.CAPin != e.fleet.Pin ||
		len(p.HostCAKeys) != 1 || p.HostCAKeys[0] != hostCA || p.Expires.Before(time.Now().Add(7*time.Hour)) {
		t.Errorf("profile.json: got %+v", p)
	}
	kh, _ := os.ReadFile(filepath.Join(e.home, "known_hosts"))
	wantKH := own + "@cert-authority *.fleet " + hostCA + " tsh:" + e.fleet.Addr + "/alice\n"
	if string(kh) != wantKH {
		t.Errorf("known_hosts:\ngot  %q\nwant %q", kh, wantKH)
	}

	// A second login reuses the saved CA: no pin needed, and known_hosts
	// keeps one line per host CA key.
	if r := e.run(strings.NewReader("s3cret\n"), "login", "--proxy="+e.fleet.Addr, "--user=alice"); r.code != 0 {
		t.Fatalf("second login: exit %d", r.code)
	}
	if kh, _ := os.ReadFile(filepath.Join(e.home, "known_hosts")); string(kh) != wantKH {
		t.Errorf("known_hosts after a second login:\ngot  %q\nwant %q", kh, wantKH)
	}

	r := e.run(nil, "status")
	if r.code != 0 || !strings.Contains(r.stdout, "> alice at "+e.fleet.Addr+` (fleet "fleet")`) {
		t.Errorf("status: exit %d, stdout %q", r.code, r.stdout)
	}

	r = e.run(nil, "logout")
	if r.code != 0 || !strings.Contains(r.stdout, "Logged out alice from "+e.fleet.Addr) {
		t.Errorf("logout: exit %d, stdout %q", r.code, r.stdout)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("logout left %s (%v)", dir, err)
	}
	if _, err := os.Stat(filepath.Join(e.home, "current")); !os.IsNotExist(err) {
		t.Errorf("logout left current (%v)", err)
	}
	if kh, _ := os.ReadFile(filepath.Join(e.home, "known_hosts")); string(kh) != own {
		t.Errorf("known_hosts after logout: got %q, want only %q", kh, own)
	}
	r = e.run(nil, "status")
	if r.code != 1 || !strings.Contains(r.stder, "not logged in; run tsh login --proxy=HOST:PORT --user=NAME") {
		t.Errorf("status after logout: exit %d, stderr %q", r.code, r.stder)
	}
}

func TestNotLoggedIn(t *testing.T) {
	e := newTestEnv(t)
	for _, args := range [][]string{{"ls"}, {"config"}, {"proxy", "ssh", "gw1"}, {"scp", "a", "gw1:b"}} {
		r := e.run(nil, args...)
		if r.code != 1 || !strings.Contains(r.stder, "not logged in; run tsh login") {
			t.Errorf("tsh %v: exit %d, stderr %q; want 1 and a hint to log in", args, r.code, r.stder)
		}
	}
	if r := e.run(nil, "ssh", "gw1"); r.code != 255 || !strings.Contains(r.stder, "not logged in") {
		t.Errorf("tsh ssh: exit %d, stderr %q; want 255 and a hint to log in", r.code, r.stder)
	}
}

func TestExpired(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	var out strings.Builder
	code := Main(t.Context(), []string{"ls"}, Stdio{
		In: strings.NewReader(""), Out: &out, Err: &out,
		Getenv: func(k string) string { return e.env[k] },
		Now:    func() time.Time { return time.Now().Add(9 * time.Hour) },
	})
	if code != 1 || !strings.Contains(out.String(), "your certificate expired at ") || !strings.Contains(out.String(), "; run tsh login --proxy="+e.fleet.Addr+" --user=alice") {
		t.Errorf("got exit %d, output %q; want the expiry and how to log in", code, out.String())
	}
}

func TestLs(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	now := time.Now()
	e.fleet.SetDevices(
		api.Device{ID: "d2", Name: "gw2", Labels: map[string]string{"site": "south"}, LastSeen: now.Add(-3 * time.Hour), AgentVersion: "1.0.0"},
		api.Device{ID: "d1", Name: "gw1", Labels: map[string]string{"site": "north", "env": "prod"}, Online: true, LastSeen: now.Add(-5 * time.Second), AgentVersion: "1.1.0", OS: "linux", Arch: "arm64"},
	)
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // lines of stdout, spaces squeezed
	}{
		{"all", []string{"ls"}, 0, []string{
			"NAME LABELS STATUS MODE LAST SEEN VERSION",
			"gw1 env=prod,site=north online tunnel 5s ago 1.1.0",
			"gw2 site=south offline tunnel 3h ago 1.0.0",
		}},
		{"label", []string{"ls", "site=north"}, 0, []string{
			"NAME LABELS STATUS MODE LAST SEEN VERSION",
			"gw1 env=prod,site=north online tunnel 5s ago 1.1.0",
		}},
		{"verbose", []string{"ls", "-v", "site=south"}, 0, []string{
			"NAME ID LABELS STATUS MODE LAST SEEN VERSION TARGET UPDATE OS/ARCH ADDRESS JOINED RTT LOSS RECONNECTS SENT/RECEIVED ADDRESS CHANGED LOGINS",
			"gw2 d2 site=south offline tunnel 3h ago 1.0.0 - - - - never - - 0 - - -",
		}},
		{"bad selector", []string{"ls", "north"}, 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run(nil, tt.args...)
			if r.code != tt.wantCode {
				t.Fatalf("got exit %d, want %d", r.code, tt.wantCode)
			}
			var got []string
			for line := range strings.Lines(r.stdout) {
				got = append(got, strings.Join(strings.Fields(line), " "))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
	t.Run("json", func(t *testing.T) {
		r := e.run(nil, "ls", "--format=json", "env=prod")
		var got api.List[api.Device]
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.Kind != "devices" || len(got.Items) != 1 || got.Items[0].Name != "gw1" || got.Truncated {
			t.Errorf("got %s (%v), want gw1 only, not truncated", r.stdout, err)
		}
		r = e.run(nil, "ls", "--format=json", "env=none")
		want := `{
  "kind": "devices",
  "items": [],
  "truncated": false
}
`
		if r.stdout != want {
			t.Errorf("got %q, want %q", r.stdout, want)
		}
	})
}

func TestConfig(t *testing.T) {
	const golden = `# Remoteler edge: devices of the fleet "fleet" at {{PROXY}} as DEVICE.fleet (written by tsh config)
Host *.fleet
    Port 22
    IdentityFile "{{HOME}}/keys/{{PROXY}}/alice/key"
    CertificateFile "{{HOME}}/keys/{{PROXY}}/alice/key-cert.pub"
    IdentitiesOnly yes
    UserKnownHostsFile "{{HOME}}/known_hosts"
    StrictHostKeyChecking yes
    ProxyCommand {{ENV}}/opt/remoteler/bin/tsh proxy ssh %r@%h:%p
`
	tests := []struct {
		name    string
		tshHome bool
	}{
		{"TSH_HOME set", true},
		{"default home", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			home := e.home
			if !tt.tshHome {
				e.env["HOME"] = e.home
				delete(e.env, "TSH_HOME")
				home = filepath.Join(e.home, ".tsh")
			}
			e.login()
			r := e.run(nil, "config")
			env := ""
			if tt.tshHome {
				env = "env TSH_HOME=" + shellQuote(home) + " "
			}
			want := strings.NewReplacer("{{PROXY}}", e.fleet.Addr, "{{HOME}}", home, "{{ENV}}", env).Replace(golden)
			if r.code != 0 || r.stdout != want {
				t.Errorf("exit %d; got\n%s\nwant\n%s", r.code, r.stdout, want)
			}
		})
	}
}

func TestQuote(t *testing.T) {
	tests := []struct{ in, shell, sshConfig string }{
		{"/usr/bin/tsh", "/usr/bin/tsh", `"/usr/bin/tsh"`},
		{"/home/a b/tsh", `'/home/a b/tsh'`, `"/home/a b/tsh"`},
		{"/x/it's", `'/x/it'\''s'`, `"/x/it's"`},
		{"/x/100%", "/x/100%%", `"/x/100%%"`},
		{"/x/$HOME", `'/x/$HOME'`, `"/x/$HOME"`},
	}
	for _, tt := range tests {
		if got := shellQuote(tt.in); got != tt.shell {
			t.Errorf("shellQuote(%q) = %q, want %q", tt.in, got, tt.shell)
		}
		if got, err := sshConfigQuote(tt.in); got != tt.sshConfig || err != nil {
			t.Errorf("sshConfigQuote(%q) = %q, %v; want %q", tt.in, got, err, tt.sshConfig)
		}
	}
	if _, err := sshConfigQuote(`/x/"y`); err == nil {
		t.Error(`sshConfigQuote accepted a path with a double quote`)
	}
}

func TestParseSpec(t *testing.T) {
	tests := []struct {
		in   string
		want scpSpec
	}{
		{"file.txt", scpSpec{path: "file.txt"}},
		{"./a:b", scpSpec{path: "./a:b"}},
		{"/abs/a:b", scpSpec{path: "/abs/a:b"}},
		{"gw1:/tmp/x", scpSpec{remote: true, device: "gw1", path: "/tmp/x"}},
		{"pi@gw1.fleet:x", scpSpec{remote: true, login: "pi", device: "gw1", path: "x"}},
		{"gw1:", scpSpec{remote: true, device: "gw1"}},
		{":x", scpSpec{path: ":x"}},
	}
	for _, tt := range tests {
		if got := parseSpec(tt.in, "fleet"); got != tt.want {
			t.Errorf("parseSpec(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestStatusJSON(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	r := e.run(nil, "status", "--format=json")
	var got api.List[struct {
		Proxy   string    `json:"proxy"`
		User    string    `json:"user"`
		Logins  []string  `json:"logins"`
		Expires time.Time `json:"expires"`
		Current bool      `json:"current"`
	}]
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 0 || got.Kind != "profiles" || len(got.Items) != 1 {
		t.Fatalf("exit %d, %v: %s", r.code, err, r.stdout)
	}
	if p := got.Items[0]; p.User != "alice" || p.Proxy != e.fleet.Addr || !p.Current || len(p.Logins) != 2 || p.Expires.IsZero() {
		t.Errorf("got %+v", p)
	}
}
