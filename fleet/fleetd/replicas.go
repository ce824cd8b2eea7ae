package fleetd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/peer"
	"remoteler.dev/edge/fleet/presence"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/route"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Several replicas.
//
// fleetd on etcd is one replica of a fleet that may have several behind
// one address (docs/replicas.md). Each replica has an ID (kept in its data
// dir, made on first start), registers itself in the store with where its
// peers reach it (fleet/presence), records which devices hold a tunnel to
// it, and carries users' streams to the replica that holds a device's
// tunnel over mutual TLS (fleet/peer, fleet/route). A replica that loses
// its lease in the store stops taking devices and users until it has a new
// one: it answers 503 and its readiness check fails, and it ends the
// device tunnels it holds so that the devices move to a replica that can
// record them.

// replicaIDFile holds the replica's ID in the data dir.
const replicaIDFile = "replica-id"

// replicaID returns this fleetd's replica ID: cfg.ReplicaID, or the one
// kept in the data dir, made on first start.
func replicaID(cfg Config) (string, error) {
	if cfg.ReplicaID != "" {
		return cfg.ReplicaID, nil
	}
	path := filepath.Join(cfg.DataDir, replicaIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !validReplicaID(id) {
			return "", fmt.Errorf("replica ID in %s is malformed (%q): remove the file to make a new one", path, id)
		}
		return id, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("replica ID: %w", err)
	}
	var r [4]byte
	rand.Read(r[:])
	id := "r-" + hex.EncodeToString(r[:])
	if err := writeFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("replica ID: %w", err)
	}
	return id, nil
}

func validReplicaID(id string) bool {
	if id == "" || len(id) > 63 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// peerListen is where this replica listens for its peers: cfg.PeerListen,
// or the Listen host with port 3081 (0 when Listen's port is 0).
func peerListen(cfg Config) string {
	if cfg.PeerListen != "" {
		return cfg.PeerListen
	}
	host, port, _ := net.SplitHostPort(cfg.Listen)
	if port == "0" {
		return net.JoinHostPort(host, "0")
	}
	return net.JoinHostPort(host, "3081")
}

// peerAdvertise is where peers reach this replica: cfg.PeerAdvertise (with
// the listener's port when it has none), or the listener's address with a
// wildcard host replaced by this host's first non-loopback address.
func peerAdvertise(cfg Config, ln net.Addr) string {
	_, port, _ := net.SplitHostPort(ln.String())
	if a := cfg.PeerAdvertise; a != "" {
		if _, _, err := net.SplitHostPort(a); err == nil {
			return a
		}
		return net.JoinHostPort(a, port)
	}
	host, _, _ := net.SplitHostPort(ln.String())
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return ln.String()
	}
	return net.JoinHostPort(firstAddr(), port)
}

// firstAddr is this host's first non-loopback IP address, or 127.0.0.1.
func firstAddr() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}

// replicas is this fleetd's part in a fleet of replicas.
type replicas struct {
	id     string
	ln     net.Listener
	node   *peer.Node
	pres   *presence.Registry
	router *route.Router
	mux    *http.ServeMux // what peers may call
	log    *slog.Logger
}

// newReplicas listens for peers and sets up presence and routing for
// tunnels. onLost is called when the replica lost its lease and did not
// register again within the grace (cfg.ReplicaShedAfter).
func newReplicas(cfg Config, id string, st store.Store, auth *ca.Authority, tunnels *tunnelsrv.Server, log *slog.Logger, onLost func()) (*replicas, error) {
	ln, err := net.Listen("tcp", peerListen(cfg))
	if err != nil {
		return nil, fmt.Errorf("listen for peers: %w", err)
	}
	adv := peerAdvertise(cfg, ln.Addr())
	host, _, _ := net.SplitHostPort(adv)
	r := &replicas{id: id, ln: ln, mux: http.NewServeMux(), log: log}
	r.node, err = peer.New(peer.Config{CA: auth, ID: id, Hosts: []string{host}, Handler: r.mux, Logger: log})
	if err != nil {
		ln.Close()
		return nil, err
	}
	r.pres = presence.New(presence.Config{Store: st, Self: presence.Replica{ID: id, Addr: adv, Version: Version},
		TTL: time.Duration(cfg.ReplicaLeaseTTL), Grace: time.Duration(cfg.ReplicaShedAfter), OnLost: onLost, Logger: log})
	r.router = route.New(route.Config{Local: tunnels, Presence: r.pres, Peers: r.node, Logger: log})
	r.router.Register(r.mux)
	// Sessions outlive the replica holding their device's tunnel: a
	// resume this replica does not hold goes to the one that does, and a
	// restarted agent anywhere ends the sessions held here for it.
	tunnels.RelayResumes(r.router.RelayResume)
	r.pres.OnBoot(tunnels.DeviceBoot)
	return r, nil
}

// run serves peers and keeps presence until ctx ends.
func (r *replicas) run(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() {
		if err := r.node.Serve(ctx, r.ln); err != nil {
			r.log.Error("serve peers", "err", err)
		}
	})
	wg.Go(func() { r.pres.Run(ctx) })
}

// claimFunc is presence's Claim.
type claimFunc func(ctx context.Context, deviceID, addr, boot string, since time.Time, opts ...store.WriteOption) error

// claimTunnel records a device's new tunnel on this replica with claim
// (presence's Claim), as the tunnel server describes it (ok: it still has
// it); a replica without its lease refuses the device, which goes to
// another. A connection that ended (or was replaced and ended) while the
// device was being checked is refused: there is nothing to record, and
// the device connects again. A guard in opts that did not hold is
// returned as is (matching store.ErrFenced), for the caller to decide.
func claimTunnel(ctx context.Context, claim claimFunc, deviceID string, info tunnelsrv.Info, ok bool, opts ...store.WriteOption) error {
	if !ok || info.Addr == nil {
		return proto.Errorf(proto.CodeUnavailable, "the connection ended while this fleetd replica recorded it; connect again")
	}
	since := info.Since
	if since.IsZero() {
		since = time.Now()
	}
	if err := claim(ctx, deviceID, info.Addr.String(), info.Boot, since, opts...); err != nil {
		if errors.Is(err, presence.ErrNotReady) {
			return proto.Errorf(proto.CodeUnavailable, "%v", err)
		}
		if errors.Is(err, store.ErrFenced) {
			return err
		}
		return proto.Errorf(proto.CodeUnavailable, "this fleetd replica could not record the tunnel (%v); connect again", err)
	}
	return nil
}

// checkAndClaim is a replica's check of a device's new connection
// (tunnelsrv.Config.Recheck), made once the tunnel server has registered
// it: a locked device is refused (checkLock); then its tunnel is recorded
// (claim: claimTunnel with the tunnel as it is then) under guard, the
// device's record as this replica last knew it (normally as its hello
// just wrote it). The guard holding proves that the device was not
// removed meanwhile, in the same write: the record is not read again. When the
// registry has no copy, or the guard fails (the record changed since: the
// last seen written by a stopping replica, an admin's relabel; or it was
// removed), recheck reads the record as before and the claim is made
// without the guard. So a hello costs the store two writes, not two
// writes and two reads.
func checkAndClaim(ctx context.Context, id string, guard func(id string) (store.Guard, bool), checkLock func(id string) error,
	recheck func(ctx context.Context, id string) error, claim func(opts ...store.WriteOption) error,
) error {
	if g, held := guard(id); held {
		if err := checkLock(id); err != nil {
			return err
		}
		err := claim(store.If(g))
		if !errors.Is(err, store.ErrFenced) {
			return err
		}
	}
	if err := recheck(ctx, id); err != nil {
		return err
	}
	return claim()
}

// recheckOnEtcd is the tunnel server's Recheck for a replica on etcd:
// checkAndClaim guarded by the registry's copy of the record (guard), with
// the lifecycle's lock check and its read of the registry (recheck) to
// fall back on; the claim (presence's Claim) records the tunnel as the
// tunnel server describes it at the time (info).
func recheckOnEtcd(guard func(id string) (store.Guard, bool), checkLock func(id string) error, recheck func(ctx context.Context, id string) error,
	claim claimFunc, info func(id string) (tunnelsrv.Info, bool),
) func(ctx context.Context, id string) error {
	return func(ctx context.Context, id string) error {
		return checkAndClaim(ctx, id, guard, checkLock, recheck,
			func(opts ...store.WriteOption) error {
				in, ok := info(id)
				return claimTunnel(ctx, claim, id, in, ok, opts...)
			})
	}
}

// afterLeaseLost is what a replica does when it lost its lease (cut off
// from the store, or the store too busy to renew it) and did not get a
// new one within the grace (presence's Config.Grace): its presence
// entries are gone, so the other replicas cannot find its devices. It
// sends them elsewhere (shed) as a stop does, without a store write per
// device (drain: each device's offline event is recorded at once, its
// last seen kept), and writes their last seen (flush, for up to
// stopBudget) once it holds a lease again. ctx ends when fleetd starts to
// stop: a stop that comes first flushes them instead, and one that cuts
// this flush short gets what it left out (Lifecycle.Flush). A store too
// busy to renew a lease is too busy for a last-seen write per device: in a 30,000-device run, all
// three replicas lost their lease at once and 10,508 such writes failed,
// loading etcd further while it had to recover.
func afterLeaseLost(ctx context.Context, drain, shed func(), waitReady func(context.Context) error, flush func(context.Context) int, log *slog.Logger) {
	drain()
	shed()
	if waitReady(ctx) != nil {
		return
	}
	bctx, cancel := context.WithTimeout(ctx, stopBudget)
	defer cancel()
	if n := flush(bctx); n > 0 {
		log.Warn("registered again, but could not record every shed device's last seen; theirs stays at when they connected", "devices", n)
	}
}

// others returns the other live replicas.
func (r *replicas) others() []peer.Target {
	var out []peer.Target
	for _, rep := range r.pres.Replicas() {
		if rep.ID != r.id {
			out = append(out, peer.Target{ID: rep.ID, Addr: rep.Addr})
		}
	}
	return out
}

// pathBrokered is the peer endpoint that looks a session's start up in a
// replica's audit log.
const pathBrokered = "/peer/v1/audit/brokered"

// serveBrokered answers another replica's lookup of a session's start.
func serveBrokered(events *audit.Log) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		start, err := events.BrokeredHere(q.Get("device"), q.Get("session"))
		switch {
		case errors.Is(err, audit.ErrNotBrokered):
			http.Error(w, err.Error(), http.StatusNotFound)
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		default:
			b, _ := proto.MarshalEvent(start)
			w.Write(b)
		}
	}
}

// brokered asks the other replicas for a session's start (the audit log's
// Config.Brokered). No replica having it is audit.ErrNotBrokered; a
// replica that did not answer makes it undecided (an error).
func (r *replicas) brokered(ctx context.Context, deviceID, session string) (*proto.AuditEvent, error) {
	q := url.Values{"device": {deviceID}, "session": {session}}
	var failed []string
	for _, t := range r.others() {
		b, err := r.node.Do(ctx, t, http.MethodGet, pathBrokered, q, nil)
		var pe *peer.Error
		switch {
		case err == nil:
			e, err := proto.UnmarshalEvent(b)
			if err != nil {
				return nil, fmt.Errorf("replica %s answered a malformed event: %w", t.ID, err)
			}
			return e, nil
		case errors.As(err, &pe) && pe.Status == http.StatusNotFound:
		default:
			failed = append(failed, t.ID+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("replicas did not answer: %s", strings.Join(failed, "; "))
	}
	return nil, fmt.Errorf("%w (session %q, on no replica)", audit.ErrNotBrokered, session)
}

// readyHandler answers the readiness check (api.PathReady) and, while
// ready says no (a replica without its lease: it cannot record what it
// would do), refuses every other request but the ping with 503.
func readyHandler(replica string, ready func() bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ok := ready()
		if req.URL.Path == api.PathReady {
			w.Header().Set("Content-Type", "application/json")
			if !ok {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			json.NewEncoder(w).Encode(api.Ready{Ready: ok, Replica: replica})
			return
		}
		if !ok && req.URL.Path != api.PathPing {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(&api.Error{Code: api.CodeUnavailable,
				Message: "this fleetd replica has lost the fleet's store and takes no requests until it is back; try again (another replica will answer)"})
			return
		}
		next.ServeHTTP(w, req)
	})
}

// Self implements httpapi.Peers.
func (r *replicas) Self() string { return r.id }

// Ask implements httpapi.Peers: the other replicas, asked at once.
func (r *replicas) Ask(ctx context.Context, path string, q url.Values) (map[string][]byte, map[string]error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	answers, failed := map[string][]byte{}, map[string]error{}
	var wg sync.WaitGroup
	for _, t := range r.others() {
		wg.Go(func() {
			b, err := r.node.Do(ctx, t, http.MethodGet, path, q, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed[t.ID] = err
			} else {
				answers[t.ID] = b
			}
		})
	}
	wg.Wait()
	return answers, failed
}

// AskOne implements httpapi.Peers.
func (r *replicas) AskOne(ctx context.Context, id, path string, q url.Values) ([]byte, error) {
	rep, ok := r.pres.Replica(id)
	if !ok {
		return nil, fmt.Errorf("replica %s is not running", id)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return r.node.Do(ctx, peer.Target{ID: rep.ID, Addr: rep.Addr}, http.MethodGet, path, q, nil)
}

// Open implements httpapi.Peers.
func (r *replicas) Open(ctx context.Context, id, path string, q url.Values) (io.ReadCloser, error) {
	rep, ok := r.pres.Replica(id)
	if !ok {
		return nil, fmt.Errorf("replica %s is not running", id)
	}
	return r.node.Get(ctx, peer.Target{ID: rep.ID, Addr: rep.Addr}, path, q)
}

// elsewhere reports a device whose tunnel another replica holds, and
// since when, from presence (in memory: the dashboard asks for every
// device each second).
func (r *replicas) elsewhere(deviceID string) (time.Time, bool) {
	e, ok := r.pres.Lookup(deviceID)
	if !ok || e.Replica == r.pres.Self().ID || e.Silent {
		return time.Time{}, false
	}
	return e.Since, true
}

// replicaBlobs is releases.Peers over the peer connections: a replica
// fetches the release blobs it lacks from one that holds them.
type replicaBlobs struct {
	id   string
	reps func() *replicas // set once the peer connections exist
}

// Self implements releases.Peers.
func (b *replicaBlobs) Self() string { return b.id }

// Live implements releases.Peers.
func (b *replicaBlobs) Live(id string) bool {
	r := b.reps()
	if r == nil {
		return false
	}
	_, ok := r.pres.Replica(id)
	return ok
}

// Blob implements releases.Peers.
func (b *replicaBlobs) Blob(ctx context.Context, id, sum string) (io.ReadCloser, error) {
	r := b.reps()
	if r == nil {
		return nil, errors.New("the peer connections are not up yet")
	}
	rep, ok := r.pres.Replica(id)
	if !ok {
		return nil, fmt.Errorf("replica %s is not running", id)
	}
	return r.node.Get(ctx, peer.Target{ID: rep.ID, Addr: rep.Addr}, releases.PeerBlobPath(sum), nil)
}
