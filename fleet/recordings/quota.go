package recordings

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// No device can fill the fleet's disk with recordings: a device holding
// its quota (Limits.DeviceQuota), or any device while the data dir's free
// space is under its floor (Config.Room), is answered "not now" before it
// sends a byte of a recording; it keeps the recording and sends it later.
// Retention (Prune) deletes recordings older than Limits.MaxAge, then the
// oldest while all take more than Limits.MaxBytes.

// Limits are the recordings' retention and quota; zero fields mean no
// limit.
type Limits struct {
	MaxAge      time.Duration
	MaxBytes    int64
	DeviceQuota int64
}

func (s *Store) limits() Limits {
	if s.cfg.Limits != nil {
		return s.cfg.Limits()
	}
	return Limits{}
}

// refuseLocked returns why deviceID may not upload n more bytes now ("" if
// it may). A query (n 0) is refused when a full chunk would not fit, so a
// device learns it must wait before it sends any data. s.mu must be held.
func (s *Store) refuseLocked(deviceID string, n int) string {
	why := ""
	if s.cfg.Room != nil {
		if err := s.cfg.Room(); err != nil {
			why = err.Error()
		}
	}
	if q := s.limits().DeviceQuota; why == "" && q > 0 {
		need := int64(n)
		if n == 0 {
			need = proto.MaxRecordingChunk
		}
		if held := s.usage[deviceID]; held+need > q {
			why = fmt.Sprintf("over its recordings quota: the fleet holds %d bytes of its recordings, the quota is %d", held, q)
		}
	}
	if why != "" && s.paused[deviceID] == "" {
		s.log.Warn("device recording uploads paused", "device_id", deviceID, "reason", why)
		if s.cfg.OnPause != nil {
			go s.cfg.OnPause(deviceID, why) // it may write the audit log: not under s.mu
		}
	}
	if why != "" {
		s.paused[deviceID] = why
	} else {
		s.resumeLocked(deviceID)
	}
	return why
}

// resumeLocked clears deviceID's pause once an upload goes through.
func (s *Store) resumeLocked(deviceID string) {
	if s.paused[deviceID] != "" {
		delete(s.paused, deviceID)
		s.log.Info("device recording uploads resumed", "device_id", deviceID)
	}
}

// Paused returns why deviceID's recording uploads pause, or "".
func (s *Store) Paused(deviceID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.paused[deviceID]
}

// Usage returns the bytes all recordings take, and each device's.
func (s *Store) Usage() (total int64, byDevice map[string]int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byDevice = make(map[string]int64, len(s.usage))
	for d, n := range s.usage {
		byDevice[d] = n
		total += n
	}
	return total, byDevice
}

// Prune deletes the recordings older than MaxAge (by their last upload),
// then the oldest while all take more than MaxBytes, and returns how many
// it deleted.
func (s *Store) Prune(ctx context.Context) (int, error) {
	lim := s.limits()
	if lim.MaxAge <= 0 && lim.MaxBytes <= 0 {
		return 0, nil
	}
	all, err := s.List(nil) // newest first
	if err != nil {
		return 0, err
	}
	var total int64
	for _, r := range all {
		total += r.Size
	}
	cut := s.cfg.Now().Add(-lim.MaxAge)
	n := 0
	for i := len(all) - 1; i >= 0; i-- {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		r := all[i]
		old := lim.MaxAge > 0 && r.Updated.Before(cut)
		big := lim.MaxBytes > 0 && total > lim.MaxBytes
		if !old && !big {
			continue
		}
		if err := s.delete(&r); err != nil {
			return n, err
		}
		total -= r.Size
		n++
	}
	return n, nil
}

// delete removes a recording and its description.
func (s *Store) delete(r *api.Recording) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ext := range []string{".cast", ".cast.part", ".json"} {
		if err := os.Remove(s.path(r.ID, ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("recordings: delete %s: %w", r.ID, err)
		}
	}
	syncDir(s.cfg.Dir)
	s.usage[r.Device] = max(0, s.usage[r.Device]-r.Size)
	if s.usage[r.Device] == 0 {
		delete(s.usage, r.Device)
	}
	return nil
}

// Run applies the retention at once and every hour until ctx is done.
func (s *Store) Run(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := s.Prune(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("prune recordings", "err", err)
		} else if n > 0 {
			s.log.Info("recordings past the retention deleted", "recordings", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
