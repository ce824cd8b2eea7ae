package client

import (
	"context"
	"io"
	"net/http"
	"time"

	"remoteler.dev/edge/proto/api"
)

// Releases calls GET /v1/releases (admin).
func (c *Client) Releases(ctx context.Context) ([]api.Release, error) {
	var out []api.Release
	return out, c.do(ctx, http.MethodGet, api.PathReleases, nil, &out)
}

// AddRelease calls POST /v1/releases (admin), once the artefacts are
// uploaded with PutReleaseBlob.
func (c *Client) AddRelease(ctx context.Context, req *api.AddReleaseRequest) (*api.Release, error) {
	var out api.Release
	return &out, c.do(ctx, http.MethodPost, api.PathReleases, req, &out)
}

// RemoveRelease calls DELETE /v1/releases/VERSION (admin).
func (c *Client) RemoveRelease(ctx context.Context, version string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathReleases, version), nil, nil)
}

// PutReleaseBlob uploads an artefact's bytes, named by their SHA-256
// (PUT /v1/release-blobs/SHA256, admin). It may take minutes on a slow
// link: its time limit is ten times the client's.
func (c *Client) PutReleaseBlob(ctx context.Context, sum string, body io.Reader, size int64) error {
	if err := c.checkExpiry(); err != nil {
		return err
	}
	op := "put " + api.PathReleaseBlobs
	ctx, cancel := context.WithTimeout(ctx, 10*c.cfg.Timeout+time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "https://"+c.cfg.Addr+item(api.PathReleaseBlobs, sum), body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return c.transportError(op, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return errorFromResponse(resp.StatusCode, data)
	}
	return nil
}

// RotateReleaseKey calls POST /v1/release-keys (admin).
func (c *Client) RotateReleaseKey(ctx context.Context, req *api.KeyRotation) error {
	return c.do(ctx, http.MethodPost, api.PathReleaseKeys, req, nil)
}

// Rollouts calls GET /v1/rollouts (admin).
func (c *Client) Rollouts(ctx context.Context) ([]api.Rollout, error) {
	var out []api.Rollout
	return out, c.do(ctx, http.MethodGet, api.PathRollouts, nil, &out)
}

// Rollout calls GET /v1/rollouts/ID (admin).
func (c *Client) Rollout(ctx context.Context, id string) (*api.Rollout, error) {
	var out api.Rollout
	return &out, c.do(ctx, http.MethodGet, item(api.PathRollouts, id), nil, &out)
}

// CreateRollout calls POST /v1/rollouts (admin).
func (c *Client) CreateRollout(ctx context.Context, req *api.CreateRolloutRequest) (*api.Rollout, error) {
	var out api.Rollout
	return &out, c.do(ctx, http.MethodPost, api.PathRollouts, req, &out)
}

// RolloutAction calls POST /v1/rollouts/ID/ACTION (pause, resume, abort;
// admin).
func (c *Client) RolloutAction(ctx context.Context, id, action string) (*api.Rollout, error) {
	var out api.Rollout
	return &out, c.do(ctx, http.MethodPost, item(api.PathRollouts, id)+"/"+action, nil, &out)
}

// Pins calls GET /v1/pins (admin).
func (c *Client) Pins(ctx context.Context) ([]api.Pin, error) {
	var out []api.Pin
	return out, c.do(ctx, http.MethodGet, api.PathPins, nil, &out)
}

// PutPin calls PUT /v1/pins (admin).
func (c *Client) PutPin(ctx context.Context, p *api.Pin) error {
	return c.do(ctx, http.MethodPut, api.PathPins, p, nil)
}

// RemovePin calls DELETE /v1/pins/NAME (admin).
func (c *Client) RemovePin(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathPins, name), nil, nil)
}
