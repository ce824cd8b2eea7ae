// Command fleetd is the fleet service: CAs, users, roles, join tokens, the
// device tunnels and the brokering of user connections to devices.
//
//	fleetd start --data-dir=DIR [--listen=HOST:PORT] [--store=etcd://HOST:PORT,.../PREFIX] [--config=fleetd.yaml]
//	fleetd store copy --from=SRC --to=DST [--data-dir=DIR] [--overwrite]
//	fleetd version
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"remoteler.dev/edge/fleet/fleetd"
	"remoteler.dev/edge/internal/buildinfo"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] == "help" || os.Args[1] == "-h" || os.Args[1] == "--help" {
		fmt.Fprint(os.Stderr, "usage: fleetd start [flags] | fleetd store copy [flags] | fleetd version\n\nRun \"fleetd start -h\" or \"fleetd store copy -h\" for the flags.\n")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "start":
		// A fleet's memory is mostly long-lived per-device state, which
		// the collector's default headroom (GOGC=100) would nearly double:
		// a third of it keeps 10,000 devices under 1 GB for a little
		// more collector CPU (docs/benchmarks.md). GOGC overrides it.
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(35)
		}
		os.Exit(start(os.Args[2:]))
	case "store":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		code := fleetd.StoreMain(ctx, os.Args[2:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	case "version", "--version":
		fmt.Println("fleetd", buildinfo.String())
	default:
		fmt.Fprintf(os.Stderr, "fleetd: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func start(args []string) int {
	fs := flag.NewFlagSet("fleetd start", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML config `file`; flags given on the command line override it")
	dataDir := fs.String("data-dir", "", "`DIR` for the embedded store, the admin identity, the audit log and recordings (required)")
	storeURL := fs.String("store", "", "the state store: bolt (DATA_DIR/fleet.db) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX] for replicas on etcd (default bolt)")
	storeCA := fs.String("store-ca", "", "PEM `file` of the CA that signs the etcd members' certificates (turns TLS on)")
	storeCert := fs.String("store-cert", "", "PEM `file` of the client certificate for etcd (with --store-key; turns TLS on)")
	storeKey := fs.String("store-key", "", "PEM `file` of the client certificate's key for etcd")
	listen := fs.String("listen", "", "`HOST:PORT` for HTTPS (TCP) and device tunnels (UDP) (default 0.0.0.0:3080)")
	cluster := fs.String("cluster", "", "fleet name; devices are DEVICE.<cluster> in OpenSSH (default \"fleet\")")
	public := fs.String("public-addr", "", "comma-separated DNS names/IPs clients use to reach the fleet, for its certificate (default: host name, localhost, 127.0.0.1, ::1)")
	publicURL := fs.String("public-url", "", "`https://HOST[:PORT]` where browsers and identity providers reach the fleet: single sign-on redirects to URL/v1/sso/callback (default https://FIRST_PUBLIC_ADDR:PORT)")
	logLevel := fs.String("log-level", "", "log level: debug, info, warn or error (default info)")
	sessionHold := fs.Duration("session-hold", 0, "how long a session waits for its device to come back after the link drops (default 10m)")
	deviceKeepalive := fs.Duration("device-keepalive", 0, "push this NAT keep-alive period to every agent, e.g. 25s; -1s turns keep-alives off (default: each agent's own)")
	retention := fs.Duration("audit-retention", 0, "how long audit events are kept, e.g. 8760h, until fleetctl retention set says otherwise (default 8760h)")
	pmtud := fs.Bool("tunnel-path-mtu-discovery", false, "let device tunnels probe for packets larger than 1280 bytes (about 6 kB per connection; default off)")
	replicaID := fs.String("replica-id", "", "this replica's `ID` among the fleet's replicas on etcd (default: made on first start, kept in DATA_DIR/replica-id)")
	peerListen := fs.String("peer-listen", "", "`HOST:PORT` for the other replicas' connections, on etcd (default: the --listen host, port 3081)")
	peerAdvertise := fs.String("peer-advertise", "", "`HOST[:PORT]` the other replicas reach this one at, on etcd (default: --peer-listen, a wildcard host replaced by this host's first address)")
	leaseTTL := fs.Duration("replica-lease-ttl", 0, "how long a replica's presence outlives it in the store, on etcd (default 15s)")
	shedAfter := fs.Duration("replica-shed-after", 0, "how long a replica that lost its lease in the store keeps its device tunnels while it tries to register again, on etcd (default: --replica-lease-ttl)")
	releaseKeys := fs.String("release-key", "", "minisign public `KEY`(s) (the base64 line of a .pub file; several separated by commas) that agent releases must be signed with (default: none; releases are refused)")
	metricsListen := fs.String("metrics-listen", "", "`HOST:PORT` to serve Prometheus metrics on (plain HTTP, /metrics); an address that is not loopback needs --metrics-token-file (default: off)")
	metricsToken := fs.String("metrics-token-file", "", "`FILE` holding the bearer token scrapers must send for the metrics (default: none, loopback only)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var cfg fleetd.Config
	if *configPath != "" {
		c, err := fleetd.LoadConfig(*configPath)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		cfg = c
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "data-dir":
			cfg.DataDir = *dataDir
		case "store":
			cfg.Store = *storeURL
		case "store-ca":
			cfg.StoreTLS.CAFile = *storeCA
		case "store-cert":
			cfg.StoreTLS.CertFile = *storeCert
		case "store-key":
			cfg.StoreTLS.KeyFile = *storeKey
		case "listen":
			cfg.Listen = *listen
		case "cluster":
			cfg.Cluster = *cluster
		case "public-addr":
			cfg.PublicAddrs = strings.Split(*public, ",")
		case "public-url":
			cfg.PublicURL = *publicURL
		case "log-level":
			cfg.LogLevel = *logLevel
		case "session-hold":
			cfg.SessionHold = fleetd.Duration(*sessionHold)
		case "device-keepalive":
			cfg.DeviceKeepalive = fleetd.Duration(*deviceKeepalive)
		case "audit-retention":
			cfg.AuditRetention = fleetd.Duration(*retention)
		case "tunnel-path-mtu-discovery":
			cfg.TunnelPathMTUDiscovery = *pmtud
		case "replica-id":
			cfg.ReplicaID = *replicaID
		case "peer-listen":
			cfg.PeerListen = *peerListen
		case "peer-advertise":
			cfg.PeerAdvertise = *peerAdvertise
		case "replica-lease-ttl":
			cfg.ReplicaLeaseTTL = fleetd.Duration(*leaseTTL)
		case "replica-shed-after":
			cfg.ReplicaShedAfter = fleetd.Duration(*shedAfter)
		case "release-key":
			cfg.ReleaseKeys = strings.Split(*releaseKeys, ",")
		case "metrics-listen":
			cfg.MetricsListen = *metricsListen
		case "metrics-token-file":
			cfg.MetricsTokenFile = *metricsToken
		}
	})
	fleetd.Version = buildinfo.Version
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.Level()}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := fleetd.Run(ctx, cfg, log, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
