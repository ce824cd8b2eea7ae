package api

import "time"

// PathLocks is the locks' collection (admin): GET lists them (api.LockList;
// with ?after=REVISION&wait=DURATION it waits, at most 60 s, until the
// list's revision passes REVISION, so that another fleet can follow the
// list), POST adds one (LockRequest, answered with the Lock), DELETE
// /v1/locks/ID removes one.
const PathLocks = "/v1/locks"

// LockTarget says what a lock shuts out. Exactly one field is set.
type LockTarget struct {
	// User is a fleet user: their certificates, logins and sessions.
	User string `json:"user,omitempty"`
	// Role is a role: every user who holds it.
	Role string `json:"role,omitempty"`
	// Device is a device's name: its tunnel, and every session to it.
	Device string `json:"device,omitempty"`
	// Login is a device login (an OS account, "root"): every SSH session
	// as it, on every device.
	Login string `json:"login,omitempty"`
}

// Lock is a lock as the fleet keeps it.
type Lock struct {
	// ID names the lock (fleetctl locks rm ID).
	ID     string     `json:"id"`
	Target LockTarget `json:"target"`
	// DeviceID is the ID of the device Target.Device named when the lock
	// was made: the lock follows the device, not its name.
	DeviceID string `json:"device_id,omitempty"`
	// Message is what the users shut out are shown; empty for the
	// fleet's default.
	Message string `json:"message,omitempty"`
	// Created is when, and CreatedBy who, made the lock.
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
	// Expires is when the lock ends by itself; zero means never (until
	// fleetctl locks rm).
	Expires time.Time `json:"expires,omitzero"`
}

// LockRequest is POSTed to /v1/locks.
type LockRequest struct {
	Target  LockTarget `json:"target"`
	Message string     `json:"message,omitempty"`
	// TTL is how long the lock lasts; zero means until removed.
	TTL time.Duration `json:"ttl,omitempty"`
}

// LockList is the answer to GET /v1/locks: the locks in force (none
// expired), oldest first, and the store revision the list was read at.
type LockList struct {
	List[Lock]
	Revision int64 `json:"revision"`
}

// Limits on a lock request.
const (
	// MaxLockMessage bounds Lock.Message, in bytes.
	MaxLockMessage = 512
)
