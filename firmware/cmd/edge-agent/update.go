package main

import (
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/firmware/update"
	"remoteler.dev/edge/internal/buildinfo"
)

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
		cfg.Fleet, cfg.TunnelAddr = "127.0.0.1:9", "127.0.0.1:9"
	}
	return 0, false
}

// exitRestart is the exit status of an agent that stops to be started
// again on another binary (EX_TEMPFAIL); the unit's Restart=always starts
// it.
const exitRestart = 75

// updateCheckFlags registers update-check's flags. The command is the
// pre-start check the unit runs (ExecStartPre) from the kept old binary:
// it puts the old binary back when the new one failed its trial or an
// apply was interrupted.
func updateCheckFlags(fs *flag.FlagSet) func(*flag.FlagSet) int {
	configPath := fs.String("config", "", "the agent's YAML config `FILE`, for its data_dir")
	dataDir := fs.String("data-dir", agent.DefaultDataDir, "the agent's state `DIR`; wins over the config file's")
	return func(fs *flag.FlagSet) int {
		dir := *dataDir
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "data-dir" })
		if *configPath != "" && !given {
			// Only data_dir: the old binary runs this with a config file
			// that may hold settings only the new one knows.
			d, err := agent.ReadDataDir(*configPath)
			if err != nil {
				fmt.Fprintln(fs.Output(), "edge-agent update-check:", err)
				return 2
			}
			if d != "" {
				dir = d
			}
		}
		res, err := update.PreStart(filepath.Join(dir, "update"), time.Now())
		if res.Message != "" {
			fmt.Fprintln(fs.Output(), "edge-agent update-check:", res.Message)
		}
		if err != nil {
			fmt.Fprintln(fs.Output(), "edge-agent update-check:", err)
			return 1
		}
		return 0
	}
}
