package cli

import (
	"io"

	"remoteler.dev/edge/proto/api"
)

// AppTable writes web apps as tsh apps ls and fleetctl apps ls show them.
type AppTable struct {
	// URIs adds where each app listens on its device (admins see it).
	URIs bool
}

// Write writes the table of apps to w.
func (t AppTable) Write(w io.Writer, apps []api.App) error {
	header := []string{"APP", "DEVICE", "LABELS", "STATUS", "ADDRESS"}
	if t.URIs {
		header = append(header, "URI")
	}
	tw := NewTable(w, header...)
	for _, a := range apps {
		status := "offline"
		if a.Online {
			status = "online"
		}
		row := []string{a.Name, a.Device, Labels(a.Labels), status, Dash(a.PublicAddr)}
		if t.URIs {
			uri := a.URI
			if a.InsecureSkipVerify {
				uri += " (certificate not verified)"
			}
			row = append(row, Dash(uri))
		}
		tw.Row(row...)
	}
	return tw.Flush()
}
