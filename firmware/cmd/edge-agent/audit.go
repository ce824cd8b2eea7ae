package main

import (
	"flag"

	"remoteler.dev/edge/firmware/agent"
)

// auditFlags are the audit and recording flags of edge-agent start.
type auditFlags struct {
	maxBytes    *int64
	whenFull    *string
	noRecording *bool
}

func registerAuditFlags(fs *flag.FlagSet) *auditFlags {
	return &auditFlags{
		maxBytes:    fs.Int64("audit-max-bytes", 0, "cap of the audit queue kept on the device while the fleet is unreachable, in `bytes` (default 64 MiB)"),
		whenFull:    fs.String("audit-when-full", agent.AuditAllow, "when an audit event cannot be kept (queue or disk full): allow (the action goes ahead; the drop is counted, reported and marked in the audit) or refuse"),
		noRecording: fs.Bool("no-recording", false, "do not record SSH sessions (by default every shell and command is recorded and uploaded to the fleet)"),
	}
}

// apply sets the flags given (on the command line, or else in the config
// file) in cfg.
func (f *auditFlags) apply(cfg *agent.Config, set map[string]bool, fc fileConfig) {
	cfg.AuditMaxBytes = *f.maxBytes
	if !set["audit-max-bytes"] && fc.AuditMaxBytes != 0 {
		cfg.AuditMaxBytes = fc.AuditMaxBytes
	}
	cfg.AuditWhenFull = *f.whenFull
	if !set["audit-when-full"] && fc.AuditWhenFull != "" {
		cfg.AuditWhenFull = fc.AuditWhenFull
	}
	cfg.NoRecording = *f.noRecording || (!set["no-recording"] && fc.NoRecording)
}
