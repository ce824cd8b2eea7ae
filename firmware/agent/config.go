package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/firmware/apps"
	"remoteler.dev/edge/firmware/auditq"
	"remoteler.dev/edge/firmware/kubeproxy"
	"remoteler.dev/edge/firmware/recording"
	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/firmware/update"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/resume"
)

// Config is every setting of the agent, in one shape. edge-agent start's
// flags (RegisterFlags) and its YAML config file (ReadFile) are read into
// it alike: each setting has one flag, and one file key that is the flag's
// name with "_" for "-" (--session-hold, session_hold). WithDefaults fills
// the zero fields, so the zero value works except for Fleet and Token on a
// first start. The fleet may push its own keep-alive and liveness periods
// at hello (fleetd --device-keepalive, --device-liveness); they override
// the agent's.
type Config struct {
	// Fleet is the fleet's HOST:PORT: the join goes there over HTTPS, and
	// the tunnel over UDP unless TunnelAddr is set. Once joined, the stored
	// address is used when Fleet is empty.
	Fleet string
	// TunnelAddr is where the tunnel dials (UDP), when that is not Fleet: a
	// UDP relay or port forward in front of the fleet. The fleet is still
	// verified by Fleet's host name. Default: Fleet.
	TunnelAddr string
	// Token is a join token or a join string (TOKEN@sha256:PIN). Needed
	// only for the first start; ignored once the device has joined.
	Token string
	// CAPin verifies the fleet on the first start when the token is not a
	// join string.
	CAPin string
	// DataDir holds agent.db, the audit queue and recordings; default
	// DefaultDataDir.
	DataDir string
	// Name is the device's name in the fleet; default the host name.
	Name string
	// Labels describe the device for role selectors (site=north).
	Labels map[string]string
	// Keepalive is how often the agent refreshes its NAT mapping on an
	// idle link; default 25s (holds a 30 s UDP mapping); negative: off.
	Keepalive time.Duration
	// Liveness is how often the agent sends a heartbeat on an idle link, to
	// check that the fleet still has the connection; default 10m.
	Liveness time.Duration
	// SessionHold is how long a session waits for the tunnel to come back;
	// default 10m.
	SessionHold time.Duration
	// PathMTUDiscovery lets the tunnel probe for packets larger than 1280
	// bytes (tunnel.Config.PathMTUDiscovery); default off.
	PathMTUDiscovery bool
	// LogLevel is debug, info, warn or error; default info. edge-agent
	// makes Logger from it.
	LogLevel string
	// Kubeconfig is the local Kubernetes cluster's kubeconfig, offered to
	// the fleet when it can be used; "off" turns Kubernetes access off.
	// Default k3s's. edge-agent makes the "kube" service from it.
	Kubeconfig string
	// AuditMaxBytes caps the device's audit queue (DATA_DIR/audit.db);
	// default 64 MiB.
	AuditMaxBytes int64
	// AuditWhenFull says what happens to an action whose audit event
	// cannot be kept (queue or disk full): AuditAllow (default) lets it go
	// ahead, the drop counted, reported to the fleet and marked in the
	// audit trail; AuditRefuse refuses it.
	AuditWhenFull string
	// NoRecording turns session recording off; by default every SSH
	// shell and command is recorded and uploaded to the fleet.
	NoRecording bool
	// RecordingsMaxBytes caps the recordings waiting on the device for
	// upload (DATA_DIR/recordings); default 256 MiB.
	RecordingsMaxBytes int64
	// Apps are the web apps the device offers through the fleet
	// (firmware/apps): name, uri (http://HOST:PORT or https://...),
	// insecure_skip_verify (an https app's self-signed certificate is
	// accepted: an explicit opt-in), labels (for roles' app_labels) and
	// rewrite (more names the app calls itself in redirects and cookies,
	// headers set on requests). The agent connects only to these URIs.
	// Flag --app, repeated, one app each (NAME=URI[,options]); the file's
	// key app is a list of objects. Default: none.
	Apps []apps.App
	// MetricsListen is the HOST:PORT of a local Prometheus metrics
	// endpoint (plain HTTP, /metrics: tunnel, sessions, audit queue);
	// default "": off. Anyone who reaches it can read it: keep it on
	// loopback or a management network.
	MetricsListen string
	// Mode is how the fleet reaches the device: ModeTunnel (the default:
	// the agent holds a reverse tunnel) or ModeDirect (a direct node on
	// the fleet's own network: the fleet dials the agent at Listen for
	// each connection, and the agent's tunnel is up only while it checks
	// in).
	Mode string
	// Listen is where a direct node listens for the fleet (UDP), IP:PORT
	// or :PORT for every address (the fleet then dials the address the
	// node checks in from). Required in direct mode.
	Listen string
	// CheckIn is how often a direct node checks in while nothing happens
	// (its audit events and renewals check in at once); default and at
	// most 5m (proto.MaxCheckIn): the fleet lists it as offline, and stops
	// dialling it, 15m after its last check-in.
	CheckIn time.Duration
	// Update holds the self-update settings (firmware/update): the
	// release keys the device trusts, a bandwidth cap, a maintenance
	// window, how long a new agent has to come up healthy (default
	// update.DefaultHealthTimeout), and a switch that refuses updates.
	Update update.Settings

	// The fields below are wiring, set by code: no flag, no file key.

	// UpdateCheck is what the update start-up check found
	// (update.Startup, run before the agent); UpdateTarget is the binary
	// an update replaces (default the running executable).
	UpdateCheck  update.CheckResult
	UpdateTarget string

	// SFTPCommand runs an SFTP server as another user; see sshd.Config.
	SFTPCommand []string
	// DialCommand dials port forwards as another user; see sshd.Config.
	DialCommand []string
	// PasswdFile is the passwd file naming login shells; see
	// sshd.Config. edge-agent sets it from EDGE_AGENT_PASSWD.
	PasswdFile string
	// Services are the services the agent offers besides SSH and the web
	// apps, which it builds itself: the device's Kubernetes API, say.
	// They join SSH in the agent's service registry (firmware/services has
	// the contract).
	Services []services.Service
	// EventSource, when set, runs alongside the agent and may write extra
	// audit events with emit (tools/cmd/auditgen uses it to test
	// delivery); emit returns the event's sequence number once it is
	// fsync'd.
	EventSource func(ctx context.Context, emit func(*proto.AuditEvent) (uint64, error))
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Notify tells the supervisor (systemd) about readiness and health; nil
	// is fine.
	Notify Notifier
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// DefaultDataDir is where the agent keeps its state by default.
const DefaultDataDir = "/var/lib/edge-agent"

// Modes (Config.Mode).
const (
	ModeTunnel = "tunnel"
	ModeDirect = "direct"
)

// DefaultCheckIn is Config.CheckIn's default.
const DefaultCheckIn = proto.MaxCheckIn

// WithDefaults returns c with every zero setting set to its default. It is
// the one place that knows the defaults; New applies it, and edge-agent's
// help shows them.
func (c Config) WithDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Name == "" {
		c.Name, _ = os.Hostname() // New refuses an empty name
	}
	if c.Keepalive == 0 {
		c.Keepalive = tunnel.DefaultKeepalive
	}
	if c.Liveness <= 0 {
		c.Liveness = tunnel.DefaultLiveness
	}
	if c.SessionHold <= 0 {
		c.SessionHold = resume.DefaultHold
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	if c.Kubeconfig == "" {
		c.Kubeconfig = kubeproxy.DefaultKubeconfig
	}
	if c.AuditMaxBytes <= 0 {
		c.AuditMaxBytes = auditq.DefaultMaxBytes
	}
	if c.AuditWhenFull == "" {
		c.AuditWhenFull = AuditAllow
	}
	if c.RecordingsMaxBytes <= 0 {
		c.RecordingsMaxBytes = recording.DefaultMaxBytes
	}
	if c.Update.HealthTimeout <= 0 {
		c.Update.HealthTimeout = update.DefaultHealthTimeout
	}
	if c.Mode == "" {
		c.Mode = ModeTunnel
	}
	if c.CheckIn <= 0 {
		c.CheckIn = DefaultCheckIn
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// check refuses settings that cannot work, naming the flag.
func (c *Config) check() error {
	for _, a := range []struct{ flag, addr string }{{"fleet", c.Fleet}, {"tunnel-addr", c.TunnelAddr}} {
		if a.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return fmt.Errorf("agent: --%s %q is not HOST:PORT: %w", a.flag, a.addr, err)
		}
	}
	switch c.Mode {
	case ModeTunnel:
		if c.Listen != "" {
			return errors.New("agent: --listen is for a direct node: add --mode=direct, or leave --listen out")
		}
	case ModeDirect:
		host, port, err := net.SplitHostPort(c.Listen)
		if err != nil || port == "" || (host != "" && net.ParseIP(host) == nil) {
			return fmt.Errorf("agent: --mode=direct needs --listen IP:PORT (or :PORT), where the fleet dials the agent; got %q", c.Listen)
		}
		if c.CheckIn > proto.MaxCheckIn {
			return fmt.Errorf("agent: --check-in %s is longer than %s: the fleet dials a direct node only within %s of its last check-in; check in every %s or less",
				c.CheckIn, proto.MaxCheckIn, proto.DirectWindow, proto.MaxCheckIn)
		}
	default:
		return fmt.Errorf("agent: --mode is %q; want %s or %s", c.Mode, ModeTunnel, ModeDirect)
	}
	if c.AuditWhenFull != AuditAllow && c.AuditWhenFull != AuditRefuse {
		return fmt.Errorf("agent: --audit-when-full is %q; want %q or %q", c.AuditWhenFull, AuditAllow, AuditRefuse)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return fmt.Errorf("agent: --log-level: %w", err)
	}
	if len(c.Labels) > maxLabels {
		return fmt.Errorf("agent: more than %d labels", maxLabels)
	}
	if _, err := apps.New(apps.Config{Apps: c.Apps}); err != nil {
		return fmt.Errorf("agent: --app: %w", err)
	}
	return nil
}

// Level is LogLevel as a slog.Level (info when it cannot be read).
func (c *Config) Level() slog.Level {
	var level slog.Level
	if level.UnmarshalText([]byte(c.LogLevel)) != nil {
		return slog.LevelInfo
	}
	return level
}

// maxLabels bounds the labels a device declares.
const maxLabels = 64

// setting is one setting of Config: its flag (the file key is the same
// with "_" for "-"), its help, and the field it sets.
type setting struct {
	name, usage string
	value       flag.Value
}

// settings lists every setting of c, bound to c's fields. It is the one
// list of the agent's flags and config file keys.
func (c *Config) settings() []setting {
	return []setting{
		{"fleet", "the fleet's `HOST:PORT`: HTTPS to join, and the tunnel's UDP unless --tunnel-addr is set", (*stringValue)(&c.Fleet)},
		{"tunnel-addr", "the tunnel's UDP `HOST:PORT` when it differs from --fleet (a UDP relay or port forward in front of the fleet); the fleet is still verified by --fleet's name", (*stringValue)(&c.TunnelAddr)},
		{"token", "`JOIN_STRING` (TOKEN@sha256:PIN) or bare join token from fleetctl tokens add; needed only on the first start", (*stringValue)(&c.Token)},
		{"ca-pin", "the fleet's CA `PIN` (sha256:...) when --token is a bare token", (*stringValue)(&c.CAPin)},
		{"data-dir", "`DIR` for the agent's state (agent.db, audit queue, recordings)", (*stringValue)(&c.DataDir)},
		{"name", "device `NAME` in the fleet (default: the host name)", (*stringValue)(&c.Name)},
		{"labels", "device labels for role selectors, `k=v,k2=v2` (in the file also a map)", (*labelsValue)(&c.Labels)},
		{"keepalive", "`DURATION` between NAT keep-alives on an idle link, 29-byte datagrams (25s holds a 30 s UDP timeout); -1s turns them off", (*durationValue)(&c.Keepalive)},
		{"liveness", "`DURATION` between heartbeats on an idle link, which check that the fleet still has the connection", (*durationValue)(&c.Liveness)},
		{"session-hold", "`DURATION` a session waits for the tunnel to come back", (*durationValue)(&c.SessionHold)},
		{"path-mtu-discovery", "probe for packets larger than 1280 bytes: faster bulk data on wired links, about 6 kB more on every new connection", (*boolValue)(&c.PathMTUDiscovery)},
		{"log-level", "log `LEVEL`: debug, info, warn or error", (*stringValue)(&c.LogLevel)},
		{"kubeconfig", "the local Kubernetes cluster's kubeconfig `FILE`, offered to the fleet when it exists; \"off\" turns Kubernetes access off", (*stringValue)(&c.Kubeconfig)},
		{"audit-max-bytes", "cap of the audit queue kept on the device while the fleet is unreachable, in `bytes`", (*bytesValue)(&c.AuditMaxBytes)},
		{"audit-when-full", "what to do when an audit event cannot be kept (queue or disk full): `allow|refuse`; allow: the action goes ahead, the drop is counted, reported and marked in the audit", (*stringValue)(&c.AuditWhenFull)},
		{"no-recording", "do not record SSH sessions (by default every shell and command is recorded and uploaded to the fleet)", (*boolValue)(&c.NoRecording)},
		{"recordings-max-bytes", "cap of the recordings waiting on the device for upload, in `bytes`", (*bytesValue)(&c.RecordingsMaxBytes)},
		{"metrics-listen", "`HOST:PORT` of a local Prometheus metrics endpoint (plain HTTP, /metrics), such as 127.0.0.1:9101; anyone who reaches it can read it; empty: off", (*stringValue)(&c.MetricsListen)},
		{"app", "a web app the device offers through the fleet, `NAME=URI[,insecure-skip-verify][,label:KEY=VALUE...]`, such as nodered=http://127.0.0.1:1880; repeat for more (they add to the file's). insecure-skip-verify accepts an https app's self-signed certificate. In the file: a list of {name, uri, insecure_skip_verify, labels, rewrite}", (*appsValue)(&c.Apps)},
		{"release-key", "minisign public `KEYS` trusted for agent releases: the base64 line of a .pub file, several separated by commas (in the file also a list); pinned in DATA_DIR/update at the first start that has them. Without one the device pins the keys the fleet gives at join; without any it refuses updates", (*listValue)(&c.Update.ReleaseKeys)},
		{"update-max-bandwidth", "cap on update downloads, in `bytes` per second; 0: no cap of the device's own (a rollout may set one; the smaller applies)", (*bytesValue)(&c.Update.MaxBandwidth)},
		{"update-window", "maintenance window `HH:MM-HH:MM` (UTC) outside which updates neither download nor restart the agent; empty: any time (a rollout's window applies too)", (*stringValue)(&c.Update.Window)},
		{"update-health-timeout", "`DURATION` a new agent has to come up healthy (ready, tunnel up) before the old one is put back (a rollout may set it)", (*durationValue)(&c.Update.HealthTimeout)},
		{"update-off", "refuse every update offer", (*boolValue)(&c.Update.Off)},
		{"mode", "how the fleet reaches the device: `tunnel|direct`; tunnel: the agent holds a reverse tunnel to the fleet; direct: a node on the fleet's own network, which the fleet dials at --listen for each connection (no tunnel held)", (*stringValue)(&c.Mode)},
		{"listen", "where a direct node listens for the fleet, UDP `IP:PORT` (:PORT for every address: the fleet dials the address the node checks in from)", (*stringValue)(&c.Listen)},
		{"check-in", "`DURATION` between a direct node's check-ins while nothing happens (events and renewals check in at once), at most 5m; the fleet lists it offline after three missed", (*durationValue)(&c.CheckIn)},
	}
}

// RegisterFlags adds a flag for every setting to fs, setting c's fields.
// The help of each shows the default of WithDefaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	defaults := Config{}.WithDefaults()
	shown := map[string]flag.Value{}
	for _, s := range defaults.settings() {
		shown[s.name] = s.value
	}
	for _, s := range c.settings() {
		usage := s.usage
		if d := shown[s.name].String(); d != "" && d != "0" && d != "false" && s.name != "name" {
			usage += " (default " + d + ")"
		}
		fs.Var(s.value, s.name, usage)
	}
}

// ReadFile reads a YAML config file into c. Its keys are the settings'
// flag names with "_" for "-"; values are written as on the command line
// (keepalive: 25s, labels: site=north or a map). A key it does not know is
// an error, so that a typo does not pass for a setting.
func (c *Config) ReadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("agent: config: %w", err)
	}
	if err := c.readYAML(b); err != nil {
		return fmt.Errorf("agent: config %s: %w", path, err)
	}
	return nil
}

// readYAML sets c's settings from a YAML document.
func (c *Config) readYAML(b []byte) error {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return err
	}
	var keys map[string]any
	if err := json.Unmarshal(j, &keys); err != nil {
		return errors.New("want a map of settings (fleet: HOST:PORT, ...)")
	}
	byKey := map[string]setting{}
	for _, s := range c.settings() {
		byKey[strings.ReplaceAll(s.name, "-", "_")] = s
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		s, ok := byKey[k]
		if !ok {
			return fmt.Errorf("unknown setting %q; the settings are %s", k, strings.Join(slices.Sorted(maps.Keys(byKey)), ", "))
		}
		if err := setFromFile(s.value, keys[k]); err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

// fileSetter is a setting whose file value is richer than its flag's (a
// list of objects).
type fileSetter interface {
	SetFromFile(x any) error
}

// setFromFile sets v from a value decoded from JSON.
func setFromFile(v flag.Value, x any) error {
	if fs, ok := v.(fileSetter); ok {
		return fs.SetFromFile(x)
	}
	switch x := x.(type) {
	case nil:
		return nil
	case string:
		return v.Set(x)
	case bool:
		return v.Set(strconv.FormatBool(x))
	case float64:
		return v.Set(strconv.FormatFloat(x, 'f', -1, 64))
	case []any:
		l, ok := v.(*listValue)
		if !ok {
			return errors.New("want a single value, not a list")
		}
		out := listValue{}
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("%v: want a string", e)
			}
			out = append(out, s)
		}
		*l = out
		return nil
	case map[string]any:
		l, ok := v.(*labelsValue)
		if !ok {
			return errors.New("want a single value, not a map")
		}
		m := map[string]string{}
		for k, e := range x {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("label %q: want a string value", k)
			}
			m[k] = s
		}
		*l = m
		return nil
	}
	return fmt.Errorf("want a single value, not %v", x)
}

// The flag.Values of settings. Each reads what its String writes.
type (
	stringValue   string
	durationValue time.Duration
	bytesValue    int64
	boolValue     bool
	labelsValue   map[string]string
	listValue     []string
)

func (v *stringValue) String() string {
	if v == nil {
		return ""
	}
	return string(*v)
}

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }

func (v *durationValue) String() string {
	if v == nil || *v == 0 {
		return ""
	}
	return time.Duration(*v).String()
}

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 25s, 2m or 1h", s)
	}
	*v = durationValue(d)
	return nil
}

func (v *bytesValue) String() string {
	if v == nil {
		return "0"
	}
	return strconv.FormatInt(int64(*v), 10)
}

func (v *bytesValue) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a number of bytes", s)
	}
	*v = bytesValue(n)
	return nil
}

func (v *boolValue) String() string { return strconv.FormatBool(v != nil && bool(*v)) }

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not true or false", s)
	}
	*v = boolValue(b)
	return nil
}

// IsBoolFlag lets --no-recording go without a value.
func (v *boolValue) IsBoolFlag() bool { return true }

func (v *labelsValue) String() string {
	if v == nil || len(*v) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(*v)) {
		parts = append(parts, k+"="+(*v)[k])
	}
	return strings.Join(parts, ",")
}

// Set reads "k=v,k2=v2"; it replaces the labels.
func (v *labelsValue) Set(s string) error {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		*v = out
		return nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return fmt.Errorf("%q is not key=value", kv)
		}
		out[k] = val
	}
	if len(out) > maxLabels {
		return fmt.Errorf("more than %d labels", maxLabels)
	}
	*v = out
	return nil
}

func (v *listValue) String() string {
	if v == nil {
		return ""
	}
	return strings.Join(*v, ",")
}

// Set reads "a,b"; it replaces the list.
func (v *listValue) Set(s string) error {
	out := listValue{}
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	*v = out
	return nil
}

// ReadDataDir reads only the data_dir setting of a config file (""
// when it has none). edge-agent update-check uses it: it runs from the
// kept old binary, which must find the update state even in a file that
// holds settings only a newer agent knows (ReadFile refuses those).
func ReadDataDir(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("agent: config: %w", err)
	}
	var f struct {
		DataDir string `json:"data_dir"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		return "", fmt.Errorf("agent: config %s: %w", path, err)
	}
	return f.DataDir, nil
}

// appsValue is the web apps' setting: --app NAME=URI[,options], repeated
// (each adds an app), and the file's app key: a list of objects (or of
// flag forms). Its String is every app's flag form, separated by spaces,
// which Set reads back.
type appsValue []apps.App

func (v *appsValue) String() string {
	if v == nil {
		return ""
	}
	var parts []string
	for _, a := range *v {
		parts = append(parts, apps.FlagForm(a))
	}
	return strings.Join(parts, " ")
}

// Set adds the apps of s (flag forms separated by spaces).
func (v *appsValue) Set(s string) error {
	for _, f := range strings.Fields(s) {
		a, err := apps.ParseFlag(f)
		if err != nil {
			return err
		}
		*v = append(*v, a)
	}
	return nil
}

// SetFromFile reads the file's apps: a list of objects
// ({name, uri, insecure_skip_verify, labels, rewrite}) or of flag forms.
func (v *appsValue) SetFromFile(x any) error {
	if s, ok := x.(string); ok {
		*v = nil
		return v.Set(s)
	}
	b, err := json.Marshal(x)
	if err != nil {
		return err
	}
	var list []apps.App
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&list); err != nil {
		return fmt.Errorf("want a list of {name, uri, insecure_skip_verify, labels, rewrite}: %w", err)
	}
	*v = list
	return nil
}
