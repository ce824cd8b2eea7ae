package agent

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// wiring are Config's fields that code sets; every other field is a
// setting with a flag and a config file key.
var wiring = map[string]bool{"SFTPCommand": true, "DialCommand": true, "PasswdFile": true, "Services": true, "EventSource": true, "Logger": true, "Notify": true, "Now": true,
	"UpdateCheck": true, "UpdateTarget": true}

// blocks are Config's fields that group settings of another package
// (update.Settings): each of their fields is a setting.
var blocks = map[string]bool{"Update": true}

// TestEverySettingHasAFlagAndAKey keeps the flags, the config file and
// Config from drifting apart: each setting field is bound to one flag,
// whose file key is the same name.
func TestEverySettingHasAFlagAndAKey(t *testing.T) {
	var c Config
	bound := map[uintptr]string{}
	for _, s := range c.settings() {
		bound[reflect.ValueOf(s.value).Pointer()] = s.name
	}
	var fields []string
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		for i := range v.NumField() {
			f := v.Type().Field(i)
			switch {
			case prefix == "" && wiring[f.Name]:
			case prefix == "" && blocks[f.Name]:
				walk(f.Name+".", v.Field(i))
			default:
				fields = append(fields, prefix+f.Name)
				if _, ok := bound[v.Field(i).Addr().Pointer()]; !ok {
					t.Errorf("Config.%s%s has no flag or config file key: add it to settings()", prefix, f.Name)
				}
			}
		}
	}
	walk("", reflect.ValueOf(&c).Elem())
	if len(bound) != len(fields) {
		t.Errorf("%d settings for %d setting fields", len(bound), len(fields))
	}
}

func TestReadFile(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		want    func(c *Config) bool
		wantErr string
	}{
		{"every kind of value", `
fleet: fleet.example.com:3080
tunnel_addr: relay.example.com:4433
token: jt_abc@sha256:00
data_dir: /data/agent
labels: {site: north, model: pi4}
keepalive: 10s
liveness: 1m
session_hold: 30m
log_level: debug
kubeconfig: "off"
audit_max_bytes: 1048576
audit_when_full: refuse
no_recording: true
recordings_max_bytes: 2097152
release_key: [RWQone, RWQtwo]
update_max_bandwidth: 65536
update_window: 02:00-05:00
update_health_timeout: 3m
update_off: true
`, func(c *Config) bool {
			return c.Fleet == "fleet.example.com:3080" && c.TunnelAddr == "relay.example.com:4433" && c.Token == "jt_abc@sha256:00" &&
				c.DataDir == "/data/agent" && c.Labels["site"] == "north" && c.Labels["model"] == "pi4" && c.Keepalive == 10*time.Second &&
				c.Liveness == time.Minute && c.SessionHold == 30*time.Minute && c.LogLevel == "debug" && c.Kubeconfig == "off" &&
				c.AuditMaxBytes == 1<<20 && c.AuditWhenFull == AuditRefuse && c.NoRecording && c.RecordingsMaxBytes == 2<<20 &&
				slices.Equal(c.Update.ReleaseKeys, []string{"RWQone", "RWQtwo"}) && c.Update.MaxBandwidth == 65536 &&
				c.Update.Window == "02:00-05:00" && c.Update.HealthTimeout == 3*time.Minute && c.Update.Off
		}, ""},
		{"release keys as on the command line", "release_key: RWQone, RWQtwo\n", func(c *Config) bool {
			return slices.Equal(c.Update.ReleaseKeys, []string{"RWQone", "RWQtwo"})
		}, ""},
		{"list for a string", "fleet: [a, b]\n", nil, "fleet: want a single value, not a list"},
		{"list of maps", "release_key: [{a: b}]\n", nil, "release_key: map[a:b]: want a string"},
		{"labels as on the command line", "labels: site=south,env=prod\n", func(c *Config) bool {
			return len(c.Labels) == 2 && c.Labels["env"] == "prod"
		}, ""},
		{"keepalive off", "keepalive: -1s\n", func(c *Config) bool { return c.Keepalive == -time.Second }, ""},
		{"empty file", "", func(c *Config) bool { return c.Fleet == "" }, ""},
		{"apps", "app:\n  - {name: nodered, uri: \"http://127.0.0.1:1880\", labels: {team: ops}, rewrite: {redirect: [nodered.lan]}}\n  - {name: router, uri: \"https://192.168.1.1\", insecure_skip_verify: true}\n",
			func(c *Config) bool {
				return len(c.Apps) == 2 && c.Apps[0].Labels["team"] == "ops" && c.Apps[0].Rewrite.Redirect[0] == "nodered.lan" && c.Apps[1].InsecureSkipVerify
			}, ""},
		{"app with an unknown field", "app:\n  - {name: a, url: \"http://127.0.0.1\"}\n", nil, "app: want a list of {name, uri"},
		{"unknown key", "sesion_hold: 1m\n", nil, `unknown setting "sesion_hold"; the settings are app, audit_max_bytes, audit_when_full, ca_pin`},
		{"flag spelling", "session-hold: 1m\n", nil, `unknown setting "session-hold"`},
		{"duration without unit", "keepalive: 25\n", nil, `keepalive: "25" is not a duration`},
		{"bad bytes", "audit_max_bytes: lots\n", nil, `audit_max_bytes: "lots" is not a number of bytes`},
		{"map for a string", "fleet: {a: b}\n", nil, "fleet: want a single value, not a map"},
		{"not a map", "- fleet\n", nil, "want a map of settings"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.yaml")
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			var c Config
			err := c.ReadFile(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.want(&c) {
				t.Errorf("got %+v, %v", c, err)
			}
		})
	}
	var c Config
	if err := c.ReadFile(filepath.Join(t.TempDir(), "none.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want it to wrap os.ErrNotExist", err)
	}
}

// TestFlagsAndFileAlike sets every setting once by flag and once by file
// key, and wants the same Config.
func TestFlagsAndFileAlike(t *testing.T) {
	values := map[string]string{
		"fleet": "f:1", "tunnel-addr": "r:2", "token": "t", "ca-pin": "sha256:00", "data-dir": "/d", "name": "n",
		"labels": "a=b", "keepalive": "5s", "liveness": "6s", "session-hold": "7s", "log-level": "warn",
		"kubeconfig": "/k", "audit-max-bytes": "10", "audit-when-full": "refuse", "no-recording": "true", "recordings-max-bytes": "20",
		"metrics-listen": "127.0.0.1:9101",
		"release-key":    "RWQone,RWQtwo", "update-max-bandwidth": "30", "update-window": "02:00-05:00", "update-health-timeout": "8s", "update-off": "true",
		"path-mtu-discovery": "true",
		"app":                "nodered=http://127.0.0.1:1880,label:team=ops",
		"mode":               "direct", "listen": "10.0.0.7:4433", "check-in": "9s",
	}
	var byFlag, byFile Config
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	byFlag.RegisterFlags(fs)
	var args []string
	var yaml strings.Builder
	for _, s := range byFlag.settings() {
		v, ok := values[s.name]
		if !ok {
			t.Fatalf("no test value for %s", s.name)
		}
		args = append(args, "--"+s.name+"="+v)
		yaml.WriteString(strings.ReplaceAll(s.name, "-", "_") + ": \"" + v + "\"\n")
	}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := byFile.readYAML([]byte(yaml.String())); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(byFlag, byFile) {
		t.Errorf("flags gave %+v, the file %+v", byFlag, byFile)
	}
}

func TestWithDefaults(t *testing.T) {
	d := Config{}.WithDefaults()
	if d.DataDir != DefaultDataDir || d.Keepalive != 25*time.Second || d.Liveness != 10*time.Minute || d.SessionHold != 10*time.Minute ||
		d.LogLevel != "info" || d.AuditMaxBytes != 64<<20 || d.AuditWhenFull != AuditAllow || d.RecordingsMaxBytes != 256<<20 ||
		d.Kubeconfig == "" || d.Update.HealthTimeout != 2*time.Minute || d.Logger == nil || d.Now == nil {
		t.Errorf("defaults: %+v", d)
	}
	if err := d.check(); err != nil {
		t.Errorf("the defaults do not pass check: %v", err)
	}
	set := Config{Keepalive: -time.Second, SessionHold: time.Minute, AuditWhenFull: AuditRefuse}.WithDefaults()
	if set.Keepalive != -time.Second || set.SessionHold != time.Minute || set.AuditWhenFull != AuditRefuse {
		t.Errorf("WithDefaults changed set values: %+v", set)
	}
	if d.Mode != ModeTunnel || d.CheckIn != DefaultCheckIn {
		t.Errorf("mode defaults: %q, %v", d.Mode, d.CheckIn)
	}
	for _, bad := range []Config{{AuditWhenFull: "maybe"}, {LogLevel: "loud"}, {TunnelAddr: "no-port"}, {Fleet: "a:b:c"},
		{Mode: "sideways"}, {Mode: ModeDirect}, {Mode: ModeDirect, Listen: "plc.lan:4433"}, {Mode: ModeDirect, Listen: "10.0.0.7"},
		{Listen: "10.0.0.7:4433"}, {Mode: ModeDirect, Listen: ":4433", CheckIn: 6 * time.Minute}} {
		if c := bad.WithDefaults(); c.check() == nil {
			t.Errorf("check accepted %+v", bad)
		}
	}
	for _, good := range []Config{{Mode: ModeDirect, Listen: "10.0.0.7:4433"}, {Mode: ModeDirect, Listen: ":4433"}, {Mode: ModeDirect, Listen: "[fd00::7]:4433"}, {Mode: ModeDirect, Listen: ":4433", CheckIn: 5 * time.Minute}} {
		if c := good.WithDefaults(); c.check() != nil {
			t.Errorf("check refused %+v: %v", good, c.check())
		}
	}
}

// TestExampleFile reads the example config file the device image ships,
// and again with its commented-out settings ("# key: value") turned on, so
// that every key it shows is one the agent knows.
func TestExampleFile(t *testing.T) {
	path := filepath.Join("..", "..", "images", "device", "config.example.yaml")
	var c Config
	if err := c.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if c.Fleet != "fleet.example.com:443" || c.Labels["site"] != "example" {
		t.Errorf("got %+v", c)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	commented := regexp.MustCompile(`(?m)^# ([a-z_]+: )`)
	if n := len(commented.FindAll(b, -1)); n < 5 {
		t.Fatalf("found %d commented-out settings; want the optional ones shown", n)
	}
	var all Config
	if err := all.readYAML(commented.ReplaceAll(b, []byte("$1"))); err != nil {
		t.Fatalf("the commented-out settings: %v", err)
	}
	if all.TunnelAddr == "" || len(all.Update.ReleaseKeys) != 1 || all.Update.Window != "02:00-05:00" || all.Update.HealthTimeout != 2*time.Minute {
		t.Errorf("with the commented-out settings: %+v", all)
	}
}

// TestReadDataDir reads a config file's data_dir alone, as update-check
// does: keys this agent does not know are no error there.
func TestReadDataDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("data_dir: /data/agent\na_newer_setting: 5\nlabels: {site: north}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err := ReadDataDir(path); err != nil || d != "/data/agent" {
		t.Errorf("got %q, %v; want /data/agent", d, err)
	}
	if _, err := ReadDataDir(filepath.Join(t.TempDir(), "none.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v, want it to wrap os.ErrNotExist", err)
	}
}
