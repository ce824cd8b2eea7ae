// Command edge-agent runs on each device: it joins the fleet, keeps a QUIC
// tunnel to it and serves the sessions the fleet brokers.
//
//	edge-agent start --fleet=HOST:PORT --token=JOIN_STRING [--data-dir=DIR] [--labels=k=v,..]
//	edge-agent version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/firmware/buildinfo"
	"remoteler.dev/edge/firmware/kubeproxy"
	"remoteler.dev/edge/firmware/service"
	"remoteler.dev/edge/firmware/sshd"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "start":
		os.Exit(start(os.Args[2:]))
	case "version", "--version":
		fmt.Println("edge-agent", buildinfo.String())
	case "sftp-server":
		// Internal: the SSH server runs this as the login's user.
		if err := sshd.ServeSFTPStdio(); err != nil {
			fmt.Fprintln(os.Stderr, "edge-agent sftp-server:", err)
			os.Exit(1)
		}
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "edge-agent: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: edge-agent <command> [flags]

commands:
  start     join the fleet (first start) and keep the tunnel up
  version   print the version

Run "edge-agent start -h" for the flags.
`)
}

// fileConfig is the YAML config file (--config); flags override it.
type fileConfig struct {
	Fleet     string            `json:"fleet"`
	Token     string            `json:"token"`
	CAPin     string            `json:"ca_pin"`
	DataDir   string            `json:"data_dir"`
	Name      string            `json:"name"`
	Labels    map[string]string `json:"labels"`
	Keepalive string            `json:"keepalive"`
	Liveness  string            `json:"liveness"`
	LogLevel  string            `json:"log_level"`
	// PathMTUDiscovery is --path-mtu-discovery.
	PathMTUDiscovery bool `json:"path_mtu_discovery"`
	// Kubeconfig is the local cluster's kubeconfig (--kubeconfig).
	Kubeconfig string `json:"kubeconfig"`
	// Audit and recordings (--audit-max-bytes, --audit-when-full,
	// --no-recording).
	AuditMaxBytes int64  `json:"audit_max_bytes"`
	AuditWhenFull string `json:"audit_when_full"`
	NoRecording   bool   `json:"no_recording"`
}

func start(args []string) int {
	fs := flag.NewFlagSet("edge-agent start", flag.ContinueOnError)
	configPath := fs.String("config", "", "YAML config file; flags given on the command line override it")
	fleet := fs.String("fleet", "", "the fleet's `HOST:PORT` (HTTPS for joining, QUIC/UDP for the tunnel)")
	token := fs.String("token", "", "join token or join string (TOKEN@sha256:PIN) from fleetctl tokens add; needed only on the first start")
	caPin := fs.String("ca-pin", "", "the fleet's CA pin (sha256:...) when --token is a bare token")
	dataDir := fs.String("data-dir", agent.DefaultDataDir, "`DIR` for the agent's state (agent.db)")
	name := fs.String("name", "", "device name in the fleet (default: the host name)")
	labels := fs.String("labels", "", "device labels for role selectors, `k=v,k2=v2` (default: none)")
	keepalive := fs.Duration("keepalive", 0, "how often to refresh the NAT mapping on an idle link, with a 29-byte datagram (default 25s, for a 30 s UDP timeout; -1s turns it off)")
	liveness := fs.Duration("liveness", 0, "how often to send a heartbeat on an idle link, to check that the fleet still has the connection (default 10m)")
	sessionHold := fs.Duration("session-hold", 0, "how long a session waits for the tunnel to come back (default 10m)")
	pmtud := fs.Bool("path-mtu-discovery", false, "probe for packets larger than 1280 bytes: faster bulk data on wired links, about 6 kB more per connection (default off)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	audit := registerAuditFlags(fs)
	kubeconfig := fs.String("kubeconfig", kubeproxy.DefaultKubeconfig, "the local Kubernetes cluster's kubeconfig `FILE` (k3s's by default), offered to the fleet when it exists; \"off\" turns Kubernetes access off")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var fc fileConfig
	if *configPath != "" {
		b, err := os.ReadFile(*configPath)
		if err == nil {
			err = yaml.UnmarshalStrict(b, &fc)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "edge-agent: config %s: %v\n", *configPath, err)
			return 2
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	pick := func(flagName, flagVal, fileVal string) string {
		if set[flagName] || fileVal == "" {
			return flagVal
		}
		return fileVal
	}
	cfg := agent.Config{
		Fleet:   pick("fleet", *fleet, fc.Fleet),
		Token:   pick("token", *token, fc.Token),
		CAPin:   pick("ca-pin", *caPin, fc.CAPin),
		DataDir: pick("data-dir", *dataDir, fc.DataDir),
		Name:    pick("name", *name, fc.Name),
		Labels:  fc.Labels,
	}
	if set["labels"] || cfg.Labels == nil {
		l, err := parseLabels(*labels)
		if err != nil {
			fmt.Fprintln(os.Stderr, "edge-agent: --labels:", err)
			return 2
		}
		cfg.Labels = l
	}
	cfg.Keepalive = *keepalive
	cfg.Liveness = *liveness
	if !set["liveness"] && fc.Liveness != "" {
		d, err := time.ParseDuration(fc.Liveness)
		if err != nil {
			fmt.Fprintln(os.Stderr, "edge-agent: config liveness:", err)
			return 2
		}
		cfg.Liveness = d
	}
	cfg.SessionHold = *sessionHold
	cfg.PathMTUDiscovery = *pmtud || (!set["path-mtu-discovery"] && fc.PathMTUDiscovery)
	if !set["keepalive"] && fc.Keepalive != "" {
		d, err := time.ParseDuration(fc.Keepalive)
		if err != nil {
			fmt.Fprintln(os.Stderr, "edge-agent: config keepalive:", err)
			return 2
		}
		cfg.Keepalive = d
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(pick("log-level", *logLevel, fc.LogLevel))); err != nil {
		fmt.Fprintln(os.Stderr, "edge-agent: --log-level:", err)
		return 2
	}
	log := service.NewLogger(os.Stderr, level)
	cfg.Logger = log
	cfg.Notify = service.NewNotifier(log)
	if exe, err := os.Executable(); err == nil {
		cfg.SFTPCommand = []string{exe, "sftp-server"}
	}
	audit.apply(&cfg, set, fc)
	if kp := kubeService(&cfg, pick("kubeconfig", *kubeconfig, fc.Kubeconfig), set["kubeconfig"] || fc.Kubeconfig != "", log); kp != nil {
		defer kp.Close()
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		log.Error("edge-agent failed", "err", err)
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// parseLabels reads "k=v,k2=v2".
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not key=value", kv)
		}
		out[k] = v
	}
	if len(out) > 64 {
		return nil, errors.New("more than 64 labels")
	}
	return out, nil
}
