package layering

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

const module = "remoteler.dev/edge"

// Package is the part of `go list -json` output the rules read.
type Package struct {
	ImportPath   string
	Name         string
	Doc          string
	Standard     bool
	DepOnly      bool
	GoFiles      []string
	TestGoFiles  []string
	XTestGoFiles []string
	Imports      []string
	Deps         []string
	Module       *struct {
		Path    string
		Version string
		Main    bool
		Replace *struct{ Path, Version string }
	}
	Error *struct{ Err string }
}

// inProject reports whether p is one of this module's packages.
func (p *Package) inProject() bool {
	return p.ImportPath == module || strings.HasPrefix(p.ImportPath, module+"/")
}

// rel is p's path inside the module ("fleet/cmd/tsh").
func rel(importPath string) string {
	return strings.TrimPrefix(strings.TrimPrefix(importPath, module), "/")
}

// under reports whether project package path rel is dir or below it.
func under(rel, dir string) bool {
	return rel == dir || strings.HasPrefix(rel, dir+"/")
}

// testSupport reports whether a package exists to help tests (its last
// element ends in "test": imagetest, fleettest); such packages may import
// "testing", and production code may not import them.
func testSupport(importPath string) bool {
	return strings.HasSuffix(path.Base(importPath), "test")
}

// goList runs `go list -e -deps -json` in the module root with extra
// environment and returns the packages by import path.
func goList(t *testing.T, env []string, patterns ...string) map[string]*Package {
	t.Helper()
	root := moduleRoot(t)
	args := append([]string{"list", "-e", "-deps", "-json"}, patterns...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	pkgs := map[string]*Package{}
	dec := json.NewDecoder(&stdout)
	for {
		p := new(Package)
		err := dec.Decode(p)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

var (
	rootOnce sync.Once
	rootDir  string
	rootErr  error

	allOnce sync.Once
	allPkgs map[string]*Package
)

func moduleRoot(t *testing.T) string {
	t.Helper()
	rootOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			rootErr = err
			return
		}
		gomod := strings.TrimSpace(string(out))
		if gomod == "" || gomod == os.DevNull {
			rootErr = errors.New("not inside a module")
			return
		}
		rootDir = filepath.Dir(gomod)
	})
	if rootErr != nil {
		t.Fatalf("find module root: %v", rootErr)
	}
	return rootDir
}

// all lists every project package and everything it depends on, for the
// host platform. Only one go list runs for all tests.
func all(t *testing.T) map[string]*Package {
	t.Helper()
	allOnce.Do(func() {
		trackSources(t, moduleRoot(t))
		allPkgs = goList(t, nil, "./...")
	})
	if allPkgs == nil {
		t.Fatal("go list ./... failed in an earlier test")
	}
	return allPkgs
}

// project returns the project's own packages in import path order.
func project(t *testing.T) []*Package {
	t.Helper()
	var ps []*Package
	for _, p := range all(t) {
		if p.inProject() {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b *Package) int { return strings.Compare(a.ImportPath, b.ImportPath) })
	if len(ps) == 0 {
		t.Fatal("go list found no project packages")
	}
	return ps
}

// trackSources opens every directory of the module. `go test` records the
// directories a test opens and reruns the test when an entry in one of them
// changes (name, size, mtime), instead of serving a stale cached pass after
// an import changed: the sources that `go list` reads in a subprocess are
// invisible to the test cache otherwise.
func trackSources(t *testing.T, root string) {
	t.Helper()
	var walk func(dir string)
	walk = func(dir string) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("read %s: %v", dir, err)
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			switch name := e.Name(); {
			case strings.HasPrefix(name, "."), strings.HasPrefix(name, "_"), name == "testdata", name == "dist", name == "bin":
			default:
				walk(filepath.Join(dir, name))
			}
		}
	}
	walk(root)
}

func TestListErrors(t *testing.T) {
	for _, p := range project(t) {
		if p.Error != nil {
			t.Errorf("%s: %s", rel(p.ImportPath), p.Error.Err)
		}
	}
}

func TestImportRules(t *testing.T) {
	rules := []struct {
		name   string
		from   string // packages under this dir...
		banned string // ...may not depend on packages under this dir
	}{
		{"proto is shared by both sides", "proto", "firmware"},
		{"proto is shared by both sides", "proto", "fleet"},
		{"internal is shared by both sides", "internal", "firmware"},
		{"internal is shared by both sides", "internal", "fleet"},
		{"internal is below the wire protocol", "internal", "proto"},
		{"the agent is not the fleet", "firmware", "fleet"},
	}
	for _, p := range project(t) {
		r := rel(p.ImportPath)
		for _, rule := range rules {
			if !under(r, rule.from) {
				continue
			}
			for _, d := range p.Deps {
				if strings.HasPrefix(d, module+"/") && under(rel(d), rule.banned) {
					t.Errorf("%s depends on %s: %s/... may not import %s/... (%s)", r, rel(d), rule.from, rule.banned, rule.name)
				}
			}
		}
	}
}

func TestNoTestingInProduction(t *testing.T) {
	for _, p := range project(t) {
		r := rel(p.ImportPath)
		if testSupport(p.ImportPath) {
			continue
		}
		for _, imp := range p.Imports {
			if imp == "testing" || strings.HasPrefix(imp, "testing/") {
				t.Errorf("%s imports %q in non-test code; move it to a _test.go file or a package named ...test", r, imp)
			}
		}
		if under(r, "tools/bench") {
			// Benchmark commands are developer tools that nothing
			// imports: they may drive test support (browsertest.Start
			// is there for them), as long as they do not import
			// testing themselves.
			continue
		}
		for _, d := range p.Deps {
			if strings.HasPrefix(d, module+"/") && testSupport(d) {
				t.Errorf("%s depends on test-support package %s in non-test code", r, rel(d))
			}
		}
	}
}

func TestClientsLinkNoServer(t *testing.T) {
	clientPkgs := []string{"proto", "fleet/client", "fleet/tsh", "fleet/fleetctl", "fleet/kubeconfig", "internal/buildinfo"}
	pkgs := all(t)
	for _, client := range []string{"fleet/cmd/tsh", "fleet/cmd/fleetctl"} {
		allowed := clientPkgs
		t.Run(path.Base(client), func(t *testing.T) {
			p, ok := pkgs[module+"/"+client]
			if !ok || len(p.GoFiles) == 0 {
				t.Fatalf("%s not found: the %s main must live there", client, path.Base(client))
			}
			var linked []string
			for _, d := range p.Deps {
				if !strings.HasPrefix(d, module+"/") {
					continue
				}
				r := rel(d)
				linked = append(linked, r)
				if !slices.ContainsFunc(allowed, func(a string) bool { return under(r, a) }) {
					t.Errorf("%s links %s, a server package; clients may link only %s", client, r, strings.Join(allowed, ", "))
				}
			}
			t.Logf("%s links project packages: %s", client, strings.Join(linked, " "))
		})
	}
}

func TestPackageDocs(t *testing.T) {
	for _, p := range project(t) {
		r := rel(p.ImportPath)
		if p.Error != nil {
			continue // TestListErrors reports it
		}
		if len(p.GoFiles) == 0 {
			t.Errorf("%s: test-only package without a doc comment: add a doc.go saying \"Package %s ...\" (what it tests, that nothing imports it)", r, p.Name)
			continue
		}
		if p.Doc == "" {
			t.Errorf("%s: no package doc comment; want one starting %q", r, "Package "+p.Name)
			continue
		}
		if p.Name != "main" {
			if !strings.HasPrefix(p.Doc, "Package "+p.Name+" ") {
				t.Errorf("%s: package doc %q, want it to start %q", r, p.Doc, "Package "+p.Name+" ")
			}
			continue
		}
		dir := path.Base(r)
		ok := false
		for _, prefix := range []string{"Package main ", "Command " + dir + " ", dir + " ", strings.ToUpper(dir[:1]) + dir[1:] + " ", "The " + dir + " "} {
			ok = ok || strings.HasPrefix(p.Doc, prefix)
		}
		if !ok {
			t.Errorf("%s: command doc %q, want it to start %q (or %q)", r, p.Doc, "Command "+dir+" ", "Package main ")
		}
	}
}

// TestAgentDependencies lists what the agent links on its main target
// (linux/arm64, no cgo) and checks nothing heavy or server-side is in it.
// Run it with -v to see the module list.
func TestAgentDependencies(t *testing.T) {
	const agent = module + "/firmware/cmd/edge-agent"
	trackSources(t, moduleRoot(t))
	pkgs := goList(t, []string{"GOOS=linux", "GOARCH=arm64", "CGO_ENABLED=0"}, "./firmware/cmd/edge-agent")
	p, ok := pkgs[agent]
	if !ok || len(p.GoFiles) == 0 {
		t.Fatalf("%s not found: the agent's main must live there", rel(agent))
	}
	if p.Error != nil {
		t.Fatalf("%s: %s", rel(agent), p.Error.Err)
	}

	banned := []struct{ prefix, why string }{
		{"k8s.io/", "Kubernetes client libraries are for the fleet, never the agent (size)"},
		{module + "/fleet/", "the agent never links fleet packages"},
	}
	modules := map[string]int{} // module path@version -> packages linked
	std := 0
	for _, d := range p.Deps {
		dp := pkgs[d]
		if dp == nil {
			t.Errorf("go list gave no entry for dependency %s", d)
			continue
		}
		if dp.Error != nil {
			t.Errorf("dependency %s: %s", d, dp.Error.Err)
		}
		for _, b := range banned {
			if strings.HasPrefix(d, b.prefix) {
				t.Errorf("the agent links %s: %s", d, b.why)
			}
		}
		if d == "testing" || strings.HasPrefix(d, "testing/") {
			t.Errorf("the agent links %q", d)
		}
		switch {
		case dp.Standard:
			std++
		case dp.Module != nil:
			m := dp.Module.Path
			if !dp.Module.Main {
				m += "@" + dp.Module.Version
			}
			if dp.Module.Replace != nil {
				m += " => " + dp.Module.Replace.Path + "@" + dp.Module.Replace.Version
			}
			modules[m]++
		}
	}
	names := make([]string, 0, len(modules))
	for m := range modules {
		names = append(names, m)
	}
	slices.Sort(names)
	t.Logf("edge-agent (linux/arm64) links %d packages: %d from the standard library and these %d modules:", len(p.Deps), std, len(names))
	for _, m := range names {
		t.Logf("  %-60s packages: %d", m, modules[m])
	}
}
