// Package sourcelimit bounds what one source address may take of the
// fleet's HTTPS port: a Listener that caps the connections one source holds
// at once, and a Limiter that rate-limits an action (a login, a join) per
// source with a token bucket (golang.org/x/time/rate). Both key a source by
// Key: an IPv4 address, or an IPv6 address's /64 (one host usually has a
// whole /64 to pick addresses from).
//
// Memory is bounded: the Listener keeps an entry only while a source has
// connections open, and the Limiter keeps at most MaxSources buckets,
// dropping idle ones first (a bucket idle long enough to have refilled is
// the same as a new one, so forgetting it changes nothing).
//
// Only fleet/... server packages import sourcelimit.
package sourcelimit

import (
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Key names the source of addr ("IP:port" or a bare IP): the IPv4 address,
// or the IPv6 address's /64 prefix. An address that does not parse is its
// own key.
func Key(addr string) string {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

// Listener caps the connections one source holds open at once: past Max, a
// new connection from that source is closed as soon as it is accepted
// (before TLS), and Accept goes on to the next one.
type Listener struct {
	net.Listener
	// Max is the most connections one source may hold; zero or less means
	// no cap.
	Max int
	// OnRefuse, when set, is called (outside any lock) for each connection
	// refused, with the source's key.
	OnRefuse func(key string)

	mu   sync.Mutex // guards open
	open map[string]int
}

// Accept returns the next connection within its source's cap.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || l.Max <= 0 {
			return c, err
		}
		key := Key(c.RemoteAddr().String())
		l.mu.Lock()
		if l.open == nil {
			l.open = map[string]int{}
		}
		ok := l.open[key] < l.Max
		if ok {
			l.open[key]++
		}
		l.mu.Unlock()
		if !ok {
			c.Close()
			if l.OnRefuse != nil {
				l.OnRefuse(key)
			}
			continue
		}
		return &conn{Conn: c, l: l, key: key}, nil
	}
}

// Open returns how many connections the source key holds.
func (l *Listener) Open(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open[key]
}

func (l *Listener) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[key] <= 1 {
		delete(l.open, key)
		return
	}
	l.open[key]--
}

// conn gives its slot back once, when closed.
type conn struct {
	net.Conn
	l    *Listener
	key  string
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// Limiter defaults.
const (
	// DefaultMaxSources bounds the sources a Limiter tracks.
	DefaultMaxSources = 10000
	// DefaultMarkFor is how long a Mark lasts.
	DefaultMarkFor = 15 * time.Minute
)

// Limiter rate-limits an action per source: a bucket of Burst tokens per
// source, refilled at Rate per second. It also remembers sources marked as
// misbehaving (Mark: a failed login, say) for MarkFor, so that their next
// attempts can be served last. Its zero value allows everything and
// remembers nothing; it is safe for concurrent use.
type Limiter struct {
	// Rate is the tokens added per second; zero or less turns the limiter
	// off.
	Rate rate.Limit
	// Burst is the bucket's size; default 1.
	Burst int
	// MaxSources bounds the sources tracked; default DefaultMaxSources.
	// When full, sources whose bucket has refilled are forgotten first,
	// then the one idle longest.
	MaxSources int
	// MarkFor is how long a Mark lasts; default DefaultMarkFor.
	MarkFor time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu      sync.Mutex // guards sources
	sources map[string]*source
}

type source struct {
	lim     *rate.Limiter
	last    time.Time // last Allow
	refused bool      // the last Allow was refused
	marked  time.Time // last Mark
}

// Verdict is Allow's answer.
type Verdict struct {
	// OK says the action may go ahead.
	OK bool
	// Wait is, when refused, how long until a token is there.
	Wait time.Duration
	// First says this refusal is the first since the source was last
	// allowed: the one worth recording.
	First bool
	// Marked says the source was marked (Mark) within MarkFor.
	Marked bool
}

func (l *Limiter) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// Allow takes a token from key's bucket, or says how long until there is
// one. A refusal takes nothing.
func (l *Limiter) Allow(key string) Verdict {
	if l.Rate <= 0 {
		return Verdict{OK: true}
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sourceLocked(key, now)
	s.last = now
	marked := !s.marked.IsZero() && now.Sub(s.marked) < l.markFor()
	r := s.lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		first := !s.refused
		s.refused = true
		return Verdict{Wait: d, First: first, Marked: marked}
	}
	s.refused = false
	return Verdict{OK: true, Marked: marked}
}

// Mark records that key misbehaved (a failed login, say): Allow reports
// it as Marked for MarkFor.
func (l *Limiter) Mark(key string) {
	if l.Rate <= 0 {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sourceLocked(key, now).marked = now
}

func (l *Limiter) markFor() time.Duration {
	if l.MarkFor > 0 {
		return l.MarkFor
	}
	return DefaultMarkFor
}

// sourceLocked returns key's entry, making one (and room for it). l.mu
// must be held.
func (l *Limiter) sourceLocked(key string, now time.Time) *source {
	s := l.sources[key]
	if s != nil {
		return s
	}
	if l.sources == nil {
		l.sources = map[string]*source{}
	}
	maxSources := l.MaxSources
	if maxSources <= 0 {
		maxSources = DefaultMaxSources
	}
	if len(l.sources) >= maxSources {
		l.evictLocked(now, maxSources)
	}
	s = &source{lim: rate.NewLimiter(l.Rate, max(l.Burst, 1)), last: now}
	l.sources[key] = s
	return s
}

// Sources returns how many sources the limiter tracks.
func (l *Limiter) Sources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}

// evictLocked makes room for one more source: it drops every source whose
// bucket is full again and whose mark has passed (forgetting it changes
// nothing), and if that freed nothing, the source idle longest. l.mu must
// be held.
func (l *Limiter) evictLocked(now time.Time, maxSources int) {
	var oldest string
	for k, s := range l.sources {
		if s.lim.TokensAt(now) >= float64(s.lim.Burst()) && (s.marked.IsZero() || now.Sub(s.marked) >= l.markFor()) {
			delete(l.sources, k)
			continue
		}
		if oldest == "" || s.last.Before(l.sources[oldest].last) {
			oldest = k
		}
	}
	if len(l.sources) >= maxSources && oldest != "" {
		delete(l.sources, oldest)
	}
}
