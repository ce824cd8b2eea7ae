package apps

import (
	"strings"
	"testing"

	"remoteler.dev/edge/proto"
)

// wantErr checks err: nil when want is "", else an error containing want.
func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("got %v, want accepted", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("got %v, want an error with %q", err, want)
	}
}

func TestCheckName(t *testing.T) {
	tests := []struct {
		name, app, wantErr string
	}{
		{"plain", "nodered", ""},
		{"one letter", "a", ""},
		{"digits and dashes", "grafana-2", ""},
		{"two letters", "ui", "two characters"},
		{"separator", "node--red", `may not contain "--"`},
		{"upper case", "NodeRed", "must be 1 to 63"},
		{"leading dash", "-x", "must be 1 to 63"},
		{"dot", "node.red", "must be 1 to 63"},
		{"empty", "", "must be 1 to 63"},
		{"header injection", "a\r\nX-Evil: 1", "must be 1 to 63"},
		{"too long", strings.Repeat("a", 64), "must be 1 to 63"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, CheckName(tt.app), tt.wantErr)
		})
	}
}

func TestAddr(t *testing.T) {
	a := Addr{Domain: "fleet.example.com", Port: 3080}
	if o, err := a.Origin("nodered", "pi-1"); err != nil || o != "https://nodered--pi-1.fleet.example.com:3080" {
		t.Errorf("Origin = %q, %v", o, err)
	}
	if o := (Addr{Domain: "fleet.example.com", Port: 443}).FleetOrigin(); o != "https://fleet.example.com" {
		t.Errorf("FleetOrigin on 443 = %q, want no port", o)
	}
	if _, err := a.Origin(strings.Repeat("a", 30), strings.Repeat("b", 32)); err == nil || !strings.Contains(err.Error(), "no public address") {
		t.Errorf("a 64-character label: %v, want no public address", err)
	}
	tests := []struct {
		name, host  string
		app, device string
		ok          bool
	}{
		{"app host", "nodered--pi-1.fleet.example.com", "nodered", "pi-1", true},
		{"with port", "nodered--pi-1.fleet.example.com:3080", "nodered", "pi-1", true},
		{"any case", "NodeRed--PI-1.Fleet.Example.COM", "nodered", "pi-1", true},
		{"device with the separator", "nodered--pi--1.fleet.example.com", "nodered", "pi--1", true},
		{"punycode-looking device", "ui-x--xn--abc.fleet.example.com", "ui-x", "xn--abc", true},
		{"the fleet itself", "fleet.example.com", "", "", false},
		{"no separator", "nodered.fleet.example.com", "", "", false},
		{"two labels deep", "a.nodered--pi-1.fleet.example.com", "", "", false},
		{"other domain", "nodered--pi-1.evil.example.com", "", "", false},
		{"suffix trick", "nodered--pi-1.fleet.example.com.evil.net", "", "", false},
		{"trailing dot", "nodered--pi-1.fleet.example.com.", "", "", false},
		{"empty app", "--pi-1.fleet.example.com", "", "", false},
		{"empty device", "nodered--.fleet.example.com", "", "", false},
		{"two-letter app", "ui--pi-1.fleet.example.com", "", "", false},
		{"bad bytes", "node\x00red--pi-1.fleet.example.com", "", "", false},
		{"empty", "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			app, device, ok := a.Parse(tt.host)
			if app != tt.app || device != tt.device || ok != tt.ok {
				t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q, %v", tt.host, app, device, ok, tt.app, tt.device, tt.ok)
			}
		})
	}
	if !a.IsFleet("FLEET.example.com:3080") || a.IsFleet("nodered--pi-1.fleet.example.com") {
		t.Error("IsFleet")
	}
}

func TestPolicy(t *testing.T) {
	tests := []struct {
		name    string
		hosts   []string
		uri     string
		wantErr string
	}{
		{"loopback", nil, "http://127.0.0.1:1880", ""},
		{"loopback v6", nil, "http://[::1]:8080", ""},
		{"localhost", nil, "https://localhost:8443", ""},
		{"private", nil, "https://192.168.1.1", ""},
		{"trailing slash", nil, "http://127.0.0.1:1880/", ""},
		{"public address refused", nil, "http://93.184.216.34", "does not allow apps at"},
		{"name refused", nil, "http://router.lan", "does not allow apps at"},
		{"name allowed by pattern", []string{"*.lan"}, "http://router.lan", ""},
		{"pattern needs a label", []string{"*.lan"}, "http://.lan", "does not allow"},
		{"prefix", []string{"203.0.113.0/24"}, "http://203.0.113.9:80", ""},
		{"everything", []string{"*"}, "http://example.com", ""},
		{"scheme", nil, "ftp://127.0.0.1", "http or https"},
		{"path", nil, "http://127.0.0.1/admin", "only scheme://host[:port]"},
		{"query", nil, "http://127.0.0.1/?a=b", "only scheme://host[:port]"},
		{"user", nil, "http://u:p@127.0.0.1", "only scheme://host[:port]"},
		{"bad port", nil, "http://127.0.0.1:99999", "bad port"},
		{"no host", nil, "http://:80", "names no host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantErr(t, Policy{Hosts: tt.hosts}.CheckURI(tt.uri), tt.wantErr)
		})
	}
}

func TestAccept(t *testing.T) {
	declared := []proto.App{
		{Name: "zeta", URI: "http://127.0.0.1:1"},
		{Name: "alpha", URI: "http://127.0.0.1:2", Labels: map[string]string{"team": "ops"}},
		{Name: "alpha", URI: "http://127.0.0.1:3"},
		{Name: "public", URI: "http://93.184.216.34"},
		{Name: "Bad", URI: "http://127.0.0.1:4"},
		{Name: "hdr", URI: "http://127.0.0.1:5", Rewrite: &proto.AppRewrite{Headers: []proto.AppHeader{{Name: "X-A", Value: "a\r\nX-B: b"}}}},
		{Name: "own", URI: "http://127.0.0.1:6", Rewrite: &proto.AppRewrite{Headers: []proto.AppHeader{{Name: JWTHeader, Value: "forged"}}}},
		{Name: "labels", URI: "http://127.0.0.1:7", Labels: map[string]string{"a b": "c"}},
	}
	ok, refused := Policy{}.Accept("pi-1", declared)
	if len(ok) != 2 || ok[0].Name != "alpha" || ok[0].URI != "http://127.0.0.1:2" || ok[1].Name != "zeta" {
		t.Errorf("accepted %+v, want alpha (its first declaration) and zeta, sorted", ok)
	}
	want := map[string]string{"alpha": "declared twice", "public": "does not allow", "Bad": "must be 1 to 63",
		"hdr": "one line", "own": "the fleet's own", "labels": "label key"}
	if len(refused) != len(want) {
		t.Errorf("refused %v, want %d", refused, len(want))
	}
	for _, r := range refused {
		if !strings.Contains(r.Err.Error(), want[r.Name]) {
			t.Errorf("%s refused with %v, want %q", r.Name, r.Err, want[r.Name])
		}
	}
}

// FuzzParse feeds Host headers to the address parser: it never panics, and
// what it accepts formats back to the same host.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"nodered--pi-1.fleet.test", "a--b.fleet.test:1", "--.fleet.test", "x.fleet.test", "fleet.test", "\x00--\xff.fleet.test"} {
		f.Add(s)
	}
	a := Addr{Domain: "fleet.test", Port: 8443}
	f.Fuzz(func(t *testing.T, host string) {
		app, device, ok := a.Parse(host)
		if !ok {
			return
		}
		h, err := a.Host(app, device)
		if err != nil {
			t.Fatalf("Parse(%q) accepted %q on %q, which has no address: %v", host, app, device, err)
		}
		if app2, device2, ok := a.Parse(h); !ok || app2 != app || device2 != device {
			t.Fatalf("Parse(%q) = %q, %q; its address %q parses as %q, %q", host, app, device, h, app2, device2)
		}
	})
}

func TestRef(t *testing.T) {
	a := Addr{Domain: "fleet.example.com", Port: 3080}
	tests := []struct {
		name, host string
		want       Ref
		ok         bool
	}{
		{"own app", "nodered--pi-1.fleet.example.com", Ref{App: "nodered", Device: "pi-1"}, true},
		{"own app, device with the separator", "nodered--pi--1.fleet.example.com", Ref{App: "nodered", Device: "pi--1"}, true},
		{"leaf app", "nodered---plant-7--pi-1.fleet.example.com:3080", Ref{Cluster: "plant-7", App: "nodered", Device: "pi-1"}, true},
		{"leaf app, device with the separator", "nodered---plant--pi--1.fleet.example.com", Ref{Cluster: "plant", App: "nodered", Device: "pi--1"}, true},
		{"leaf app, any case", "NodeRed---Plant--PI.Fleet.Example.com", Ref{Cluster: "plant", App: "nodered", Device: "pi"}, true},
		{"leaf app, one-letter app", "a---plant--pi.fleet.example.com", Ref{}, false},
		{"no cluster", "nodered-----pi.fleet.example.com", Ref{}, false},
		{"cluster ends with a dash", "nodered---plant---pi.fleet.example.com", Ref{}, false},
		{"no device", "nodered---plant--.fleet.example.com", Ref{}, false},
		{"no second separator", "nodered---plant.fleet.example.com", Ref{}, false},
		{"four dashes", "nodered----plant--pi.fleet.example.com", Ref{}, false},
		{"other domain", "nodered---plant--pi.evil.example.com", Ref{}, false},
		{"two labels deep", "x.nodered---plant--pi.fleet.example.com", Ref{}, false},
		{"too long", "nodered---plant--" + strings.Repeat("p", 50) + ".fleet.example.com", Ref{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := a.ParseRef(tt.host)
			if got != tt.want || ok != tt.ok {
				t.Fatalf("ParseRef(%q) = %+v, %v; want %+v, %v", tt.host, got, ok, tt.want, tt.ok)
			}
			if !ok {
				return
			}
			// The label it came from is the one it makes.
			o, err := a.OriginOf(got)
			if err != nil || !strings.EqualFold(strings.TrimPrefix(o, "https://"), strings.Split(tt.host, ":")[0]+":3080") {
				t.Errorf("OriginOf(%+v) = %q, %v; want the host back", got, o, err)
			}
			// An own app's label is never a leaf's, and Parse agrees.
			if app, device, pok := a.Parse(tt.host); pok != (got.Cluster == "") || (pok && (app != got.App || device != got.Device)) {
				t.Errorf("Parse(%q) = %q, %q, %v: disagrees with ParseRef", tt.host, app, device, pok)
			}
		})
	}
}

func TestLeafLabel(t *testing.T) {
	tests := []struct {
		name, cluster, app, device, want, wantErr string
	}{
		{"plain", "plant-7", "nodered", "pi-1", "nodered---plant-7--pi-1", ""},
		{"dotted cluster", "plant.example", "nodered", "pi-1", "", "does not fit a DNS label"},
		{"cluster with the separator", "plant--7", "nodered", "pi-1", "", "does not fit a DNS label"},
		{"one-letter app", "plant", "a", "pi-1", "", "IDNA"},
		{"too long", "plant", "nodered", strings.Repeat("d", 50), "", "shorten"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LeafLabel(tt.cluster, tt.app, tt.device)
			wantErr(t, err, tt.wantErr)
			if got != tt.want {
				t.Errorf("LeafLabel = %q, want %q", got, tt.want)
			}
		})
	}
}

// FuzzParseRef checks that a label names at most one app, and that the app
// it names gives the label back.
func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"nodered--pi-1", "nodered---plant-7--pi-1", "a---b--c", "x-----y", "nodered---plant---pi", "abc--", "---", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, label string) {
		r, ok := ParseRef(label)
		if !ok {
			return
		}
		got, err := r.Label()
		if err != nil || got != label {
			t.Fatalf("ParseRef(%q) = %+v, whose label is %q, %v", label, r, got, err)
		}
		if _, _, own := ParseLabel(label); own != (r.Cluster == "") {
			t.Fatalf("ParseLabel and ParseRef disagree on %q", label)
		}
	})
}
