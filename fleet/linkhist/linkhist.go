// Package linkhist keeps each device's link history for the dashboard's
// charts: per hour and per day, the tunnel's mean round-trip time, its
// packet loss outside blackouts, reconnects, blackouts, bytes up and down,
// and the share of the time it was online.
//
// A History samples every device once a minute (Config.Every), adds the
// differences of the counters into the current hour, and writes the hours
// to a bbolt file of its own in the data dir (linkhistory.db) every few
// minutes and when the hour turns. The file is bounded: one record per
// device and day, holding the day's total and, for the last HourlyDays
// (default 7), its 24 hours; days older than DailyDays (default 90) are
// dropped. A day takes 435 bytes with its hours, 24 without: about 5 kB a
// device with the defaults, some 50 MB for 10,000 devices.
//
// The history is this fleetd's: with several replicas, each keeps what it
// sampled of the tunnels it held.
//
// Only fleet/... server packages import linkhist.
package linkhist

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// Defaults of Config.
const (
	DefaultEvery      = time.Minute
	DefaultFlushEvery = 10 * time.Minute
	DefaultHourlyDays = 7
	DefaultDailyDays  = 90
)

// Sample is what the fleet sees of one device at one moment.
type Sample struct {
	DeviceID string
	// Online says the device's tunnel is up; the fields below it, but
	// Connects, describe that tunnel's connection, begun at Since.
	Online bool
	Since  time.Time
	RTT    time.Duration
	// BytesUp and BytesDown are what the fleet sent to the device and
	// received from it on this connection.
	BytesUp, BytesDown uint64
	// Sent and Lost are the packets the fleet sent outside blackouts on
	// this connection and those of them lost (fleet/linkhealth's
	// Counted); Blackouts the blackouts it went through.
	Sent, Lost uint64
	Blackouts  int
	// Connects counts the device's tunnel connections ever (the device
	// registry's count): its differences are reconnects.
	Connects int
}

// Point is one hour or one day of a device's link.
type Point struct {
	// Start is the hour's or day's start, UTC.
	Start time.Time
	// Samples is how many times the device was sampled, Online how many
	// of those it was online.
	Samples, Online uint64
	// RTT is the mean round-trip time over the online samples.
	RTT time.Duration
	// Sent and Lost are packets outside blackouts (LossPercent divides
	// them).
	Sent, Lost uint64
	// Reconnects and Blackouts happened in the interval.
	Reconnects, Blackouts uint64
	// BytesUp and BytesDown went to the device and came from it.
	BytesUp, BytesDown uint64
}

// LossPercent is the packets lost outside blackouts, in percent of those
// sent; 0 when none were sent.
func (p Point) LossPercent() float64 {
	if p.Sent == 0 {
		return 0
	}
	return 100 * float64(p.Lost) / float64(p.Sent)
}

// OnlinePercent is the share of the samples the device was online in.
func (p Point) OnlinePercent() float64 {
	if p.Samples == 0 {
		return 0
	}
	return 100 * float64(p.Online) / float64(p.Samples)
}

// add adds q's counts to p (p's RTT becomes the mean over both).
func (p *Point) add(q Point) {
	if n := p.Online + q.Online; n > 0 {
		p.RTT = time.Duration((float64(p.RTT)*float64(p.Online) + float64(q.RTT)*float64(q.Online)) / float64(n))
	}
	p.Samples += q.Samples
	p.Online += q.Online
	p.Sent += q.Sent
	p.Lost += q.Lost
	p.Reconnects += q.Reconnects
	p.Blackouts += q.Blackouts
	p.BytesUp += q.BytesUp
	p.BytesDown += q.BytesDown
}

// Config configures a History. Path and Source are required.
type Config struct {
	// Path is the history file, normally DATA_DIR/linkhistory.db.
	Path string
	// Source calls fn with a sample of every device.
	Source func(fn func(Sample))
	// Every is the time between samples; default DefaultEvery.
	Every time.Duration
	// FlushEvery is how often the current hours are written; default
	// DefaultFlushEvery. At most that much history is lost in a crash.
	FlushEvery time.Duration
	// HourlyDays is how many days keep their hours, and DailyDays how
	// many days are kept at all; defaults DefaultHourlyDays and
	// DefaultDailyDays.
	HourlyDays, DailyDays int
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// History samples devices' links and keeps their history. Create it with
// Open; its methods are safe for concurrent use.
type History struct {
	cfg Config
	log *slog.Logger
	db  *bolt.DB

	mu    sync.Mutex        // guards devs and ended
	devs  map[string]*track // by device ID
	ended []pendingHour     // hours that ended before they were written
}

// track is what the history keeps in memory of one device.
type track struct {
	last    Sample // the last sample
	hasLast bool
	online  Sample // the last sample taken online (counters of its connection)
	hour    int64  // the current hour (hours since the epoch)
	acc     Point  // the current hour so far
	dirty   bool   // acc changed since it was written
}

var bucketDevices = []byte("devices")

// Open opens (or creates) the history file.
func Open(cfg Config) (*History, error) {
	if cfg.Path == "" || cfg.Source == nil {
		return nil, errors.New("linkhist: open: Path and Source are required")
	}
	if cfg.Every <= 0 {
		cfg.Every = DefaultEvery
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = DefaultFlushEvery
	}
	if cfg.HourlyDays <= 0 {
		cfg.HourlyDays = DefaultHourlyDays
	}
	if cfg.DailyDays <= 0 {
		cfg.DailyDays = DefaultDailyDays
	}
	cfg.DailyDays = max(cfg.DailyDays, cfg.HourlyDays)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("linkhist: %s is locked: is another fleetd running with this data dir?", cfg.Path)
		}
		return nil, fmt.Errorf("linkhist: open %s: %w", cfg.Path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketDevices)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("linkhist: open %s: %w", cfg.Path, err)
	}
	return &History{cfg: cfg, log: cfg.Logger.With("component", "linkhist"), db: db, devs: map[string]*track{}}, nil
}

// Close writes the current hours and closes the file.
func (h *History) Close() error {
	if err := h.Flush(); err != nil {
		h.log.Warn("write link history", "err", err)
	}
	return h.db.Close()
}

// Run samples every Every, writes every FlushEvery and prunes daily until
// ctx ends.
func (h *History) Run(ctx context.Context) {
	sample := time.NewTicker(h.cfg.Every)
	defer sample.Stop()
	flush := time.NewTicker(h.cfg.FlushEvery)
	defer flush.Stop()
	prune := time.NewTicker(24 * time.Hour)
	defer prune.Stop()
	h.prune()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sample.C:
			h.Sample()
		case <-flush.C:
			if err := h.Flush(); err != nil {
				h.log.Warn("write link history", "err", err)
			}
		case <-prune.C:
			h.prune()
		}
	}
}

func (h *History) prune() {
	if n, err := h.Prune(); err != nil {
		h.log.Warn("prune link history", "err", err)
	} else if n > 0 {
		h.log.Info("link history pruned", "days", n)
	}
}

func hourOf(t time.Time) int64 { return t.Unix() / 3600 }

// Sample takes one sample of every device from Source; Run calls it.
func (h *History) Sample() {
	now := h.cfg.Now()
	var samples []Sample
	h.cfg.Source(func(s Sample) { samples = append(samples, s) })
	if h.Record(now, samples) {
		if err := h.Flush(); err != nil {
			h.log.Warn("write link history", "err", err)
		}
	}
}

// Record adds samples taken at now. It reports whether an hour ended for
// some device (Sample then writes at once).
func (h *History) Record(now time.Time, samples []Sample) (hourEnded bool) {
	hour := hourOf(now)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range samples {
		t := h.devs[s.DeviceID]
		if t == nil {
			t = &track{hour: hour, acc: Point{Start: time.Unix(hour*3600, 0).UTC()}}
			h.devs[s.DeviceID] = t
		}
		if t.hour != hour {
			hourEnded = true
			if t.dirty {
				// Kept aside under its own hour for the Flush that
				// follows.
				h.ended = append(h.ended, pendingHour{s.DeviceID, t.hour, t.acc})
			}
			t.hour, t.acc, t.dirty = hour, Point{Start: time.Unix(hour*3600, 0).UTC()}, false
		}
		t.acc.add(delta(t, s))
		t.dirty = true
		t.last, t.hasLast = s, true
		if s.Online {
			t.online = s
		}
	}
	// Devices no longer sampled (removed from the fleet) are forgotten,
	// once what they have is written.
	seen := make(map[string]bool, len(samples))
	for _, s := range samples {
		seen[s.DeviceID] = true
	}
	for id, t := range h.devs {
		if !seen[id] {
			if t.dirty {
				h.ended = append(h.ended, pendingHour{id, t.hour, t.acc})
			}
			delete(h.devs, id)
		}
	}
	return hourEnded
}

// delta is what happened between t's last sample and s.
func delta(t *track, s Sample) Point {
	p := Point{Samples: 1}
	if t.hasLast && s.Connects > t.last.Connects {
		p.Reconnects = uint64(s.Connects - t.last.Connects)
	}
	if !s.Online {
		return p
	}
	p.Online, p.RTT = 1, s.RTT
	prev := Sample{} // a new connection counts from zero
	if t.online.Online && t.online.Since.Equal(s.Since) {
		prev = t.online
	}
	sub := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return a - b
	}
	p.BytesUp, p.BytesDown = sub(s.BytesUp, prev.BytesUp), sub(s.BytesDown, prev.BytesDown)
	p.Sent, p.Lost = sub(s.Sent, prev.Sent), sub(s.Lost, prev.Lost)
	p.Lost = min(p.Lost, p.Sent)
	p.Blackouts = sub(uint64(max(s.Blackouts, 0)), uint64(max(prev.Blackouts, 0)))
	return p
}

// pendingHour is one device's hour to write.
type pendingHour struct {
	id   string
	hour int64
	p    Point
}

// Flush writes every device's current hour (and hours that ended since
// the last write).
func (h *History) Flush() error {
	h.mu.Lock()
	hours := h.ended
	h.ended = nil
	for id, t := range h.devs {
		if t.dirty {
			hours = append(hours, pendingHour{id, t.hour, t.acc})
			t.dirty = false
		}
	}
	h.mu.Unlock()
	if len(hours) == 0 {
		return nil
	}
	err := h.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketDevices)
		for _, ph := range hours {
			b, err := root.CreateBucketIfNotExists([]byte(ph.id))
			if err != nil {
				return err
			}
			day := ph.hour / 24
			key := dayKey(day)
			rec, err := decodeDay(b.Get(key))
			if err != nil {
				h.log.Warn("damaged link history record replaced", "device_id", ph.id, "day", day, "err", err)
				rec = &dayRecord{}
			}
			rec.setHour(int(ph.hour%24), ph.p)
			if err := b.Put(key, rec.encode()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("linkhist: write: %w", err)
	}
	return nil
}

// Prune drops days older than DailyDays and the hours of days older than
// HourlyDays. It returns how many records it changed or dropped.
func (h *History) Prune() (int, error) {
	today := h.cfg.Now().Unix() / 86400
	dropBefore, compactBefore := dayKey(today-int64(h.cfg.DailyDays)+1), dayKey(today-int64(h.cfg.HourlyDays)+1)
	n := 0
	err := h.db.Update(func(tx *bolt.Tx) error {
		root := tx.Bucket(bucketDevices)
		var empty [][]byte
		err := root.ForEachBucket(func(id []byte) error {
			b := root.Bucket(id)
			c := b.Cursor()
			for k, v := c.First(); k != nil && string(k) < string(compactBefore); k, v = c.Next() {
				if string(k) < string(dropBefore) {
					if err := c.Delete(); err != nil {
						return err
					}
					n++
					continue
				}
				rec, err := decodeDay(v)
				if err != nil || rec.hours != 0 {
					if err != nil {
						rec = &dayRecord{}
					}
					rec.hours = 0
					if err := b.Put(k, rec.encode()); err != nil {
						return err
					}
					n++
				}
			}
			if k, _ := b.Cursor().First(); k == nil {
				empty = append(empty, append([]byte{}, id...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, id := range empty {
			if err := root.DeleteBucket(id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("linkhist: prune: %w", err)
	}
	return n, nil
}

// Hours returns the device's hourly points from since to until (oldest
// first), the current hour included; hours with no sample are left out.
func (h *History) Hours(deviceID string, since, until time.Time) ([]Point, error) {
	var out []Point
	err := h.read(deviceID, since, until, func(day int64, rec *dayRecord) {
		for i := range 24 {
			if rec.hours&(1<<i) == 0 {
				continue
			}
			p := rec.hour[i]
			p.Start = time.Unix((day*24+int64(i))*3600, 0).UTC()
			if !p.Start.Before(since.Truncate(time.Hour)) && p.Start.Before(until) {
				out = append(out, p)
			}
		}
	})
	return out, err
}

// Days returns the device's daily points from since to until (oldest
// first), today included.
func (h *History) Days(deviceID string, since, until time.Time) ([]Point, error) {
	var out []Point
	err := h.read(deviceID, since, until, func(day int64, rec *dayRecord) {
		p := rec.day
		p.Start = time.Unix(day*86400, 0).UTC()
		out = append(out, p)
	})
	return out, err
}

// read calls fn for each day record of the device between since and
// until, with the current hour (not yet written) laid over its day.
func (h *History) read(deviceID string, since, until time.Time, fn func(day int64, rec *dayRecord)) error {
	// The hours not yet written, by day.
	unwritten := map[int64][]pendingHour{}
	h.mu.Lock()
	for _, ph := range h.ended {
		if ph.id == deviceID {
			unwritten[ph.hour/24] = append(unwritten[ph.hour/24], ph)
		}
	}
	if t := h.devs[deviceID]; t != nil && t.dirty {
		unwritten[t.hour/24] = append(unwritten[t.hour/24], pendingHour{deviceID, t.hour, t.acc})
	}
	h.mu.Unlock()
	first, last := since.Unix()/86400, (until.Unix()-1)/86400
	err := h.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevices).Bucket([]byte(deviceID))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(dayKey(first)); len(k) == 4; k, v = c.Next() {
			day := int64(binary.BigEndian.Uint32(k))
			if day > last {
				break
			}
			rec, err := decodeDay(v)
			if err != nil {
				h.log.Warn("damaged link history record skipped", "device_id", deviceID, "day", day, "err", err)
				continue
			}
			for _, ph := range unwritten[day] {
				rec.setHour(int(ph.hour%24), ph.p)
			}
			delete(unwritten, day)
			fn(day, rec)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("linkhist: read: %w", err)
	}
	for _, day := range slices.Sorted(maps.Keys(unwritten)) {
		if day < first || day > last {
			continue
		}
		rec := &dayRecord{}
		for _, ph := range unwritten[day] {
			rec.setHour(int(ph.hour%24), ph.p)
		}
		fn(day, rec)
	}
	return nil
}

func dayKey(day int64) []byte {
	var k [4]byte
	binary.BigEndian.PutUint32(k[:], uint32(max(day, 0)))
	return k[:]
}

// dayRecord is one device's day: its total and, while it keeps them, its
// hours (bit i of hours set: hour i is there).
type dayRecord struct {
	day   Point
	hours uint32
	hour  [24]Point
}

// setHour sets hour i and the day's total from the hours.
func (r *dayRecord) setHour(i int, p Point) {
	r.hour[i] = p
	r.hours |= 1 << i
	r.day = Point{}
	for j := range 24 {
		if r.hours&(1<<j) != 0 {
			r.day.add(r.hour[j])
		}
	}
}

// The record's encoding: a version byte, the day's point, the hours'
// bitmap, and each present hour's point; a point is nine unsigned varints
// (samples, online, RTT in microseconds, sent, lost, reconnects,
// blackouts, bytes up, bytes down).
const recordVersion = 1

// maxSamples bounds a point's sample count (a sample a second for a day).
const maxSamples = 86400

func appendPoint(b []byte, p Point) []byte {
	for _, v := range []uint64{p.Samples, p.Online, uint64(max(p.RTT.Microseconds(), 0)), p.Sent, p.Lost, p.Reconnects, p.Blackouts, p.BytesUp, p.BytesDown} {
		b = binary.AppendUvarint(b, v)
	}
	return b
}

func (r *dayRecord) encode() []byte {
	b := []byte{recordVersion}
	b = appendPoint(b, r.day)
	b = binary.AppendUvarint(b, uint64(r.hours))
	for i := range 24 {
		if r.hours&(1<<i) != 0 {
			b = appendPoint(b, r.hour[i])
		}
	}
	return b
}

var errRecord = errors.New("linkhist: bad record")

// decodeDay decodes a record; a nil record is an empty day.
func decodeDay(b []byte) (*dayRecord, error) {
	r := &dayRecord{}
	if b == nil {
		return r, nil
	}
	if len(b) < 1 || b[0] != recordVersion {
		return nil, fmt.Errorf("%w: version", errRecord)
	}
	b = b[1:]
	next := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	point := func() (Point, error) {
		var v [9]uint64
		for i := range v {
			x, ok := next()
			if !ok {
				return Point{}, fmt.Errorf("%w: truncated", errRecord)
			}
			v[i] = x
		}
		if v[0] > maxSamples*31 || v[1] > v[0] || v[4] > v[3] || v[2] > uint64(math.MaxInt64/1000) {
			return Point{}, fmt.Errorf("%w: impossible counts", errRecord)
		}
		return Point{Samples: v[0], Online: v[1], RTT: time.Duration(v[2]) * time.Microsecond, Sent: v[3], Lost: v[4],
			Reconnects: v[5], Blackouts: v[6], BytesUp: v[7], BytesDown: v[8]}, nil
	}
	var err error
	if r.day, err = point(); err != nil {
		return nil, err
	}
	hours, ok := next()
	if !ok || hours >= 1<<24 {
		return nil, fmt.Errorf("%w: hours", errRecord)
	}
	r.hours = uint32(hours)
	for i := range 24 {
		if r.hours&(1<<i) == 0 {
			continue
		}
		if r.hour[i], err = point(); err != nil {
			return nil, err
		}
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errRecord, len(b))
	}
	return r, nil
}
