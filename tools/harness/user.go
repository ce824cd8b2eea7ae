package harness

import (
	"os"
	"path/filepath"
	"strings"
)

// User is a tsh user with a TSH_HOME of their own.
type User struct {
	tb TB
	// Fleet is the fleet they logged in to.
	Fleet *Fleet
	// Name is their fleet user name; Home their TSH_HOME.
	Name, Home string
}

// NewUser returns user name with a TSH_HOME of their own who has not
// logged in yet: for tests of tsh login itself.
func (f *Fleet) NewUser(name string) *User {
	return &User{tb: f.tb, Fleet: f, Name: name, Home: f.tb.TempDir()}
}

// Login logs user name in with tsh (extra flags after the usual ones) and
// fails the TB when tsh fails.
func (f *Fleet) Login(name, password string, extra ...string) *User {
	f.tb.Helper()
	u := f.NewUser(name)
	out, errOut, err := u.TshErr(password+"\n", append([]string{"login", "--proxy=" + f.Addr, "--user=" + name, "--ca-pin=" + f.Pin}, extra...)...)
	if err != nil {
		f.tb.Fatalf("tsh login %s: %v\n%s\n%s", name, err, out, errOut)
	}
	return u
}

// Env is the environment of the user's programs: their TSH_HOME.
func (u *User) Env() []string { return []string{"TSH_HOME=" + u.Home} }

// Tsh runs tsh as the user and returns its stdout; it fails the TB when
// tsh fails.
func (u *User) Tsh(args ...string) string {
	u.tb.Helper()
	out, errOut, err := u.TshErr("", args...)
	if err != nil {
		u.tb.Fatalf("tsh %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// TshErr runs tsh as the user with stdin and returns its stdout, stderr
// and how it ended.
func (u *User) TshErr(stdin string, args ...string) (stdout, stderr string, err error) {
	r, err := RunErr(u.tb.Context(), stdin, Cmd{Path: u.Fleet.Bin.Path("tsh"), Args: args, Env: u.Env()})
	return r.Stdout, r.Stderr, err
}

// SSHConfig writes the OpenSSH configuration tsh config prints into the
// user's home and returns its path, for ssh -F.
func (u *User) SSHConfig() string {
	u.tb.Helper()
	path := filepath.Join(u.Home, "ssh_config")
	if err := os.WriteFile(path, []byte(u.Tsh("config")), 0o600); err != nil {
		u.tb.Fatalf("write tsh config: %v", err)
	}
	return path
}
