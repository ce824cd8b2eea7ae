// Package plainshell gives tests a passwd file in which the user running
// them has a plain POSIX shell, so that login shells the device's SSH
// server starts in tests do not depend on the host's dotfiles.
//
// A test of the device's SSH server logs in as the user running the test
// (root, in CI) and so runs that user's login shell, which reads the
// user's ~/.profile and ~/.bashrc. Whatever those do (a version manager's
// init that waits a minute for a lock a killed shell left behind, say)
// then shows up as a hung test. The agent reads login shells from the file
// its sshd is given (sshd.Config.PasswdFile; EDGE_AGENT_PASSWD for
// edge-agent), so tests give it a copy of /etc/passwd in which the test's
// user has /bin/sh, which as a login shell reads /etc/profile and
// ~/.profile but not ~/.bashrc.
package plainshell

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// Shell is the login shell the current user has in File's passwd file.
const Shell = "/bin/sh"

// EnvVar names the passwd file edge-agent reads login shells from.
const EnvVar = "EDGE_AGENT_PASSWD"

var (
	once     sync.Once
	filePath string
	fileErr  error
)

// File returns the path of a copy of /etc/passwd in which the current
// user's login shell is Shell. It is written once a process, to a name in
// the temporary directory that is the same for every process of the user
// (each writes the same bytes, and renames its copy into place).
func File() (string, error) {
	once.Do(func() { filePath, fileErr = write() })
	return filePath, fileErr
}

func write() (string, error) {
	u, err := user.Current()
	if err != nil {
		return "", fmt.Errorf("plainshell: %w", err)
	}
	data, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "", fmt.Errorf("plainshell: %w", err)
	}
	path := filepath.Join(os.TempDir(), "edge-plainshell-"+u.Uid+".passwd")
	tmp, err := os.CreateTemp(os.TempDir(), "edge-plainshell-*.tmp")
	if err != nil {
		return "", fmt.Errorf("plainshell: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(Rewrite(string(data), u.Username, Shell))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return "", fmt.Errorf("plainshell: %w", err)
	}
	return path, nil
}

// Env returns env with EnvVar set to File, unless env sets it already.
func Env(env []string) ([]string, error) {
	if slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, EnvVar+"=") }) {
		return env, nil
	}
	path, err := File()
	if err != nil {
		return env, err
	}
	return append(slices.Clip(env), EnvVar+"="+path), nil
}

// Rewrite returns passwd with login's shell (the seventh field) set to
// shell; other lines are kept as they are.
func Rewrite(passwd, login, shell string) string {
	lines := strings.Split(passwd, "\n")
	for i, line := range lines {
		f := strings.Split(line, ":")
		if len(f) == 7 && f[0] == login {
			f[6] = shell
			lines[i] = strings.Join(f, ":")
		}
	}
	return strings.Join(lines, "\n")
}
