package proto

import (
	"fmt"
	"maps"
	"slices"

	"remoteler.dev/edge/proto/printable"
)

// Limits of the strings a device describes itself with. The fleet refuses
// longer ones, and any holding a control or bidirectional formatting
// character (printable.Check), when it ingests them: in a join, a hello and
// an audit batch.
const (
	MaxVersionLen    = 64  // AgentVersion
	MaxPlatformLen   = 32  // OS, Arch, each service name
	MaxLabels        = 64  // labels per device
	MaxLabelKeyLen   = 63  // a label's key
	MaxLabelValueLen = 255 // a label's value
)

// CheckDeviceInfo checks what a device says of itself (at join and at each
// hello): its agent's version, OS, architecture and labels. Empty strings
// pass.
func CheckDeviceInfo(version, goos, arch string, labels map[string]string) error {
	for _, f := range []struct {
		name, s string
		max     int
	}{{"agent version", version, MaxVersionLen}, {"OS", goos, MaxPlatformLen}, {"architecture", arch, MaxPlatformLen}} {
		if err := printable.Check(f.s, f.max); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels; at most %d", len(labels), MaxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if k == "" {
			return fmt.Errorf("a label with an empty key")
		}
		if err := printable.Check(k, MaxLabelKeyLen); err != nil {
			return fmt.Errorf("label key: %w", err)
		}
		if err := printable.Check(labels[k], MaxLabelValueLen); err != nil {
			return fmt.Errorf("label %s: %w", printable.Escape(k), err)
		}
	}
	return nil
}

// Check checks the strings of a hello (CheckDeviceInfo, and the names of
// the services).
func (h *Hello) Check() error {
	if err := CheckDeviceInfo(h.AgentVersion, h.OS, h.Arch, h.Labels); err != nil {
		return err
	}
	for _, s := range h.Services {
		if err := printable.Check(s, MaxPlatformLen); err != nil {
			return fmt.Errorf("service: %w", err)
		}
	}
	return nil
}

// CheckDevice checks an audit event a device sent: the fields that name
// things (type, outcome, user, login, session, device, cluster, address and
// the keys of Fields) must be printable. Message and the values of Fields
// are free text (a command the user ran, say) and are kept as they are, as
// evidence; every printer escapes them.
func (e *AuditEvent) CheckDevice() error {
	for _, f := range []struct{ name, s string }{
		{"type", e.Type}, {"outcome", e.Outcome}, {"user", e.User}, {"login", e.Login}, {"session", e.Session},
		{"device", e.Device}, {"cluster", e.Cluster}, {"addr", e.Addr},
	} {
		if err := printable.Check(f.s, MaxEventString); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(e.Fields)) {
		if err := printable.Check(k, MaxEventString); err != nil {
			return fmt.Errorf("field name: %w", err)
		}
	}
	return nil
}

// Check checks a ClusterInfo: at most MaxClusterKeys of each list, none
// empty or larger than 4 KiB, a printable cluster name and a printable
// Leaving of at most MaxSessionEndMessage bytes. What the keys
// and certificates are is for the receiver to parse.
func (c *ClusterInfo) Check() error {
	if err := printable.Check(c.Cluster, 253); err != nil {
		return fmt.Errorf("cluster-info: cluster: %w", err)
	}
	if err := printable.Check(c.Leaving, MaxSessionEndMessage); err != nil {
		return fmt.Errorf("cluster-info: leaving: %w", err)
	}
	for _, l := range []struct {
		name string
		v    [][]byte
	}{{"host CA keys", c.HostCAKeys}, {"user CA keys", c.UserCAKeys}, {"CA certificates", c.CACerts}} {
		if len(l.v) > MaxClusterKeys {
			return fmt.Errorf("cluster-info: %d %s; at most %d", len(l.v), l.name, MaxClusterKeys)
		}
		for _, b := range l.v {
			if len(b) == 0 || len(b) > 4<<10 {
				return fmt.Errorf("cluster-info: one of the %s is empty or larger than 4 KiB", l.name)
			}
		}
	}
	return nil
}
