// Package fleetd wires the fleet service together: it opens the store in the
// data dir, loads or creates the CAs, listens for HTTPS (TCP) and device
// tunnels (QUIC over UDP) on one port, and serves until its context ends.
// The fleetd command is a thin main around Run.
//
// Only fleet/cmd/fleetd and tests import this package.
package fleetd

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/fleet/store/backend"
)

// Config is fleetd's configuration, from flags or a YAML file. The zero
// value of every field but DataDir works.
type Config struct {
	// DataDir holds the embedded store (fleet.db), the admin identity
	// (admin/), the audit log and the recordings. Required, with every
	// store.
	DataDir string `json:"data_dir"`
	// Store names the fleet's state store: "bolt" (the default:
	// DATA_DIR/fleet.db) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] for
	// several replicas on one etcd cluster (keys under /PREFIX/, default
	// /fleet/). See docs/storage.md.
	Store string `json:"store"`
	// StoreTLS are the PEM files for TLS to etcd: ca_file verifies the
	// members, cert_file and key_file are a client certificate. Empty:
	// plain TCP.
	StoreTLS backend.TLSFiles `json:"store_tls"`
	// Listen is the host:port for HTTPS (TCP) and tunnels (UDP); default
	// "0.0.0.0:3080". Port 0 picks a free port.
	Listen string `json:"listen"`
	// Cluster names the fleet; default "fleet". Devices are reached as
	// DEVICE.<cluster> from OpenSSH.
	Cluster string `json:"cluster"`
	// PublicAddrs are the DNS names and IPs clients use to reach the fleet;
	// they go into its TLS certificate. Default: this host's name,
	// localhost, 127.0.0.1, ::1 and the Listen host.
	PublicAddrs []string `json:"public_addrs"`
	// PublicURL is where browsers and identity providers reach the fleet,
	// https://HOST[:PORT]: single sign-on's redirect address is
	// PublicURL/v1/sso/callback and headless logins are approved at
	// PublicURL/web/device. Default https://FIRST_PUBLIC_ADDR:PORT with
	// the Listen port, or https://LISTEN_HOST:PORT (127.0.0.1 for an
	// unspecified host) without public_addrs.
	PublicURL string `json:"public_url"`
	// UserCertTTL is the default lifetime of user certificates; default 8h.
	UserCertTTL Duration `json:"user_cert_ttl"`
	// DeviceCertTTL is the lifetime of device certificates; default 168h.
	DeviceCertTTL Duration `json:"device_cert_ttl"`
	// SessionHold is how long a brokered session waits for its device to
	// come back after the link drops; default 10m.
	SessionHold Duration `json:"session_hold"`
	// DeviceKeepalive, when set, tells every agent how often to refresh its
	// NAT mapping (e.g. "25s"; "-1s" turns it off); default: each agent's
	// own setting.
	DeviceKeepalive Duration `json:"device_keepalive"`
	// DirectNetworks are CIDR prefixes where direct nodes (edge-agent
	// --mode=direct) may ask to be dialled, besides loopback, private and
	// link-local addresses; default none.
	DirectNetworks []string `json:"direct_networks"`
	// DeviceLiveness, when set, tells every agent how often to send a
	// heartbeat while idle; default: each agent's own (10m).
	DeviceLiveness Duration `json:"device_liveness"`
	// TunnelPathMTUDiscovery lets the device tunnels probe for packets
	// larger than 1280 bytes toward devices; default off (the probes cost
	// about 6 kB per connection, a lot for a device on a metered link that
	// reconnects a few times a day).
	TunnelPathMTUDiscovery bool `json:"tunnel_path_mtu_discovery"`
	// LogLevel is debug, info, warn or error; default info.
	LogLevel string `json:"log_level"`
	// KubeServiceAccountDir is where a pod's service account is mounted;
	// when it holds a token and fleetd runs in Kubernetes, users reach
	// that cluster too (tsh kube login). Default
	// /var/run/secrets/kubernetes.io/serviceaccount; "off" turns it off.
	KubeServiceAccountDir string `json:"kube_service_account_dir"`
	// KubeClusterName is what users call that cluster; default Cluster.
	KubeClusterName string `json:"kube_cluster_name"`
	// KubeClusterLabels are that cluster's labels for roles'
	// device_labels; default none (roles with {"*": "*"} select it).
	KubeClusterLabels map[string]string `json:"kube_cluster_labels"`
	// AuditRetention is how long audit events are kept (e.g. "8760h")
	// until an admin sets a storage policy (fleetctl retention set, which
	// wins); default the policy's default, a year.
	AuditRetention Duration `json:"audit_retention"`
	// ReleaseKeys are the minisign public keys (the base64 line of a .pub
	// file) the fleet accepts agent releases signed by; without one,
	// fleetctl releases add is refused. Agents pin their own keys.
	ReleaseKeys []string `json:"release_keys"`
	// AuditCheckpointEvery is how often fleetd signs a checkpoint of its
	// audit chains' heads (when they changed); it signs one when it stops
	// too. Default 5m.
	AuditCheckpointEvery Duration `json:"audit_checkpoint_every"`
	// MaxConnsPerSource caps the HTTPS connections one source address (an
	// IPv4 address, or an IPv6 /64) holds at once; past it a new one is
	// closed as soon as it is accepted. Default 128; -1 turns the cap off.
	MaxConnsPerSource int `json:"max_conns_per_source"`
	// HTTPBodyIdleTimeout is the longest pause allowed inside a request
	// body on the HTTPS port, and HTTPBodyTimeout the longest a body may
	// take; defaults 10s and 1m. They do not cut brokered connections or
	// Kubernetes watches and exec sessions.
	HTTPBodyIdleTimeout Duration `json:"http_body_idle_timeout"`
	HTTPBodyTimeout     Duration `json:"http_body_timeout"`
	// LoginBurst and LoginEvery rate-limit logins per source address (an
	// IPv4 address, or an IPv6 /64): bursts of LoginBurst, then one every
	// LoginEvery. Defaults 10 and 6s; a LoginEvery of "-1s" turns the
	// limit off.
	LoginBurst int      `json:"login_burst"`
	LoginEvery Duration `json:"login_every"`

	// Several replicas on etcd (docs/replicas.md).

	// ReplicaID names this fleetd among the fleet's replicas (a-z, 0-9,
	// '-'); default: made on first start and kept in DATA_DIR/replica-id.
	ReplicaID string `json:"replica_id"`
	// PeerListen is the host:port where this replica takes connections
	// from the other replicas (mutual TLS with replica certificates);
	// default: the Listen host, port 3081 (0 when Listen's port is 0).
	// Used only on etcd.
	PeerListen string `json:"peer_listen"`
	// PeerAdvertise is the host[:port] the other replicas reach this one
	// at (a pod IP, say); default: PeerListen, with a wildcard host
	// replaced by this host's first non-loopback address.
	PeerAdvertise string `json:"peer_advertise"`
	// ReplicaLeaseTTL is how long a replica's presence outlives it (how
	// long a dead replica's devices still show online); default 15s.
	ReplicaLeaseTTL Duration `json:"replica_lease_ttl"`
	// ReplicaShedAfter is how long a replica that lost its lease (cut off
	// from etcd, or etcd too busy to renew it) keeps its device tunnels
	// while it tries to register again; if it does in time, it records
	// them again and its devices never reconnect, else it closes them and
	// they go to another replica; default: ReplicaLeaseTTL.
	ReplicaShedAfter Duration `json:"replica_shed_after"`

	// Web apps on devices (docs/apps.md).

	// AppsDomain is the fleet's host for browsers; each app is one label
	// below it, APP--DEVICE.DOMAIN, so one wildcard certificate
	// (*.DOMAIN) covers them all; browsers reach apps on PublicURL's
	// port. Default: PublicURL's host when it is a DNS name, else the
	// first DNS name in PublicAddrs, else "localhost".
	AppsDomain string `json:"apps_domain"`
	// AppURIHosts lists what app URIs on devices may name beyond loopback
	// and private addresses and "localhost": host names, "*.SUFFIX",
	// CIDR prefixes, or "*" for any. A device that declares an app
	// elsewhere has it refused (and audited).
	AppURIHosts []string `json:"app_uri_hosts"`
	// AppUploadLimit caps a request body sent to an app, in bytes;
	// default 1 GiB. Larger uploads get 413.
	AppUploadLimit int64 `json:"app_upload_limit"`
	// AppSessionTTL caps a browser's session with one app; default 8h
	// (never longer than the fleet login it came from).
	AppSessionTTL Duration `json:"app_session_ttl"`

	// The dashboard and the metrics (docs/dashboard.md, docs/metrics.md).

	// FleetAddr is the fleet's HOST:PORT as devices reach it, for the
	// join command the dashboard shows; default the first of PublicAddrs
	// with the Listen port.
	FleetAddr string `json:"fleet_addr"`
	// LinkHistoryHourlyDays is how many days of each device's link
	// history keep their hours, and LinkHistoryDays how many days are
	// kept at all (DATA_DIR/linkhistory.db); defaults 7 and 90.
	LinkHistoryHourlyDays int `json:"link_history_hourly_days"`
	LinkHistoryDays       int `json:"link_history_days"`
	// LinkHistoryEvery is how often every device's link is sampled for
	// the history; default 1m.
	LinkHistoryEvery Duration `json:"link_history_every"`
	// MetricsListen is the HOST:PORT of the Prometheus metrics endpoint
	// (plain HTTP, /metrics); default "": off. An address that is not
	// loopback needs MetricsTokenFile.
	MetricsListen string `json:"metrics_listen"`
	// MetricsTokenFile holds the bearer token scrapers must send
	// (Authorization: Bearer TOKEN); default none (loopback only).
	MetricsTokenFile string `json:"metrics_token_file"`
}

// DefaultMaxConnsPerSource is MaxConnsPerSource's default.
const DefaultMaxConnsPerSource = 128

// Duration is a time.Duration written as "8h" in YAML.
type Duration time.Duration

// UnmarshalJSON reads "8h"-style durations.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("bad duration %s: %w", b, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes "8h0m0s"-style durations.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// LoadConfig reads a YAML config file. Unknown keys are an error.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("fleetd: read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return c, fmt.Errorf("fleetd: config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "0.0.0.0:3080"
	}
	if c.Cluster == "" {
		c.Cluster = "fleet"
	}
	if c.UserCertTTL == 0 {
		c.UserCertTTL = Duration(8 * time.Hour)
	}
	if c.DeviceCertTTL == 0 {
		c.DeviceCertTTL = Duration(7 * 24 * time.Hour)
	}
	if c.MaxConnsPerSource == 0 {
		c.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
}

// Level parses LogLevel.
func (c *Config) Level() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return slog.LevelInfo
	}
	return l
}
