package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/firmware/identity"
	"remoteler.dev/edge/firmware/update"
	"remoteler.dev/edge/internal/buildinfo"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// join exchanges the join token for the device's identity and stores it.
func (a *Agent) join(ctx context.Context) (*identity.Identity, error) {
	if a.cfg.Fleet == "" || a.cfg.Token == "" {
		return nil, errors.New("agent: this device has not joined a fleet yet: pass --fleet=HOST:PORT and --token (from fleetctl tokens add)")
	}
	token, caPin, err := pin.ParseJoin(a.cfg.Token)
	if err != nil {
		return nil, fmt.Errorf("agent: --token: %w", err)
	}
	if caPin == "" {
		if a.cfg.CAPin == "" {
			return nil, errors.New("agent: the fleet cannot be verified: pass a join string (TOKEN@sha256:...) as --token, or --ca-pin")
		}
		if caPin, err = pin.Parse(a.cfg.CAPin); err != nil {
			return nil, fmt.Errorf("agent: --ca-pin: %w", err)
		}
	}
	keys, err := identity.NewKeys(a.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("agent: generate keys: %w", err)
	}
	req := api.JoinRequest{
		Token: token, Name: a.cfg.Name, Labels: a.cfg.Labels, CSR: keys.CSR,
		SSHPublicKey: string(ssh.MarshalAuthorizedKey(keys.SSHPublic)), AgentVersion: buildinfo.Version,
	}
	host, _, err := net.SplitHostPort(a.cfg.Fleet)
	if err != nil {
		return nil, fmt.Errorf("agent: --fleet %q: %w", a.cfg.Fleet, err)
	}
	tlsConf := &tls.Config{
		ServerName:         host,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified against the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			at := time.Time{}
			if leaf, err := x509.ParseCertificate(raw[0]); err == nil {
				at = a.clock.VerifyTime(leaf)
			}
			_, err := pin.VerifyAt(raw, caPin, host, at)
			return err
		},
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	defer hc.CloseIdleConnections()
	body, _ := json.Marshal(req)
	a.log.Info("joining the fleet", "fleet", a.cfg.Fleet, "name", a.cfg.Name)
	hreq, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+a.cfg.Fleet+api.PathJoin, bytes.NewReader(body))
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("agent: join %s: %w", a.cfg.Fleet, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("agent: join: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			return nil, fmt.Errorf("agent: the fleet refused to join: %s", e.Message)
		}
		return nil, fmt.Errorf("agent: the fleet refused to join: %s", resp.Status)
	}
	var jr api.JoinResponse
	if err := json.Unmarshal(b, &jr); err != nil {
		return nil, fmt.Errorf("agent: join: bad answer: %w", err)
	}
	hostCert, _, _, _, err := ssh.ParseAuthorizedKey([]byte(jr.SSHHostCert))
	if err != nil {
		return nil, fmt.Errorf("agent: join: bad host certificate: %w", err)
	}
	id := &identity.Identity{
		DeviceID: jr.DeviceID, Name: jr.Name, Cluster: jr.Cluster, Fleet: a.cfg.Fleet, CAPin: caPin,
		TLSKey: keys.TLSKey, Cert: jr.Cert, CACerts: jr.CACerts, SSHKey: keys.SSHKey, SSHHostCert: hostCert.Marshal(),
		ClockOffset: jr.ServerTime.Sub(a.cfg.Now()),
	}
	for _, k := range jr.UserCAKeys {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return nil, fmt.Errorf("agent: join: bad user CA key: %w", err)
		}
		id.UserCAKeys = append(id.UserCAKeys, pub.Marshal())
	}
	if err := a.store.Save(id); err != nil {
		return nil, fmt.Errorf("agent: join: %w", err)
	}
	a.clock.setOffset(id.ClockOffset)
	if len(jr.ReleaseKeys) > 0 && len(a.cfg.Update.ReleaseKeys) == 0 {
		// The fleet's release keys, vouched for by the CA pin the join
		// was checked with.
		if err := update.PinKeys(filepath.Join(a.cfg.DataDir, "update"), jr.ReleaseKeys); err != nil {
			a.log.Warn("release keys from the fleet not pinned", "err", err)
		}
	}
	a.log.Info("joined the fleet", "fleet", a.cfg.Fleet, "cluster", jr.Cluster, "name", jr.Name, "device_id", jr.DeviceID)
	return id, nil
}
