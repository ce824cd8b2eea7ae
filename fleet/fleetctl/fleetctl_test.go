package fleetctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/client/clienttest"
	"remoteler.dev/edge/proto/api"
)

// testEnv is a fake fleet (clienttest.Fleet, an in-process fake of
// fleetd's API, not fleetd) and a data dir holding an admin identity for it,
// laid out as fleetd writes it.
type testEnv struct {
	t       *testing.T
	fleet   *clienttest.Fleet
	dataDir string
	idPath  string
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	e := &testEnv{t: t, fleet: clienttest.NewFleet(t), dataDir: t.TempDir()}
	id, err := e.fleet.CA.Identity(t, "admin", time.Now().Add(time.Hour)).Encode()
	if err != nil {
		t.Fatal(err)
	}
	admin := filepath.Join(e.dataDir, "admin")
	os.MkdirAll(admin, 0o700)
	e.idPath = filepath.Join(admin, "identity.pem")
	if err := os.WriteFile(e.idPath, id, 0o600); err != nil {
		t.Fatal(err)
	}
	info := fmt.Sprintf(`{"addr":%q,"ca_pin":%q,"cluster":"fleet"}`, e.fleet.Addr, e.fleet.Pin)
	if err := os.WriteFile(filepath.Join(admin, "fleet.json"), []byte(info), 0o600); err != nil {
		t.Fatal(err)
	}
	return e
}

type result struct {
	code           int
	stdout, stderr string
}

func (e *testEnv) run(stdin string, args ...string) result {
	e.t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, Stdio{In: strings.NewReader(stdin), Out: &out, Err: &errb})
	e.t.Logf("fleetctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

func TestUsersAdd(t *testing.T) {
	tests := []struct {
		name     string
		stdin    string
		args     []string
		wantCode int
		wantOut  []string
		wantErr  string
		user     string // the user the fleet must then hold
		wantUser *clienttest.User
	}{
		{
			name:     "password on stdin",
			stdin:    "pa55word\n",
			args:     []string{"users", "add", "alice", "--roles=dev,ops", "--logins=pi,root"},
			user:     "alice",
			wantOut:  []string{`User "alice" added with roles dev, ops and logins pi, root.`, "tsh login --proxy=", "--user=alice --ca-pin=sha256:"},
			wantUser: &clienttest.User{Password: "pa55word", Roles: []string{"dev", "ops"}, Logins: []string{"pi", "root"}},
		},
		{
			name:     "totp",
			stdin:    "pa55word",
			args:     []string{"users", "add", "--totp", "bob", "--roles", "dev"},
			user:     "bob",
			wantOut:  []string{"TOTP: add this to bob's authenticator app", "otpauth://totp/fleet:bob?secret="},
			wantUser: &clienttest.User{Password: "pa55word", Roles: []string{"dev"}, TOTP: "123456"},
		},
		{
			name:     "no roles",
			stdin:    "pa55word\n",
			args:     []string{"users", "add", "carol"},
			wantCode: 1,
			wantErr:  "--roles is required",
		},
		{
			name:     "no password",
			args:     []string{"users", "add", "carol", "--roles=dev"},
			wantCode: 1,
			wantErr:  "read password: standard input ended",
		},
		{
			name:     "no name",
			args:     []string{"users", "add", "--roles=dev"},
			wantCode: 1,
			wantErr:  "missing NAME",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			args := append([]string{"--data-dir", e.dataDir}, tt.args...)
			r := e.run(tt.stdin, args...)
			if r.code != tt.wantCode {
				t.Fatalf("got exit %d, want %d", r.code, tt.wantCode)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("stdout lacks %q", w)
				}
			}
			if !strings.Contains(r.stderr, tt.wantErr) {
				t.Errorf("got stderr %q, want it to contain %q", r.stderr, tt.wantErr)
			}
			if tt.wantUser != nil {
				got, ok := e.fleet.Users()[tt.user]
				if !ok || got.Password != tt.wantUser.Password || strings.Join(got.Roles, ",") != strings.Join(tt.wantUser.Roles, ",") ||
					strings.Join(got.Logins, ",") != strings.Join(tt.wantUser.Logins, ",") || got.TOTP != tt.wantUser.TOTP {
					t.Errorf("fleet has user %+v, want %+v", got, *tt.wantUser)
				}
			}
		})
	}
}

func TestRolesCreate(t *testing.T) {
	const twoRoles = `# roles for the field team
kind: role
version: v1
metadata:
  name: field-tech
spec:
  allow:
    logins: ["{{internal.logins}}", pi]
    device_labels: {site: [north]}
  deny:
    logins: [root]
  options:
    max_session_ttl: 8h
---
---   # an empty document is fine
kind: role
metadata:
  name: admin
spec:
  allow:
    admin: true
    device_labels: {"*": ["*"]}
`
	tests := []struct {
		name      string
		args      func(file string) []string
		stdin     string
		wantCode  int
		wantRoles []string
		wantErr   string
	}{
		{"roles create", func(f string) []string { return []string{"roles", "create", "-f", f} }, "", 0, []string{"admin", "field-tech"}, ""},
		{"create alias", func(f string) []string { return []string{"create", "-f", f} }, "", 0, []string{"admin", "field-tech"}, ""},
		{"stdin", func(string) []string { return []string{"create", "-f", "-"} }, twoRoles, 0, []string{"admin", "field-tech"}, ""},
		{"no file", func(string) []string { return []string{"roles", "create"} }, "", 1, nil, "-f ROLE.yaml is required"},
		{"unknown field", func(string) []string { return []string{"create", "-f", "-"} },
			"kind: role\nmetadata: {name: x}\nspec:\n  allw: {logins: [pi]}\n", 1, nil,
			`document 1 (role "x"): unknown field "spec.allw"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			file := filepath.Join(t.TempDir(), "roles.yaml")
			os.WriteFile(file, []byte(twoRoles), 0o644)
			r := e.run(tt.stdin, append(tt.args(file), "--data-dir="+e.dataDir)...)
			if r.code != tt.wantCode {
				t.Fatalf("got exit %d, want %d", r.code, tt.wantCode)
			}
			if !strings.Contains(r.stderr, tt.wantErr) {
				t.Errorf("got stderr %q, want it to contain %q", r.stderr, tt.wantErr)
			}
			got := e.fleet.Roles()
			if len(got) != len(tt.wantRoles) {
				t.Fatalf("fleet has %d roles, want %v", len(got), tt.wantRoles)
			}
			for _, name := range tt.wantRoles {
				if _, ok := got[name]; !ok {
					t.Errorf("fleet lacks role %q", name)
				}
			}
			if tt.wantCode == 0 {
				ft := got["field-tech"]
				if ft.Version != "v1" || ft.Spec.Options.MaxSessionTTL != "8h" || len(ft.Spec.Allow.Logins) != 2 ||
					ft.Spec.Deny.Logins[0] != "root" || ft.Spec.Allow.DeviceLabels["site"][0] != "north" || !got["admin"].Spec.Allow.Admin {
					t.Errorf("roles decoded wrong: %+v", got)
				}
				if got["admin"].Version != "v1" {
					t.Errorf("a role without version got %q, want v1", got["admin"].Version)
				}
			}
		})
	}
}

func TestParseRoles(t *testing.T) {
	const base = "kind: role\nversion: v1\nmetadata:\n  name: r\nspec:\n  allow:\n    logins: [pi]\n"
	tests := []struct {
		name      string
		in        string
		wantNames []string
		wantErr   string
	}{
		{"one", base, []string{"r"}, ""},
		{"two", base + "---\n" + strings.Replace(base, "name: r", "name: s", 1), []string{"r", "s"}, ""},
		{"leading separator and end marker", "---\n" + base + "...\n", []string{"r"}, ""},
		{"comments only between", base + "---\n# nothing\n---\n" + strings.Replace(base, "name: r", "name: t", 1), []string{"r", "t"}, ""},
		{"unknown top field", base + "spc: {}\n", nil, `document 1 (role "r"): unknown field "spc"`},
		{"unknown nested field", strings.Replace(base, "logins:", "login:", 1), nil, `unknown field "spec.allow.login"`},
		{"unknown option", base + "  options:\n    ttl: 1h\n", nil, `unknown field "spec.options.ttl"`},
		{"second document bad", base + "---\nkind: role\nmetadata: {name: s, labels: {}}\n", nil, `document 2 (role "s"): unknown field "metadata.labels"`},
		{"no kind", "metadata: {name: r}\n", nil, "document 1 (role \"r\"): no kind"},
		{"wrong kind", "kind: user\nmetadata: {name: r}\n", nil, `kind is "user"`},
		{"wrong version", "kind: role\nversion: v2\nmetadata: {name: r}\n", nil, `version "v2" is not supported`},
		{"no name", "kind: role\nspec: {}\n", nil, "no metadata.name"},
		{"wrong type", "kind: role\nmetadata: {name: r}\nspec: {allow: {logins: {a: b}}}\n", nil, "cannot unmarshal object"},
		{"scalars for lists", "kind: role\nmetadata: {name: r}\nspec: {allow: {logins: pi, device_labels: {site: north}}, deny: {logins: root, device_labels: {'*': '*'}}}\n", []string{"r"}, ""},
		{"app labels", "kind: role\nmetadata: {name: r}\nspec: {allow: {app_labels: {'*': '*'}}, deny: {app_labels: {team: ops}}}\n", []string{"r"}, ""},
		{"metadata not a map", "kind: role\nmetadata: x\n", nil, "cannot unmarshal string"},
		{"list", "- a\n- b\n", nil, "want a role (kind: role, metadata, spec), not a list"},
		{"duplicate key", "kind: role\nkind: role\n", nil, "already set in map"},
		{"bad yaml", "kind: [\n", nil, "document 1:"},
		{"empty", "", nil, "no role in the file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roles, err := parseRoles([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, r := range roles {
				names = append(names, r.Metadata.Name)
			}
			if strings.Join(names, ",") != strings.Join(tt.wantNames, ",") {
				t.Errorf("got roles %v, want %v", names, tt.wantNames)
			}
			if tt.name == "scalars for lists" {
				spec := roles[0].Spec
				if fmt.Sprint(spec.Allow.Logins, spec.Allow.DeviceLabels, spec.Deny.Logins, spec.Deny.DeviceLabels) != "[pi] map[site:[north]] [root] map[*:[*]]" {
					t.Errorf("got spec %+v", spec)
				}
			}
		})
	}
}

func TestTokensAdd(t *testing.T) {
	e := newTestEnv(t)
	r := e.run("", "tokens", "add", "--ttl=2h", "--uses=3", "--labels=site=north,env=prod", "--data-dir", e.dataDir)
	if r.code != 0 {
		t.Fatalf("got exit %d", r.code)
	}
	join := "tok1secret@" + e.fleet.Pin
	for _, want := range []string{
		"Join token tok1 for 3 devices, valid until ",
		"  Token:       tok1secret\n",
		"  CA pin:      " + e.fleet.Pin + "\n",
		"  Join string: " + join + "\n",
		"  Labels:      env=prod,site=north\n",
		"  edge-agent start --fleet=" + e.fleet.Addr + " --token=" + join + "\n",
		"Note: " + e.fleet.Addr + " is this machine's local address",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q", want)
		}
	}
	r = e.run("", "--data-dir", e.dataDir, "tokens", "add", "--fleet-addr=fleet.example.com:3080")
	if !strings.Contains(r.stdout, "edge-agent start --fleet=fleet.example.com:3080 --token=tok2secret@") || strings.Contains(r.stdout, "Note:") {
		t.Errorf("--fleet-addr not used: %s", r.stdout)
	}
	r = e.run("", "--data-dir", e.dataDir, "tokens", "ls", "--format=json")
	var toks api.List[api.Token]
	if err := json.Unmarshal([]byte(r.stdout), &toks); err != nil || toks.Kind != "tokens" || len(toks.Items) != 2 || toks.Items[0].UsesLeft != 3 {
		t.Errorf("tokens ls --format=json: got %s (%v)", r.stdout, err)
	}
	if r = e.run("", "--data-dir", e.dataDir, "tokens", "rm", "tok1"); r.code != 0 {
		t.Errorf("tokens rm: exit %d", r.code)
	}
	if r = e.run("", "--data-dir", e.dataDir, "tokens", "rm", "tok1"); r.code != 1 || !strings.Contains(r.stderr, `token "tok1" not found`) {
		t.Errorf("tokens rm again: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestListings(t *testing.T) {
	e := newTestEnv(t)
	e.fleet.SetDevices(api.Device{ID: "d1", Name: "gw1", Labels: map[string]string{"site": "north"}, Online: true, AgentVersion: "1.0"})
	e.fleet.AddUser("alice", clienttest.User{Roles: []string{"dev"}})
	tests := []struct {
		name string
		args []string
		want []string // lines, spaces squeezed
	}{
		{"devices", []string{"devices", "ls"}, []string{"NAME LABELS STATUS MODE LAST SEEN VERSION TARGET UPDATE", "gw1 site=north online tunnel never 1.0 - -"}},
		{"users", []string{"users", "ls"}, []string{"NAME ROLES LOGINS TOTP SSO CREATED", "alice dev - no - never"}},
		{"status", []string{"status"}, []string{
			"Cluster: fleet", "Version: test", "Address: " + e.fleet.Addr + " (fleetctl uses " + e.fleet.Addr + ")",
			"CA pin: " + e.fleet.Pin, "Users: 1", "Devices: 1 (0 online)",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run("", append([]string{"--data-dir", e.dataDir}, tt.args...)...)
			var got []string
			for line := range strings.Lines(r.stdout) {
				got = append(got, strings.Join(strings.Fields(line), " "))
			}
			if r.code != 0 || strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("exit %d; got\n%s\nwant\n%s", r.code, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
	t.Run("devices json", func(t *testing.T) {
		r := e.run("", "--data-dir", e.dataDir, "devices", "ls", "--format=json")
		var got api.List[api.Device]
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || len(got.Items) != 1 || got.Items[0].Name != "gw1" {
			t.Errorf("got %s (%v)", r.stdout, err)
		}
	})
}

func TestWhereIsTheFleet(t *testing.T) {
	e := newTestEnv(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	stopped := t.TempDir() // a data dir whose fleetd is not running
	os.MkdirAll(filepath.Join(stopped, "admin"), 0o700)
	id, _ := os.ReadFile(e.idPath)
	os.WriteFile(filepath.Join(stopped, "admin", "identity.pem"), id, 0o600)
	os.WriteFile(filepath.Join(stopped, "admin", "fleet.json"), []byte(`{"addr":"`+closed+`"}`), 0o600)
	empty := t.TempDir()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"data dir", []string{"--data-dir", e.dataDir, "status"}, 0, ""},
		{"flags after the command", []string{"status", "--data-dir=" + e.dataDir}, 0, ""},
		{"identity file", []string{"-i", e.idPath, "--proxy", e.fleet.Addr, "status"}, 0, ""},
		{"identity without proxy", []string{"-i", e.idPath, "status"}, 1, "-i needs --proxy=HOST:PORT"},
		{"fleetd not running", []string{"--data-dir", stopped, "status"}, 1,
			"fleetctl: cannot reach the fleet at " + closed + ": connect: connection refused; is fleetd running?"},
		{"no data dir", []string{"--data-dir", empty, "status"}, 1,
			"cannot find " + filepath.Join(empty, "admin", "fleet.json") + ": is fleetd running with --data-dir " + empty + "?"},
		{"identity not trusted", []string{"-i", e.idPath, "--proxy", clienttest.NewFleet(t).Addr, "status"}, 1, "does not trust"},
		{"unknown command", []string{"frobnicate"}, 1, `unknown command "frobnicate"`},
		{"mistyped command", []string{"--data-dir", e.dataDir, "devcies", "ls"}, 1, `unknown command "devcies" for "fleetctl"; did you mean "devices"?`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run("", tt.args...)
			if r.code != tt.wantCode || !strings.Contains(r.stderr, tt.wantErr) {
				t.Errorf("got exit %d, stderr %q; want %d and %q", r.code, r.stderr, tt.wantCode, tt.wantErr)
			}
		})
	}
}

func TestExpiredIdentity(t *testing.T) {
	e := newTestEnv(t)
	var errb bytes.Buffer
	code := Main(context.Background(), []string{"--data-dir", e.dataDir, "status"}, Stdio{
		In: strings.NewReader(""), Out: io.Discard, Err: &errb,
		Now: func() time.Time { return time.Now().Add(2 * time.Hour) },
	})
	if code != 1 || !strings.Contains(errb.String(), "your certificate expired at ") || !strings.Contains(errb.String(), "fleetd renews it hourly while it runs; is fleetd running?") {
		t.Errorf("got exit %d, stderr %q", code, errb.String())
	}
}

func FuzzParseRoles(f *testing.F) {
	f.Add([]byte("kind: role\nmetadata: {name: r}\nspec: {allow: {logins: [pi], device_labels: {a: [b]}}}\n---\nkind: role\n"))
	f.Add([]byte("--- # x\n...\n"))
	f.Add([]byte("kind: role\nmetadata: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		roles, err := parseRoles(data)
		if err != nil {
			return
		}
		for _, r := range roles {
			if r.Kind != "role" || r.Version != "v1" || r.Metadata.Name == "" {
				t.Fatalf("accepted an incomplete role %+v", r)
			}
		}
	})
}

// FuzzParseResources feeds create -f files (roles, connectors, listings of
// both) to parseResources: it never panics, and what it accepts is
// complete.
func FuzzParseResources(f *testing.F) {
	f.Add([]byte("kind: role\nmetadata: {name: r}\nspec: {allow: {logins: [pi]}}\n---\nkind: oidc\nmetadata: {name: okta}\nspec: {issuer_url: https://x, client_id: a, scopes: groups, claims_to_roles: [{claim: g, value: v, roles: [r]}]}\n"))
	f.Add([]byte("kind: connectors\nitems: [{metadata: {name: a}, spec: {has_secret: true}}, 3]\n"))
	f.Add([]byte("kind: roles\nitems: {}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := parseResources(data)
		if err != nil {
			return
		}
		for _, r := range res {
			switch {
			case r.role != nil && (r.role.Kind != "role" || r.role.Version != "v1" || r.role.Metadata.Name == ""):
				t.Fatalf("accepted an incomplete role %+v", r.role)
			case r.connector != nil && (r.connector.Kind != api.ConnectorKindOIDC || r.connector.Metadata.Name == "" || r.connector.Spec.HasSecret):
				t.Fatalf("accepted an incomplete connector %+v", r.connector)
			case r.role == nil && r.connector == nil:
				t.Fatal("an empty resource")
			}
		}
	})
}

func FuzzParseFleetInfo(f *testing.F) {
	f.Add([]byte(`{"addr":"127.0.0.1:3080","ca_pin":"sha256:` + strings.Repeat("0", 64) + `","cluster":"fleet"}`))
	f.Add([]byte(`{"addr":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fi, err := parseFleetInfo(data)
		if err == nil && fi.Addr == "" {
			t.Fatal("accepted fleet.json without addr")
		}
	})
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"512", 512, true}, {"512MiB", 512 << 20, true}, {"1.5GiB", 3 << 29, true},
		{"20 GiB", 20 << 30, true}, {"1GB", 1e9, true}, {"10B", 10, true},
		{"-1GiB", 0, false}, {"lots", 0, false}, {"GiB", 0, false}, {"1PiB", 0, false},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// TestRolesRoundTrip feeds roles ls --format=yaml and json back to roles
// create: the listing is also a role file.
func TestRolesRoundTrip(t *testing.T) {
	e := newTestEnv(t)
	const role = "kind: role\nmetadata: {name: field-tech, description: \"techs \\e[2K\"}\nspec: {allow: {logins: [pi], device_labels: {site: [north]}}, options: {max_session_ttl: 4h}}\n"
	if r := e.run(role, "--data-dir", e.dataDir, "roles", "create", "-f", "-"); r.code != 0 {
		t.Fatalf("roles create: %s", r.stderr)
	}
	want := e.fleet.Roles()
	for _, format := range []string{"yaml", "json"} {
		t.Run(format, func(t *testing.T) {
			out := e.run("", "--data-dir", e.dataDir, "roles", "ls", "--format="+format)
			if out.code != 0 || strings.Contains(out.stdout, "\x1b") {
				t.Fatalf("roles ls: exit %d, stdout %q", out.code, out.stdout)
			}
			if r := e.run("", "--data-dir", e.dataDir, "roles", "rm", "field-tech"); r.code != 0 || len(e.fleet.Roles()) != 0 {
				t.Fatalf("roles rm: %s", r.stderr)
			}
			if r := e.run(out.stdout, "--data-dir", e.dataDir, "roles", "create", "-f", "-"); r.code != 0 {
				t.Fatalf("roles create of roles ls: %s", r.stderr)
			}
			if got := e.fleet.Roles(); !reflect.DeepEqual(got, want) {
				t.Errorf("after the round trip: %+v, want %+v", got, want)
			}
		})
	}
}

func TestParseResources(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		roles     []string
		conns     []string
		errHas    string
		checkConn func(t *testing.T, c *api.OIDCConnector)
	}{
		{name: "role and connector", in: `kind: role
metadata: {name: dev}
spec: {allow: {logins: [pi]}}
---
kind: oidc
metadata: {name: okta}
spec:
  issuer_url: https://example.okta.com
  client_id: abc
  client_secret: s3cret
  scopes: groups
  claims_to_roles:
  - {claim: groups, value: fleet-admins, roles: [admin]}
`, roles: []string{"dev"}, conns: []string{"okta"}, checkConn: func(t *testing.T, c *api.OIDCConnector) {
			if c.Version != "v1" || c.Spec.ClientSecret != "s3cret" || len(c.Spec.Scopes) != 1 || c.Spec.ClaimsToRoles[0].Roles[0] != "admin" {
				t.Errorf("connector %+v", c)
			}
		}},
		{name: "a connectors listing", in: `kind: connectors
items:
- kind: oidc
  version: v1
  metadata: {name: a}
  spec: {issuer_url: "https://a", client_id: x, has_secret: true, claims_to_roles: [{claim: g, value: v, roles: [r]}]}
- metadata: {name: b}
  spec: {issuer_url: "https://b", client_id: bb, claims_to_roles: []}
truncated: false
`, conns: []string{"a", "b"}, checkConn: func(t *testing.T, c *api.OIDCConnector) {
			if c.Spec.HasSecret {
				t.Errorf("has_secret kept: the fleet decides it")
			}
		}},
		{name: "typo in a connector", in: "kind: oidc\nmetadata: {name: x}\nspec: {issuer: https://x}\n", errHas: `unknown field "spec.issuer"`},
		{name: "no name", in: "kind: oidc\nspec: {issuer_url: https://x}\n", errHas: "no metadata.name"},
		{name: "other kind", in: "kind: saml\nmetadata: {name: x}\n", errHas: `kind is "saml"`},
		{name: "empty", in: "---\n", errHas: "no resource"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := parseResources([]byte(tt.in))
			if tt.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tt.errHas) {
					t.Fatalf("err %v, want %q", err, tt.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var roles, conns []string
			for _, r := range res {
				if r.role != nil {
					roles = append(roles, r.role.Metadata.Name)
				}
				if r.connector != nil {
					conns = append(conns, r.connector.Metadata.Name)
					if tt.checkConn != nil {
						tt.checkConn(t, r.connector)
					}
				}
			}
			if !slices.Equal(roles, tt.roles) || !slices.Equal(conns, tt.conns) {
				t.Errorf("roles %q connectors %q, want %q %q", roles, conns, tt.roles, tt.conns)
			}
		})
	}
}
