package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

// DeviceTable options.
type DeviceTable struct {
	// Verbose adds the ID, OS/arch, address, join time and link health.
	Verbose bool
	// Logins adds the asking user's logins (tsh; fleetctl's admin has none).
	Logins bool
	// Update adds the target version and the update state (OTA) without
	// Verbose, which has them too (fleetctl devices ls).
	Update bool
	Now    time.Time
}

// Write prints devices as a table.
func (t DeviceTable) Write(w io.Writer, devices []api.Device) error {
	head := []string{"NAME", "LABELS", "STATUS", "MODE", "LAST SEEN", "VERSION"}
	if t.Update && !t.Verbose {
		head = append(head, "TARGET", "UPDATE")
	}
	if t.Verbose {
		head = []string{"NAME", "ID", "LABELS", "STATUS", "MODE", "LAST SEEN", "VERSION", "TARGET", "UPDATE", "OS/ARCH", "ADDRESS", "JOINED", "RTT", "LOSS", "RECONNECTS", "SENT/RECEIVED", "ADDRESS CHANGED"}
	}
	if t.Logins {
		head = append(head, "LOGINS")
	}
	tw := NewTable(w, head...)
	for _, d := range devices {
		status := "offline"
		if d.Online {
			status = "online"
		}
		mode := d.Mode
		if mode == "" {
			mode = api.ModeTunnel
		}
		cols := []string{d.Name, Labels(d.Labels), status, mode, Ago(t.Now, d.LastSeen), Dash(d.AgentVersion)}
		if t.Update && !t.Verbose {
			target, upd := UpdateColumns(d.Update)
			cols = append(cols, target, upd)
		}
		if t.Verbose {
			osArch := ""
			if d.OS != "" || d.Arch != "" {
				osArch = d.OS + "/" + d.Arch
			}
			l := d.Link
			rtt, loss, bytes := "-", "-", "-"
			if d.Online && (mode != api.ModeDirect || !d.Link.ConnectedSince.IsZero()) {
				rtt = fmt.Sprintf("%.0fms", l.RTTMillis)
				loss = fmt.Sprintf("%.1f%%", l.LossPercent)
				bytes = Bytes(l.BytesSent) + "/" + Bytes(l.BytesReceived)
			}
			moved := "-"
			if !l.AddrChangedAt.IsZero() {
				moved = Ago(t.Now, l.AddrChangedAt)
			}
			target, upd := UpdateColumns(d.Update)
			cols = []string{d.Name, d.ID, Labels(d.Labels), status, mode, Ago(t.Now, d.LastSeen), Dash(d.AgentVersion), target, upd,
				Dash(osArch), Dash(d.Addr), Ago(t.Now, d.JoinedAt), rtt, loss, fmt.Sprint(l.Reconnects), bytes, moved}
		}
		if t.Logins {
			cols = append(cols, Dash(strings.Join(d.Logins, ",")))
		}
		tw.Row(cols...)
	}
	return tw.Flush()
}

// UpdateColumns returns the TARGET and UPDATE columns of a device: the
// version it is being moved to, and where that stands ("downloading 42%",
// "rolled_back: reason").
func UpdateColumns(u *api.DeviceUpdate) (string, string) {
	if u == nil || u.State == "" {
		return "-", "-"
	}
	state := u.State
	switch {
	case u.State == "downloading" && u.Total > 0:
		state = fmt.Sprintf("downloading %d%%", u.Done*100/u.Total)
	case u.Reason != "":
		state += ": " + u.Reason
	}
	return Dash(u.Target), state
}

// DeviceCompletion is a device as a shell completion: its name, described
// by its status and labels.
func DeviceCompletion(d api.Device) string {
	status := "offline"
	if d.Online {
		status = "online"
	}
	return Completion(d.Name, status+" "+Labels(d.Labels))
}

// Completion is a shell completion candidate with a description, both
// escaped (printable.Escape) like table cells.
func Completion(name, desc string) string {
	return cobra.CompletionWithDesc(printable.Escape(name), printable.Escape(desc))
}

// LabelCompletions are the distinct LABEL=VALUE pairs of devices, sorted.
func LabelCompletions(devices []api.Device) []string {
	seen := map[string]bool{}
	for _, d := range devices {
		for k, v := range d.Labels {
			seen[k+"="+v] = true
		}
	}
	out := slices.Sorted(maps.Keys(seen))
	for i, l := range out {
		out[i] = printable.Escape(l)
	}
	return out
}

// Bytes formats a byte count with a binary unit: 512B, 1.5KiB, 3.2MiB.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
