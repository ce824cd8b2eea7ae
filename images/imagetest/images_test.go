package imagetest

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// imagesDir returns images/ in the repository (the tests run in
// images/imagetest).
func imagesDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// need fails the test unless each tool is on PATH. It also opens the
// directories of images/, so that `go test` reruns these tests when a
// script or unit changes (they are read by subprocesses, which the test
// cache does not see).
func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, d := range []string{"device", "fleet"} {
		if _, err := os.ReadDir(filepath.Join(imagesDir(t), d)); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found on PATH: run tools/setup/setup.sh", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// unitFile parses the settings of a systemd unit: section.Key -> values.
func unitFile(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	settings := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: malformed line %q", path, line)
			}
			settings[section+"."+k] = append(settings[section+"."+k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return settings
}

func TestUnitSettings(t *testing.T) {
	need(t)
	tests := []struct {
		unit   string
		want   map[string]string
		absent []string
	}{
		{
			unit: "device/edge-agent.service",
			want: map[string]string{
				"Service.Type":           "notify",
				"Service.NotifyAccess":   "main",
				"Service.WatchdogSec":    "30s",
				"Service.Restart":        "always",
				"Service.RestartSec":     "5s",
				"Service.StateDirectory": "edge-agent",
				"Service.ExecStart":      "/usr/local/bin/edge-agent start --config /etc/edge-agent/config.yaml",
				// OTA: the kept old binary checks the last update before
				// every start and puts itself back after a failed one
				// (firmware/update); "-" tolerates its absence.
				"Service.ExecStartPre":     "-/usr/local/bin/.edge-agent.prev update-check --config /etc/edge-agent/config.yaml",
				"Install.WantedBy":         "multi-user.target",
				"Unit.ConditionPathExists": "/etc/edge-agent/config.yaml",
			},
			// Each would break sessions; the unit says why in comments.
			absent: []string{"Service.NoNewPrivileges", "Service.ProtectHome", "Service.PrivateUsers", "Service.ProtectSystem", "Service.User", "Service.DynamicUser", "Service.PrivateTmp"},
		},
		{
			unit: "fleet/fleetd.service",
			want: map[string]string{
				"Service.DynamicUser":    "yes",
				"Service.StateDirectory": "fleetd",
				"Service.ProtectSystem":  "strict",
				"Install.WantedBy":       "multi-user.target",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			path := filepath.Join(imagesDir(t), tt.unit)
			got := unitFile(t, path)
			for k, want := range tt.want {
				if v := got[k]; len(v) != 1 || v[0] != want {
					t.Errorf("%s = %q, want %q", k, v, want)
				}
			}
			for _, k := range tt.absent {
				if v, ok := got[k]; ok {
					t.Errorf("%s = %q is set; sessions cannot live with it", k, v)
				}
				// The reason must be written down in the unit.
				opt := strings.SplitN(k, ".", 2)[1] + "="
				data, _ := os.ReadFile(path)
				if !bytes.Contains(data, []byte(opt)) {
					t.Errorf("%s: omitted option %s not documented in a comment", tt.unit, opt)
				}
			}
		})
	}
}

// TestUnitsVerify runs systemd-analyze verify on each unit with its
// ExecStart binary replaced by one that exists here, and fails on any
// warning it prints.
func TestUnitsVerify(t *testing.T) {
	need(t, "systemd-analyze")
	stub, err := exec.LookPath("true")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ unit, binary string }{
		{"device/edge-agent.service", "/usr/local/bin/edge-agent"},
		{"fleet/fleetd.service", "/usr/local/bin/fleetd"},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(imagesDir(t), tt.unit))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte("ExecStart="+tt.binary+" ")) {
				t.Fatalf("ExecStart does not start %s", tt.binary)
			}
			dir := t.TempDir()
			path := filepath.Join(dir, filepath.Base(tt.unit))
			data = bytes.ReplaceAll(data, []byte("ExecStart="+tt.binary), []byte("ExecStart="+stub))
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("systemd-analyze", "verify", path)
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("systemd-analyze verify %s: err %v, output:\n%s", tt.unit, err, out)
			}
		})
	}
}

// entry is what the tests check of one file in an installed tree.
type entry struct {
	mode     fs.FileMode // type and permission bits
	uid, gid int
	link     string // symlink target
	data     string // file contents
}

// tree reads every file, directory and symlink under root.
func tree(t *testing.T, root string) map[string]entry {
	t.Helper()
	got := map[string]entry{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		e := entry{mode: fi.Mode() & (fs.ModeType | fs.ModePerm), uid: int(st.Uid), gid: int(st.Gid)}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			e.link, err = os.Readlink(path)
		case fi.Mode().IsRegular():
			var b []byte
			b, err = os.ReadFile(path)
			e.data = string(b)
		}
		got["/"+rel] = e
		return err
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return got
}

func TestInstall(t *testing.T) {
	need(t, "bash", "install")
	images := imagesDir(t)
	unit := readFile(t, filepath.Join(images, "device/edge-agent.service"))
	example := readFile(t, filepath.Join(images, "device/config.example.yaml"))
	work := t.TempDir()
	binary := writeFile(t, filepath.Join(work, "edge-agent-linux-arm64"), "\x7fELF fake agent", 0o644)
	config := writeFile(t, filepath.Join(work, "config.yaml"), "fleet: f.example:443\ntoken: secret\n", 0o644)

	// Installed files belong to root when the installer runs as root (the
	// normal case); otherwise to whoever ran it.
	uid, gid := os.Getuid(), os.Getgid()
	dir := func() entry { return entry{mode: fs.ModeDir | 0o755, uid: uid, gid: gid} }
	base := map[string]entry{
		"/etc":                                        dir(),
		"/etc/edge-agent":                             dir(),
		"/etc/edge-agent/config.example.yaml":         {mode: 0o644, uid: uid, gid: gid, data: example},
		"/etc/systemd":                                dir(),
		"/etc/systemd/system":                         dir(),
		"/etc/systemd/system/edge-agent.service":      {mode: 0o644, uid: uid, gid: gid, data: unit},
		"/etc/systemd/system/multi-user.target.wants": dir(),
		"/etc/systemd/system/multi-user.target.wants/edge-agent.service": {
			mode: fs.ModeSymlink | 0o777, uid: uid, gid: gid, link: "/etc/systemd/system/edge-agent.service"},
		"/usr":                      dir(),
		"/usr/local":                dir(),
		"/usr/local/bin":            dir(),
		"/usr/local/bin/edge-agent": {mode: 0o755, uid: uid, gid: gid, data: "\x7fELF fake agent"},
	}
	withConfig := merge(base, map[string]entry{
		"/etc/edge-agent/config.yaml": {mode: 0o600, uid: uid, gid: gid, data: "fleet: f.example:443\ntoken: secret\n"},
	})

	tests := []struct {
		name string
		args []string
		env  []string
		want map[string]entry
	}{
		{"image without config", []string{"--root", "ROOT", "--binary", binary}, nil, base},
		{"with config", []string{"--root=ROOT", "--binary=" + binary, "--config", config}, nil, withConfig},
		{"DESTDIR", []string{"--binary", binary}, []string{"DESTDIR=ROOT"}, base},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "rootfs")
			for run := 1; run <= 2; run++ { // the second run must change nothing
				args := []string{filepath.Join(images, "device/install.sh")}
				for _, a := range tt.args {
					args = append(args, strings.ReplaceAll(a, "ROOT", root))
				}
				cmd := exec.Command("bash", args...)
				cmd.Env = os.Environ()
				for _, e := range tt.env {
					cmd.Env = append(cmd.Env, strings.ReplaceAll(e, "ROOT", root))
				}
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("run %d: install.sh: %v\n%s", run, err, out)
				}
				compareTree(t, tree(t, root), tt.want, run)
			}
		})
	}

	t.Run("keeps existing config", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "rootfs")
		run(t, "bash", filepath.Join(images, "device/install.sh"), "--root", root, "--binary", binary, "--config", config)
		run(t, "bash", filepath.Join(images, "device/install.sh"), "--root", root, "--binary", binary)
		compareTree(t, tree(t, root), withConfig, 2)
	})

	t.Run("refuses a missing binary", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "rootfs")
		cmd := exec.Command("bash", filepath.Join(images, "device/install.sh"), "--root", root, "--binary", filepath.Join(work, "nope"))
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || !strings.Contains(string(out), "not found") {
			t.Errorf("install.sh with a missing binary: err %v, output %q; want a failure naming the problem", err, out)
		}
		if _, err := os.Stat(root); err == nil {
			t.Errorf("install.sh wrote %s before failing", root)
		}
	})
}

func compareTree(t *testing.T, got, want map[string]entry, run int) {
	t.Helper()
	for _, p := range sortedKeys(want) {
		g, ok := got[p]
		switch {
		case !ok:
			t.Errorf("run %d: %s missing", run, p)
		case g != want[p]:
			t.Errorf("run %d: %s = %+v, want %+v", run, p, g, want[p])
		}
	}
	for _, p := range sortedKeys(got) {
		if _, ok := want[p]; !ok {
			t.Errorf("run %d: unexpected %s (%v)", run, p, got[p].mode)
		}
	}
}

func TestRootfsTarball(t *testing.T) {
	need(t, "bash", "tar", "gzip")
	images := imagesDir(t)
	work := t.TempDir()
	binary := writeFile(t, filepath.Join(work, "agent"), "\x7fELF fake agent", 0o755)
	const epoch = 1700000000 // SOURCE_DATE_EPOCH: make image passes the commit time
	build := func(name string) []byte {
		out := filepath.Join(t.TempDir(), name)
		cmd := exec.Command("bash", filepath.Join(images, "device/rootfs.sh"), binary, out)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("rootfs.sh: %v\n%s", err, b)
		}
		return []byte(readFile(t, out))
	}
	a, b := build("a.tar.gz"), build("b.tar.gz")
	if !bytes.Equal(a, b) {
		t.Errorf("two builds of the same tarball differ (%d and %d bytes)", len(a), len(b))
	}

	type hdr struct {
		typ      byte
		mode     int64
		uid, gid int
		link     string
		size     int64
	}
	want := []struct {
		name string
		hdr  hdr
	}{
		{"etc/edge-agent/", hdr{tar.TypeDir, 0o755, 0, 0, "", 0}},
		{"etc/edge-agent/config.example.yaml", hdr{tar.TypeReg, 0o644, 0, 0, "", int64(len(readFile(t, filepath.Join(images, "device/config.example.yaml"))))}},
		{"etc/systemd/system/edge-agent.service", hdr{tar.TypeReg, 0o644, 0, 0, "", int64(len(readFile(t, filepath.Join(images, "device/edge-agent.service"))))}},
		{"etc/systemd/system/multi-user.target.wants/edge-agent.service", hdr{tar.TypeSymlink, 0o777, 0, 0, "/etc/systemd/system/edge-agent.service", 0}},
		{"usr/local/bin/edge-agent", hdr{tar.TypeReg, 0o755, 0, 0, "", int64(len("\x7fELF fake agent"))}},
	}
	zr, err := gzip.NewReader(bytes.NewReader(a))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header has name %q, time %v; want neither", zr.Name, zr.ModTime)
	}
	tr := tar.NewReader(zr)
	var names []string
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.ModTime.Unix() != epoch {
			t.Errorf("%s: mtime %v, want SOURCE_DATE_EPOCH %d", h.Name, h.ModTime, epoch)
		}
		if h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner names %q/%q, want numeric root only", h.Name, h.Uname, h.Gname)
		}
		if i >= len(want) {
			t.Errorf("unexpected entry %s", h.Name)
			continue
		}
		got := hdr{h.Typeflag, h.Mode, h.Uid, h.Gid, h.Linkname, h.Size}
		if h.Name != want[i].name || got != want[i].hdr {
			t.Errorf("entry %d = %s %+v, want %s %+v", i, h.Name, got, want[i].name, want[i].hdr)
		}
	}
	if len(names) != len(want) {
		t.Errorf("tarball has %d entries %q, want %d", len(names), names, len(want))
	}
	if !slices.IsSorted(names) {
		t.Errorf("entries not sorted: %q", names)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, data string, mode fs.FileMode) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func merge(a, b map[string]entry) map[string]entry {
	m := maps.Clone(a)
	maps.Copy(m, b)
	return m
}

func sortedKeys(m map[string]entry) []string {
	return slices.Sorted(maps.Keys(m))
}
