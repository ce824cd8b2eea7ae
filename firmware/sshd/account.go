package sshd

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// account is the Unix account a login's sessions run as.
type account struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32 // supplementary groups, including gid
	home   string   // the home directory, or "/" when it does not exist
	shell  string   // the login shell
	// switchUser is set when the agent runs as root and sessions must
	// take on this account's credentials; otherwise the account is the
	// agent's own and sessions inherit its credentials.
	switchUser bool
}

// accountError is why a login has no account here. It is shown to the
// user, so it says what is wrong in the user's terms.
type accountError string

func (e accountError) Error() string { return string(e) }

// lookupAccount finds the Unix account for login. An agent that does not
// run as root serves only its own user's login.
func (s *Server) lookupAccount(login string) (*account, error) {
	u, err := user.Lookup(login)
	if err != nil {
		return nil, accountError(fmt.Sprintf("there is no user %q on this device", login))
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, accountError(fmt.Sprintf("user %q has a non-numeric uid or gid", login))
	}
	euid := s.cfg.geteuid()
	if euid != 0 && uint64(euid) != uid {
		return nil, accountError(fmt.Sprintf("the agent on this device runs as uid %d and can only serve that user's login, not %q", euid, login))
	}
	a := &account{
		name:       u.Username,
		uid:        uint32(uid),
		gid:        uint32(gid),
		groups:     []uint32{uint32(gid)},
		home:       u.HomeDir,
		shell:      s.cfg.Shell,
		switchUser: euid == 0,
	}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(g) != a.gid {
				a.groups = append(a.groups, uint32(g))
			}
		}
	}
	if fi, err := os.Stat(a.home); err != nil || !fi.IsDir() {
		a.home = "/"
	}
	if sh := readPasswdShell(s.cfg.PasswdFile, login); sh != "" {
		a.shell = sh
	}
	// As OpenSSH: an account whose shell cannot run cannot log in. (One
	// whose shell refuses logins, like nologin, can: its shell then tells
	// the user so, for every command.)
	if fi, err := os.Stat(a.shell); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return nil, accountError(fmt.Sprintf("user %q cannot log in on this device: their shell %s does not exist or cannot run", login, a.shell))
	}
	return a, nil
}

// maxPasswdSize bounds how much of the passwd file is read.
const maxPasswdSize = 4 << 20

// readPasswdShell returns the login shell that the passwd file at path
// names for login, or "" when it names none or cannot be read. (os/user
// does not report shells.)
func readPasswdShell(path, login string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPasswdSize))
	if err != nil {
		return ""
	}
	return passwdShell(data, login)
}

// passwdShell returns the shell field of login's entry in data, in
// passwd(5) format, or "" when there is none.
func passwdShell(data []byte, login string) string {
	if login == "" || strings.ContainsAny(login, ":\n") {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 64<<10)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) == 7 && f[0] == login {
			return strings.TrimSpace(f[6])
		}
	}
	return ""
}
