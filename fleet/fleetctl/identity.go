package fleetctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/pin"
)

// fleetInfo is DATADIR/admin/fleet.json, written by fleetd next to the
// admin identity.
type fleetInfo struct {
	Addr    string `json:"addr"`
	CAPin   string `json:"ca_pin"`
	Cluster string `json:"cluster"`
}

// parseFleetInfo decodes and checks fleet.json.
func parseFleetInfo(data []byte) (*fleetInfo, error) {
	var fi fleetInfo
	if err := json.Unmarshal(data, &fi); err != nil {
		return nil, fmt.Errorf("fleet.json: %w", err)
	}
	if fi.Addr == "" {
		return nil, errors.New("fleet.json: no addr")
	}
	if fi.CAPin != "" {
		p, err := pin.Parse(fi.CAPin)
		if err != nil {
			return nil, fmt.Errorf("fleet.json: %w", err)
		}
		fi.CAPin = p
	}
	return &fi, nil
}

// connect returns a client of the fleet, with what fleetctl knows about it.
func (r *runner) connect() (*client.Client, *fleetInfo, error) {
	var (
		info     *fleetInfo
		idPath   string
		idSource string // how to say where the identity comes from
		hint     string // what to do when it is refused or expired
	)
	if r.g.identity != "" {
		if r.g.proxy == "" {
			return nil, nil, errors.New("-i needs --proxy=HOST:PORT, the fleet's address")
		}
		idPath, idSource = r.g.identity, "-i"
		info = &fleetInfo{Addr: r.g.proxy}
		hint = "get a fresh identity file from the fleet's machine (fleetd renews DATADIR/admin/identity.pem while it runs)"
	} else {
		dir := filepath.Join(r.g.dataDir, "admin")
		idPath, idSource = filepath.Join(dir, "identity.pem"), "--data-dir"
		data, err := os.ReadFile(filepath.Join(dir, "fleet.json"))
		if err != nil {
			return nil, nil, r.readError(filepath.Join(dir, "fleet.json"), err)
		}
		if info, err = parseFleetInfo(data); err != nil {
			return nil, nil, fmt.Errorf("%s is damaged (%w); restart fleetd to rewrite it", filepath.Join(dir, "fleet.json"), err)
		}
		if r.g.proxy != "" {
			info.Addr = r.g.proxy
		}
		hint = "fleetd renews it hourly while it runs; is fleetd running?"
	}
	data, err := os.ReadFile(idPath)
	if err != nil {
		if idSource == "-i" {
			return nil, nil, fmt.Errorf("read the identity file: %w", err)
		}
		return nil, nil, r.readError(idPath, err)
	}
	id, err := client.ParseIdentity(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w; pass an identity written by fleetd", idPath, err)
	}
	if info.CAPin == "" {
		info.CAPin = pin.Of(id.CACerts[0])
	}
	conf, err := client.CATLS(info.Addr, id.CACerts, &id.Cert)
	if err != nil {
		return nil, nil, err
	}
	c, err := client.New(client.Config{
		Addr:      info.Addr,
		TLS:       conf,
		UserAgent: "fleetctl/" + Version,
		Now:       r.stdio.Now,
		LoginHint: hint,
	})
	if err != nil {
		return nil, nil, err
	}
	return c, info, nil
}

// readError explains why a file of the data dir cannot be read.
func (r *runner) readError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("cannot find %s: is fleetd running with --data-dir %s? It writes the admin identity when it starts. Elsewhere, pass -i IDENTITY --proxy HOST:PORT", path, r.g.dataDir)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot read %s: permission denied; run fleetctl as the user fleetd runs as (e.g. with sudo), or pass -i IDENTITY --proxy HOST:PORT", path)
	}
	return fmt.Errorf("read %s: %w", path, err)
}
