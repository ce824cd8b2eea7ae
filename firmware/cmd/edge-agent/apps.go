package main

import (
	"flag"
	"fmt"
	"strings"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/firmware/apps"
)

// The web-app block of edge-agent's settings: the config file's apps list
// and the --app flags, read into agent.Config.Apps.

// appFlags are the --app flags, one per app.
type appFlags []string

func (f *appFlags) String() string { return strings.Join(*f, " ") }

func (f *appFlags) Set(v string) error {
	if _, err := apps.ParseFlag(v); err != nil {
		return err
	}
	*f = append(*f, v)
	return nil
}

func registerAppFlags(fs *flag.FlagSet) *appFlags {
	f := &appFlags{}
	fs.Var(f, "app", "a web app the device offers through the fleet, `NAME=URI[,insecure-skip-verify][,label:KEY=VALUE...]`, "+
		"such as nodered=http://127.0.0.1:1880; repeat for more. insecure-skip-verify accepts an https app's self-signed certificate. "+
		"Rewrites are set in the config file's apps list. Flags replace the file's list (default: none)")
	return f
}

// apply sets cfg.Apps: from the flags when any are given, else from the
// config file.
func (f *appFlags) apply(cfg *agent.Config, fc fileConfig) error {
	cfg.Apps = fc.Apps
	if len(*f) > 0 {
		cfg.Apps = nil
		for _, v := range *f {
			a, err := apps.ParseFlag(v)
			if err != nil {
				return err
			}
			cfg.Apps = append(cfg.Apps, a)
		}
	}
	// Checked now, so that a mistake stops the start with its reason.
	if _, err := apps.New(apps.Config{Apps: cfg.Apps}); err != nil {
		return fmt.Errorf("web apps: %w", err)
	}
	return nil
}
