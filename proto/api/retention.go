package api

import (
	"errors"
	"time"
)

// Storage policy of the audit trail.
//
//	GET /v1/retention
//	    (admin) the policy in force and what is stored: RetentionStatus.
//	PUT /v1/retention
//	    (admin) sets the policy (a Retention) and answers RetentionStatus.
const PathRetention = "/v1/retention"

// Retention is how much of the audit trail the fleet keeps, and how much
// any one device may fill. Zero means no limit, for each field.
type Retention struct {
	// AuditMaxAge drops audit events older than this; AuditMaxBytes drops
	// the oldest events while all sources' events together take more.
	AuditMaxAge   time.Duration `json:"audit_max_age"`
	AuditMaxBytes int64         `json:"audit_max_bytes"`
	// AuditDeviceQuota is the most bytes of one device's events the fleet
	// holds: past it, the device's uploads pause (it keeps its queue) until
	// retention makes room or the quota is raised.
	AuditDeviceQuota int64 `json:"audit_device_quota"`
	// The same for session recordings.
	RecordingsMaxAge      time.Duration `json:"recordings_max_age"`
	RecordingsMaxBytes    int64         `json:"recordings_max_bytes"`
	RecordingsDeviceQuota int64         `json:"recordings_device_quota"`
	// MinFreeBytes is the free space kept on the data dir's file system:
	// below it, devices' uploads pause, while user logins and sessions go
	// on in the room it keeps.
	MinFreeBytes int64 `json:"min_free_bytes"`
}

// DefaultRetention is the policy of a fleet whose admin has set none: a
// year of audit (20 GiB at most, 1 GiB a device), 90 days of recordings
// (100 GiB at most, 2 GiB a device), and 1 GiB kept free.
func DefaultRetention() Retention {
	return Retention{
		AuditMaxAge: 365 * 24 * time.Hour, AuditMaxBytes: 20 << 30, AuditDeviceQuota: 1 << 30,
		RecordingsMaxAge: 90 * 24 * time.Hour, RecordingsMaxBytes: 100 << 30, RecordingsDeviceQuota: 2 << 30,
		MinFreeBytes: 1 << 30,
	}
}

// Validate reports a negative value.
func (r Retention) Validate() error {
	for _, v := range []int64{int64(r.AuditMaxAge), r.AuditMaxBytes, r.AuditDeviceQuota, int64(r.RecordingsMaxAge),
		r.RecordingsMaxBytes, r.RecordingsDeviceQuota, r.MinFreeBytes} {
		if v < 0 {
			return errors.New("retention: no value may be negative (0 means no limit)")
		}
	}
	return nil
}

// RetentionStatus answers GET and PUT /v1/retention.
type RetentionStatus struct {
	Policy Retention `json:"policy"`
	// Bytes stored: every source's audit events, every recording.
	AuditBytes      int64 `json:"audit_bytes"`
	RecordingsBytes int64 `json:"recordings_bytes"`
	// The data dir's file system.
	FreeBytes  uint64 `json:"free_bytes"`
	TotalBytes uint64 `json:"total_bytes"`
	// UploadsPaused says why every device's uploads pause (the floor), if
	// they do.
	UploadsPaused string `json:"uploads_paused,omitempty"`
	// Devices lists the devices whose uploads pause, or that hold more
	// than half a quota.
	Devices []DeviceStorage `json:"devices,omitempty"`
}

// DeviceStorage is what one device fills of the fleet's disk.
type DeviceStorage struct {
	ID              string `json:"id"`
	Name            string `json:"name,omitempty"`
	AuditBytes      int64  `json:"audit_bytes"`
	RecordingsBytes int64  `json:"recordings_bytes"`
	// Paused says why its uploads pause, if they do.
	Paused string `json:"paused,omitempty"`
}
