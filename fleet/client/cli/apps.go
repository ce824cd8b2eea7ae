package cli

import (
	"fmt"
	"io"
	"text/tabwriter"

	"remoteler.dev/edge/proto/api"
)

// AppTable writes web apps as tsh apps ls and fleetctl apps ls show them.
type AppTable struct {
	// URIs adds where each app listens on its device (admins see it).
	URIs bool
}

// Write writes the table of apps to w.
func (t AppTable) Write(w io.Writer, apps []api.App) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	header := "APP\tDEVICE\tLABELS\tSTATUS\tADDRESS"
	if t.URIs {
		header += "\tURI"
	}
	fmt.Fprintln(tw, header)
	for _, a := range apps {
		status := "offline"
		if a.Online {
			status = "online"
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", a.Name, a.Device, Labels(a.Labels), status, Dash(a.PublicAddr))
		if t.URIs {
			uri := a.URI
			if a.InsecureSkipVerify {
				uri += " (certificate not verified)"
			}
			line += "\t" + Dash(uri)
		}
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}
