// Command auditbench measures the audit trail with the real code on
// loopback: the device's queue (firmware/auditq), its shipper over a real
// QUIC tunnel (firmware/tunnel to fleet/tunnelsrv) and the fleet's audit log
// (fleet/audit), each on its own bbolt file in a temporary directory. It
// prints:
//
//   - events/s written to the device queue, each fsync'd before Append
//     returns, with 1 writer and with many (fsync batching);
//   - a backlog of N events (default 100,000) written while the fleet is
//     away, then drained once the tunnel comes up: seconds and events/s
//     until the fleet has committed the last one;
//   - bytes per event on the wire (audit batch frames on the control
//     stream, divided by the events they carry).
//
// Usage:
//
//	go run ./tools/bench/auditbench [-backlog 100000] [-writers 256] [-profile NAME]
//
// -profile runs the tunnel through a tools/linksim link with that profile
// (see linksim's profile names; -loss changes its loss rate); without it
// the link is plain loopback.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/auditq"
	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/linksim"
)

func main() {
	backlog := flag.Int("backlog", 100_000, "events written while the fleet is away, then drained")
	writers := flag.Int("writers", 256, "concurrent writers for the batched-fsync figure and the backlog")
	single := flag.Int("single", 2000, "events written by one writer for the unbatched figure")
	runs := flag.Int("runs", 3, "runs; the tables give the median and the range")
	profile := flag.String("profile", "", "a linksim profile for the tunnel's link (default: plain loopback)")
	flag.Float64Var(&lossOverride, "loss", -1, "with -profile: the random loss rate in each direction instead of the profile's (0 to 1)")
	flag.Parse()
	var rs []result
	for i := range *runs {
		fmt.Fprintf(os.Stderr, "auditbench: run %d of %d\n", i+1, *runs)
		r, err := measure(*backlog, *writers, *single, *profile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "auditbench:", err)
			os.Exit(1)
		}
		rs = append(rs, r)
	}
	report(rs, *backlog, *writers, *single)
}

// lossOverride, when not negative, replaces the profile's loss rate.
var lossOverride float64

// result is one run's figures.
type result struct {
	single, batched float64 // events/s written
	fileMB          float64 // the queue file after the backlog
	drain           time.Duration
	drainRate       float64 // events/s
	bytesPerEvent   float64
	batches         int64
	link            string
}

// stat is the median and range of a figure over the runs.
func stat(rs []result, f func(result) float64) string {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	med := v[len(v)/2]
	if len(v)%2 == 0 {
		med = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	if len(v) == 1 {
		return fmtNum(med)
	}
	return fmt.Sprintf("%s [%s–%s]", fmtNum(med), fmtNum(v[0]), fmtNum(v[len(v)-1]))
}

func fmtNum(x float64) string {
	switch {
	case x >= 100:
		return fmt.Sprintf("%.0f", x)
	case x >= 10:
		return fmt.Sprintf("%.1f", x)
	}
	return fmt.Sprintf("%.2f", x)
}

// report prints the figures as Markdown tables.
func report(rs []result, backlog, writers, single int) {
	fmt.Printf("**Writing to the device's audit queue** (each event fsync'd before Append returns; median of %d runs [range]):\n\n", len(rs))
	fmt.Println("| writers | events | events/s |")
	fmt.Println("|---|---|---|")
	fmt.Printf("| 1 | %d | %s |\n", single, stat(rs, func(r result) float64 { return r.single }))
	fmt.Printf("| %d | %d | %s |\n\n", writers, backlog, stat(rs, func(r result) float64 { return r.batched }))
	fmt.Printf("**Backlog drained after reconnect** (%d events queued while the fleet was away; timed from the tunnel's start until the fleet committed the last one; link: %s):\n\n", backlog, rs[0].link)
	fmt.Println("| seconds | events/s | bytes/event on the wire | batches | queue file before compaction (MB) |")
	fmt.Println("|---|---|---|---|---|")
	fmt.Printf("| %s | %s | %s | %d | %s |\n", stat(rs, func(r result) float64 { return r.drain.Seconds() }),
		stat(rs, func(r result) float64 { return r.drainRate }), stat(rs, func(r result) float64 { return r.bytesPerEvent }),
		rs[0].batches, stat(rs, func(r result) float64 { return r.fileMB }))
}

// event is a typical session event.
func event(i int) *proto.AuditEvent {
	return &proto.AuditEvent{
		Type: proto.EventExec, Outcome: proto.OutcomeSuccess, User: "alice", Login: "root",
		Session: "5f0c8e1d2a3b4c5d6e7f8091a2b3c4d5", Cluster: "fleet",
		Fields: map[string]string{"command": "systemctl status edge-agent", "pty": "false", "n": fmt.Sprint(i)},
	}
}

// write appends n events from w writers and returns the rate.
func write(q *auditq.Queue, n, w int) (float64, error) {
	var next atomic.Int64
	var firstErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for range w {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if _, err := q.Append(context.Background(), event(i)); err != nil {
					mu.Lock()
					firstErr = errors.Join(firstErr, err)
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), firstErr
}

func measure(backlog, writers, single int, profile string) (res result, err error) {
	dir, err := os.MkdirTemp("", "auditbench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	quiet := slog.New(slog.DiscardHandler)

	// 1. Writes with and without fsync batching.
	q1, err := auditq.Open(auditq.Config{Path: filepath.Join(dir, "single.db"), Source: "dev-0", Logger: quiet})
	if err != nil {
		return res, err
	}
	rate1, err := write(q1, single, 1)
	q1.Close()
	if err != nil {
		return res, err
	}
	res.single = rate1

	q, err := auditq.Open(auditq.Config{Path: filepath.Join(dir, "audit.db"), Source: "dev-1", MaxBytes: 1 << 30, Logger: quiet})
	if err != nil {
		return res, err
	}
	defer q.Close()
	rateN, err := write(q, backlog, writers)
	if err != nil {
		return res, err
	}
	fi, _ := os.Stat(filepath.Join(dir, "audit.db"))
	res.batched, res.fileMB = rateN, float64(fi.Size())/1e6

	// 2. The fleet, reached over a real tunnel.
	log, err := audit.Open(audit.Config{Path: filepath.Join(dir, "fleet-audit.db"), Logger: quiet})
	if err != nil {
		return res, err
	}
	defer log.Close()
	srvTLS, cliTLS, err := certs()
	if err != nil {
		return res, err
	}
	srv := tunnelsrv.New(tunnelsrv.Config{
		TLSConfig:    srvTLS,
		Authenticate: func(tls.ConnectionState) (string, error) { return "dev-1", nil },
		OnHello: func(context.Context, string, net.Addr, *proto.Hello) (*proto.HelloAck, error) {
			return &proto.HelloAck{DeviceID: "dev-1", ServerTime: time.Now().UnixMilli()}, nil
		},
		OnMessage: func(ctx context.Context, id string, m proto.Message) (proto.Message, error) {
			if b, ok := m.(*proto.AuditBatch); ok {
				return log.Ingest(ctx, id, b)
			}
			return nil, fmt.Errorf("unexpected %s", m.Kind())
		},
		Logger: quiet,
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(ctx, pc)
	addr := pc.LocalAddr().String()
	link := "loopback"
	if profile != "" {
		p, err := linksim.ProfileByName(profile)
		if err != nil {
			return res, err
		}
		if lossOverride >= 0 {
			p = p.Both(func(i *linksim.Impairment) { i.Loss = lossOverride })
		}
		l, err := linksim.New(linksim.Config{Profile: p, Seed: 1})
		if err != nil {
			return res, err
		}
		defer l.Close()
		relay, err := l.ListenUDP("127.0.0.1:0", addr)
		if err != nil {
			return res, err
		}
		addr, link = relay.Addr().String(), "linksim "+p.String()
	}
	var ship atomic.Pointer[auditq.Shipper]
	tc := tunnel.New(tunnel.Config{
		Addr:      addr,
		TLSConfig: func() (*tls.Config, error) { return cliTLS, nil },
		Hello:     func() *proto.Hello { return &proto.Hello{Name: "dev-1"} },
		Handle:    func(_ context.Context, _ *proto.StreamHeader, c net.Conn) { c.Close() },
		OnMessage: func(m proto.Message) {
			if ack, ok := m.(*proto.AuditAck); ok {
				ship.Load().Deliver(ack)
			}
		},
		OnState: func(up bool) {
			if up {
				ship.Load().Wake()
			}
		},
		Logger: quiet,
	})
	ship.Store(auditq.NewShipper(q, tc, auditq.ShipperConfig{Logger: quiet}))
	start := time.Now()
	go tc.Run(ctx)
	go ship.Load().Run(ctx)
	want := q.Status().Head
	for {
		head, _, err := log.Head("dev-1")
		if err != nil {
			return res, err
		}
		if head >= want {
			break
		}
		if time.Since(start) > 10*time.Minute {
			return res, fmt.Errorf("backlog not drained in 10 minutes: %d of %d", head, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	st := ship.Load().Stats()
	res.drain, res.drainRate, res.link = took, float64(want)/took.Seconds(), link
	res.bytesPerEvent, res.batches = float64(st.Bytes)/float64(st.Events), st.Batches
	v, err := log.Verify(ctx)
	if err != nil {
		return res, err
	}
	for _, c := range v.Chains {
		if !c.OK || c.Events != uint64(want) {
			return res, fmt.Errorf("the fleet's chain does not verify: %+v", c)
		}
	}
	fmt.Fprintf(os.Stderr, "auditbench: %d events drained in %v; the fleet's chain verified\n", want, took.Round(time.Millisecond))
	return res, nil
}

// certs makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and the TLS configs that use them.
func certs() (*tls.Config, *tls.Config, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	leaf := func(serial int64, usage x509.ExtKeyUsage) (tls.Certificate, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return tls.Certificate{}, err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "dev-1"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return tls.Certificate{}, err
		}
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
	}
	srvCert, err := leaf(2, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, nil, err
	}
	cliCert, err := leaf(3, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{srvCert}, ClientCAs: pool},
		&tls.Config{Certificates: []tls.Certificate{cliCert}, RootCAs: pool, ServerName: "127.0.0.1"}, nil
}
