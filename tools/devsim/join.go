package devsim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/firmware/identity"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// joinAttempts bounds the tries per device; the fleet refuses concurrent
// uses of one token now and then ("too many devices joining"), and a busy
// fleet may time out.
const joinAttempts = 6

// joinAll loads every device's identity from the data dir and joins the
// devices that have none, JoinWorkers at a time.
func (s *Sim) joinAll(ctx context.Context) error {
	var todo []*device
	for _, d := range s.devices {
		id, err := loadIdentity(s.identityPath(d))
		switch {
		case err == nil:
			d.id = id
		case errors.Is(err, fs.ErrNotExist):
			todo = append(todo, d)
		default:
			return fmt.Errorf("devsim: %s: %w", d.name, err)
		}
	}
	if len(todo) == 0 {
		s.log.Info("all devices joined before", "devices", len(s.devices))
		return nil
	}
	if s.cfg.Token == "" {
		return fmt.Errorf("devsim: %d devices have not joined yet: pass a join string (--token) from fleetctl tokens add --uses=%d", len(todo), len(todo))
	}
	token, caPin, err := pin.ParseJoin(s.cfg.Token)
	if err != nil {
		return fmt.Errorf("devsim: token: %w", err)
	}
	if caPin == "" {
		return errors.New("devsim: the token is not a join string (TOKEN@sha256:PIN): the fleet cannot be verified")
	}
	host, _, _ := net.SplitHostPort(s.cfg.Fleet)
	start := time.Now()
	s.log.Info("joining devices", "devices", len(todo), "workers", s.cfg.JoinWorkers)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan *device)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards first
		first error
	)
	for range min(s.cfg.JoinWorkers, len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: pin.ClientConfig(caPin, host)}}
			defer hc.CloseIdleConnections()
			for d := range work {
				err := s.joinOne(ctx, hc, d, token, caPin)
				if err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
	for _, d := range todo {
		select {
		case work <- d:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
	if first != nil {
		return first
	}
	took := time.Since(start)
	s.log.Info("devices joined", "devices", len(todo), "took", took.Round(time.Millisecond),
		"per_second", fmt.Sprintf("%.0f", float64(len(todo))/took.Seconds()))
	return nil
}

// joinOne joins d with retries and stores its identity.
func (s *Sim) joinOne(ctx context.Context, hc *http.Client, d *device, token, caPin string) error {
	keys, err := identity.NewKeys(d.name)
	if err != nil {
		return fmt.Errorf("devsim: %s: generate keys: %w", d.name, err)
	}
	req := api.JoinRequest{
		Token: token, Name: d.name, Labels: s.cfg.Labels, CSR: keys.CSR,
		SSHPublicKey: string(ssh.MarshalAuthorizedKey(keys.SSHPublic)), AgentVersion: "devsim",
	}
	body, _ := json.Marshal(req)
	var jr *api.JoinResponse
	for attempt := 0; ; attempt++ {
		var retry bool
		jr, retry, err = postJoin(ctx, hc, s.cfg.Fleet, body)
		if err == nil || !retry || attempt+1 == joinAttempts || ctx.Err() != nil {
			break
		}
		wait := time.Duration(100<<attempt)*time.Millisecond/2 + rand.N(time.Duration(100<<attempt)*time.Millisecond)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	if err != nil {
		return fmt.Errorf("devsim: %s: %w", d.name, err)
	}
	hostCert, _, _, _, err := ssh.ParseAuthorizedKey([]byte(jr.SSHHostCert))
	if err != nil {
		return fmt.Errorf("devsim: %s: join: bad host certificate: %w", d.name, err)
	}
	id := &identity.Identity{
		DeviceID: jr.DeviceID, Name: jr.Name, Cluster: jr.Cluster, Fleet: s.cfg.Fleet, CAPin: caPin,
		TLSKey: keys.TLSKey, Cert: jr.Cert, CACerts: jr.CACerts, SSHKey: keys.SSHKey, SSHHostCert: hostCert.Marshal(),
	}
	for _, k := range jr.UserCAKeys {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return fmt.Errorf("devsim: %s: join: bad user CA key: %w", d.name, err)
		}
		id.UserCAKeys = append(id.UserCAKeys, pub.Marshal())
	}
	if err := saveIdentity(s.identityPath(d), id); err != nil {
		return fmt.Errorf("devsim: %s: %w", d.name, err)
	}
	d.id = id
	return nil
}

// postJoin sends one join request. retry says whether trying again may
// help (the fleet was busy or unreachable).
func postJoin(ctx context.Context, hc *http.Client, fleet string, body []byte) (jr *api.JoinResponse, retry bool, err error) {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+fleet+api.PathJoin, bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("join: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hreq)
	if err != nil {
		return nil, true, fmt.Errorf("join %s: %w", fleet, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, true, fmt.Errorf("join: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		msg := resp.Status
		if json.Unmarshal(b, &e) == nil && e.Message != "" {
			msg = e.Message
		}
		// The fleet answers concurrent uses of one token that it could not
		// settle with a server error; a refused token is a client error.
		return nil, resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests,
			fmt.Errorf("the fleet refused to join: %s", msg)
	}
	jr = new(api.JoinResponse)
	if err := json.Unmarshal(b, jr); err != nil {
		return nil, false, fmt.Errorf("join: bad answer: %w", err)
	}
	return jr, false, nil
}

func (s *Sim) identityPath(d *device) string {
	return filepath.Join(s.cfg.DataDir, d.name+".json")
}

// loadIdentity reads an identity file and checks that its keys parse.
func loadIdentity(path string) (*identity.Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	id := new(identity.Identity)
	if err := json.Unmarshal(b, id); err != nil {
		return nil, fmt.Errorf("identity %s is damaged (%v): remove it to join again", path, err)
	}
	if _, err := id.TLSCertificate(); err != nil {
		return nil, fmt.Errorf("identity %s is damaged (%v): remove it to join again", path, err)
	}
	if _, err := id.CertPool(); err != nil {
		return nil, fmt.Errorf("identity %s is damaged (%v): remove it to join again", path, err)
	}
	return id, nil
}

// saveIdentity writes an identity file atomically.
func saveIdentity(path string, id *identity.Identity) error {
	b, err := json.Marshal(id)
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	return nil
}
