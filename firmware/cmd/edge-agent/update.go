package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/firmware/buildinfo"
	"remoteler.dev/edge/firmware/update"
)

// updateFile is the config file's "update" block (update.Settings, with
// the timeout written as "2m").
type updateFile struct {
	ReleaseKeys   []string `json:"release_keys"`
	MaxBandwidth  int64    `json:"max_bandwidth"`
	Window        string   `json:"window"`
	HealthTimeout string   `json:"health_timeout"`
	Off           bool     `json:"off"`
}

// updateFlags are the self-update flags of edge-agent start.
type updateFlags struct {
	keys      *string
	bandwidth *int64
	window    *string
	health    *time.Duration
	off       *bool
}

func registerUpdateFlags(fs *flag.FlagSet) *updateFlags {
	return &updateFlags{
		keys:      fs.String("release-key", "", "minisign public `KEY`(s) (the base64 line of the .pub file; several separated by commas) trusted for agent releases, pinned in DATA_DIR/update at the first start; without one, updates are refused"),
		bandwidth: fs.Int64("update-max-bandwidth", 0, "cap on update downloads in `bytes` per second (default: no cap of the device's own)"),
		window:    fs.String("update-window", "", "maintenance window `HH:MM-HH:MM` (UTC) outside which updates neither download nor restart the agent (default: any time)"),
		health:    fs.Duration("update-health-timeout", 0, "how long a new agent has to come up healthy (ready, tunnel up) before the old one is put back (default 2m)"),
		off:       fs.Bool("update-off", false, "refuse every update offer"),
	}
}

// apply sets the update settings from the flags given, or else the file.
func (f *updateFlags) apply(cfg *agent.Config, set map[string]bool, fc fileConfig) error {
	s := update.Settings{ReleaseKeys: fc.Update.ReleaseKeys, MaxBandwidth: fc.Update.MaxBandwidth,
		Window: fc.Update.Window, Off: fc.Update.Off}
	if fc.Update.HealthTimeout != "" {
		d, err := time.ParseDuration(fc.Update.HealthTimeout)
		if err != nil {
			return fmt.Errorf("config update.health_timeout: %w", err)
		}
		s.HealthTimeout = d
	}
	if set["release-key"] {
		s.ReleaseKeys = nil
		for _, k := range strings.Split(*f.keys, ",") {
			if k = strings.TrimSpace(k); k != "" {
				s.ReleaseKeys = append(s.ReleaseKeys, k)
			}
		}
	}
	if set["update-max-bandwidth"] {
		s.MaxBandwidth = *f.bandwidth
	}
	if set["update-window"] {
		s.Window = *f.window
	}
	if set["update-health-timeout"] {
		s.HealthTimeout = *f.health
	}
	if set["update-off"] {
		s.Off = *f.off
	}
	cfg.Update = s
	return nil
}

// startupCheck runs the update start-up check before the agent starts
// (see firmware/update). It returns an exit code when the agent must not
// go on: the old binary was put back and must be started instead.
func startupCheck(cfg *agent.Config, log *slog.Logger) (int, bool) {
	res, err := update.Startup(filepath.Join(cfg.DataDir, "update"), buildinfo.Version, time.Now())
	if err != nil {
		log.Error("update start-up check", "err", err)
	}
	if res.Message != "" {
		log.Info("update start-up check", "result", res.Message)
	}
	if res.Restart {
		return exitRestart, true
	}
	cfg.UpdateCheck = res
	switch update.TestFault() {
	case update.FaultCrashAtStart:
		panic("edge-agent: test build that crashes at start (firmware/update testFault)")
	case update.FaultNoConnect:
		// A test build whose tunnel never comes up: nothing listens there.
		cfg.Fleet = "127.0.0.1:9"
	}
	return 0, false
}

// exitRestart is the exit status of an agent that stops to be started
// again on another binary (EX_TEMPFAIL); the unit's Restart=always starts
// it.
const exitRestart = 75

// updateCheck is `edge-agent update-check`: the pre-start check the unit
// runs (ExecStartPre) from the kept old binary. It puts the old binary
// back when the new one failed its trial or an apply was interrupted.
func updateCheck(args []string) int {
	fs := flag.NewFlagSet("edge-agent update-check", flag.ContinueOnError)
	configPath := fs.String("config", "", "the agent's YAML config file (for data_dir)")
	dataDir := fs.String("data-dir", agent.DefaultDataDir, "the agent's state `DIR`")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	dir := *dataDir
	if *configPath != "" && !flagSet(fs, "data-dir") {
		var fc fileConfig
		b, err := os.ReadFile(*configPath)
		if err == nil {
			err = yaml.Unmarshal(b, &fc)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "edge-agent update-check: config %s: %v\n", *configPath, err)
			return 2
		}
		if fc.DataDir != "" {
			dir = fc.DataDir
		}
	}
	res, err := update.PreStart(filepath.Join(dir, "update"), time.Now())
	if res.Message != "" {
		fmt.Fprintln(os.Stderr, "edge-agent update-check:", res.Message)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "edge-agent update-check:", err)
		return 1
	}
	return 0
}

func flagSet(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}
