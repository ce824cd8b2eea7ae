package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"remoteler.dev/edge/proto/api"
)

// AuditQuery selects audit events for AuditSearch. Zero fields match
// everything.
type AuditQuery struct {
	Since, Until time.Time
	Device       string // name or ID
	User         string
	Session      string
	Type         string // a type, or a prefix ending in "*"
	Limit        int
}

// AuditSearch calls GET /v1/audit (admin).
func (c *Client) AuditSearch(ctx context.Context, q AuditQuery) (*api.AuditSearch, error) {
	v := url.Values{}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339Nano))
	}
	if !q.Until.IsZero() {
		v.Set("until", q.Until.UTC().Format(time.RFC3339Nano))
	}
	for k, s := range map[string]string{"device": q.Device, "user": q.User, "session": q.Session, "type": q.Type} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	path := api.PathAudit
	if len(v) > 0 {
		path += "?" + v.Encode()
	}
	var out api.AuditSearch
	return &out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// AuditVerify calls GET /v1/audit/verify (admin).
func (c *Client) AuditVerify(ctx context.Context) (*api.AuditVerify, error) {
	var out api.AuditVerify
	return &out, c.do(ctx, http.MethodGet, api.PathAuditVerify, nil, &out)
}

// Recordings calls GET /v1/recordings.
func (c *Client) Recordings(ctx context.Context) ([]api.Recording, error) {
	var out []api.Recording
	return out, c.do(ctx, http.MethodGet, api.PathRecordings, nil, &out)
}

// maxRecording bounds a recording the client downloads.
const maxRecording = 1 << 30

// Recording calls GET /v1/recordings/ID and returns the asciicast file.
// The answer may be cut at maxRecording bytes.
func (c *Client) Recording(ctx context.Context, id string) ([]byte, error) {
	if err := c.checkExpiry(); err != nil {
		return nil, err
	}
	path := item(api.PathRecordings, id)
	op := "get " + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path), nil)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", op, err)
	}
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.transportError(op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxRecording))
	if err != nil {
		return nil, c.transportError(op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, errorFromResponse(resp.StatusCode, data)
	}
	return data, nil
}

// AuditExport calls GET /v1/audit/export (admin) and copies the export (see
// proto/auditexport) to w as it comes; with checkpointsOnly, only the
// header and the signed checkpoints.
func (c *Client) AuditExport(ctx context.Context, w io.Writer, checkpointsOnly bool) error {
	if err := c.checkExpiry(); err != nil {
		return err
	}
	path := api.PathAuditExport
	if checkpointsOnly {
		path += "?checkpoints_only=true"
	}
	op := "get " + api.PathAuditExport
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path), nil)
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		return c.transportError(op, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		return errorFromResponse(resp.StatusCode, data)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return c.transportError(op, err)
	}
	return nil
}

// Retention calls GET /v1/retention (admin).
func (c *Client) Retention(ctx context.Context) (*api.RetentionStatus, error) {
	var out api.RetentionStatus
	return &out, c.do(ctx, http.MethodGet, api.PathRetention, nil, &out)
}

// SetRetention calls PUT /v1/retention (admin).
func (c *Client) SetRetention(ctx context.Context, p api.Retention) (*api.RetentionStatus, error) {
	var out api.RetentionStatus
	return &out, c.do(ctx, http.MethodPut, api.PathRetention, &p, &out)
}
