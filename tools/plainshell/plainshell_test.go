package plainshell

import (
	"os"
	"os/user"
	"slices"
	"strings"
	"testing"
)

func TestRewrite(t *testing.T) {
	in := "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000::/home/bob:/bin/zsh\n# comment\nbroken:line\n"
	tests := []struct {
		name, login, want string
	}{
		{"root", "root", "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/zsh\n# comment\nbroken:line\n"},
		{"other user", "bob", "root:x:0:0:root:/root:/bin/bash\nbob:x:1000:1000::/home/bob:/bin/sh\n# comment\nbroken:line\n"},
		{"absent", "carol", in},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Rewrite(in, tt.login, "/bin/sh"); got != tt.want {
				t.Errorf("Rewrite(%q) =\n%s\nwant\n%s", tt.login, got, tt.want)
			}
		})
	}
}

func TestFile(t *testing.T) {
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	path, err := File()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Split(line, ":"); len(f) == 7 && f[0] == u.Username {
			found = true
			if f[6] != Shell {
				t.Errorf("%s's shell = %q; want %q", u.Username, f[6], Shell)
			}
		}
	}
	if !found {
		t.Errorf("no line for %s in %s", u.Username, path)
	}
}

func TestEnv(t *testing.T) {
	path, err := File()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Env([]string{"A=1"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"A=1", EnvVar + "=" + path}; !slices.Equal(got, want) {
		t.Errorf("Env = %q; want %q", got, want)
	}
	own := []string{EnvVar + "=/etc/passwd"}
	if got, _ := Env(own); !slices.Equal(got, own) {
		t.Errorf("Env kept %q as %q; want it as it was", own, got)
	}
}
