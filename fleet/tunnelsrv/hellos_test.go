package tunnelsrv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
)

// rawHello dials h as device cn with a bare QUIC connection and sends
// hello (its protocol version filled in) on the control stream.
func rawHello(t *testing.T, h *harness, cn string, hello *proto.Hello) (*quic.Conn, *quic.Stream) {
	t.Helper()
	tc, _ := h.pki.clientTLS(h.pki.Client(t, cn))()
	tc.NextProtos = []string{proto.ALPN}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, h.addr, tc, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hello.ProtocolVersion = proto.Version
	if err := proto.WriteMsg(st, hello); err != nil {
		t.Fatal(err)
	}
	return qc, st
}

// holdFirst is an OnHello that sends each device's ID to entered as its
// hello is answered, and holds pi-1's answer until release closes.
func holdFirst(entered chan<- string, release <-chan struct{}) func(context.Context, string, net.Addr, *proto.Hello) (*proto.HelloAck, error) {
	return func(ctx context.Context, id string, addr net.Addr, hl *proto.Hello) (*proto.HelloAck, error) {
		entered <- id
		if id == "pi-1" {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return &proto.HelloAck{DeviceID: id, ServerTime: time.Now().UnixMilli()}, nil
	}
}

// TestHelloTurns: with one hello answered at a time, a second device
// waits for its turn; one that waits longer than HelloWait is told to come
// back later, spread out, and an agent told so comes back and connects.
func TestHelloTurns(t *testing.T) {
	tests := []struct {
		name      string
		wait      time.Duration
		wantTurns bool // the second device is told to come back later
	}{
		{"the second waits its turn", time.Minute, false},
		{"the second is told to come back later", 100 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pki := newPKI(t)
			release := make(chan struct{})
			entered := make(chan string, 4)
			h := startServerWith(t, pki, "127.0.0.1:0", func(c *Config) {
				c.MaxHellos, c.HelloWait = 1, tt.wait
				c.OnHello = holdFirst(entered, release)
			})
			first, _ := rawHello(t, h, "pi-1", &proto.Hello{Name: "pi-1"})
			if got := <-entered; got != "pi-1" {
				t.Fatalf("first hello answered = %s", got)
			}
			second, _ := rawHello(t, h, "pi-2", &proto.Hello{Name: "pi-2"})
			if tt.wantTurns {
				<-second.Context().Done()
				var ae *quic.ApplicationError
				cause := context.Cause(second.Context())
				var ms int64
				if !errors.As(cause, &ae) || ae.ErrorCode != quic.ApplicationErrorCode(proto.CodeUnavailable) {
					t.Fatalf("second closed with %v, want unavailable", cause)
				}
				if _, err := fmt.Sscanf(ae.ErrorMessage, proto.BusyReason, &ms); err != nil || ms < 2000 {
					t.Fatalf("second closed with %q, want %q with at least 2000 ms", ae.ErrorMessage, proto.BusyReason)
				}
				// An agent turned away the same way comes back once there
				// is room.
				_, state := startAgent(t, h, "pi-3", "pi-3", nil)
				deadline := time.Now().Add(10 * time.Second)
				for h.srv.Turned() != 2 {
					if time.Now().After(deadline) {
						t.Fatalf("Turned = %d, want 2", h.srv.Turned())
					}
					time.Sleep(5 * time.Millisecond)
				}
				close(release)
				waitState(t, state, true)
			} else {
				// It waits: its hello is not answered while the first's is.
				deadline := time.Now().Add(10 * time.Second)
				for h.srv.waiting.Load() != 1 {
					if time.Now().After(deadline) {
						t.Fatal("the second device never waited for its turn")
					}
					time.Sleep(5 * time.Millisecond)
				}
				select {
				case id := <-entered:
					t.Fatalf("%s's hello answered while the first's was", id)
				default:
				}
			}
			if !tt.wantTurns {
				close(release)
			}
			waitOnline(t, h, "pi-1")
			if first.Context().Err() != nil {
				t.Fatalf("first device closed: %v", context.Cause(first.Context()))
			}
			if !tt.wantTurns {
				if got := <-entered; got != "pi-2" {
					t.Fatalf("then answered = %s, want pi-2", got)
				}
				waitOnline(t, h, "pi-2")
			}
		})
	}
}

// waitOnline waits until device id is connected to h.
func waitOnline(t *testing.T, h *harness, id string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !h.srv.Online(id) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never came online", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHelloSlotFreedOnRefusal: with one hello answered at a time, refused
// hellos (a hello naming another device) give their slot back: a good
// device then connects.
func TestHelloSlotFreedOnRefusal(t *testing.T) {
	h := startServerWith(t, newPKI(t), "127.0.0.1:0", func(c *Config) {
		c.MaxHellos, c.HelloWait = 1, 100*time.Millisecond
	})
	for i := range 3 {
		qc, _ := rawHello(t, h, "pi-2", &proto.Hello{Name: "someone-else"})
		<-qc.Context().Done()
		var ae *quic.ApplicationError
		if cause := context.Cause(qc.Context()); !errors.As(cause, &ae) || ae.ErrorCode != quic.ApplicationErrorCode(proto.CodeForbidden) {
			t.Fatalf("refusal %d: closed with %v, want forbidden", i, cause)
		}
	}
	_, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	if n := h.srv.Turned(); n != 0 {
		t.Errorf("Turned = %d, want 0: the refused hellos kept their slots", n)
	}
}

// TestCrowdRefusedBeforeHandshake: with one handshake allowed at a time,
// a device that dials while another's handshake is under way is refused
// before its own (CONNECTION_REFUSED), and the server counts it; an agent
// refused the same way connects once the handshake is done. Connections
// past their handshake, waiting for their hello's turn, do not count.
func TestCrowdRefusedBeforeHandshake(t *testing.T) {
	pki := newPKI(t)
	release := make(chan struct{})
	letGo := sync.OnceFunc(func() { close(release) })
	verifying := make(chan struct{}, 1)
	h := startServerWith(t, pki, "127.0.0.1:0", func(c *Config) {
		c.MaxHandshakes = 1
		// The server's check of a client certificate runs inside the
		// handshake: it holds slow's handshake open.
		c.TLSConfig.VerifyPeerCertificate = func(_ [][]byte, chains [][]*x509.Certificate) error {
			if len(chains) > 0 && chains[0][0].Subject.CommonName == "slow" {
				verifying <- struct{}{}
				<-release
			}
			return nil
		}
	})
	// Devices past their handshake, even many, take no place.
	for _, cn := range []string{"pi-1", "pi-2"} {
		_, state := startAgent(t, h, cn, cn, nil)
		waitState(t, state, true)
	}
	slow := make(chan error, 1)
	go func() {
		tc, _ := h.pki.clientTLS(h.pki.Client(t, "slow"))()
		tc.NextProtos = []string{proto.ALPN}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		qc, err := quic.DialAddr(ctx, h.addr, tc, nil)
		if err == nil {
			qc.CloseWithError(0, "")
		}
		slow <- err
	}()
	<-verifying
	// Registered after the server's: runs first, so that a failure here
	// does not leave the server's stop waiting on the held handshake.
	t.Cleanup(letGo)

	tc, _ := h.pki.clientTLS(h.pki.Client(t, "pi-3"))()
	tc.NextProtos = []string{proto.ALPN}
	var handshakes atomic.Int32
	tc.VerifyConnection = func(tls.ConnectionState) error { handshakes.Add(1); return nil }
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := quic.DialAddr(ctx, h.addr, tc, nil)
	var te *quic.TransportError
	if !errors.As(err, &te) || !te.Remote || te.ErrorCode != quic.ConnectionRefused {
		t.Fatalf("a device dialling during another's handshake: %v, want CONNECTION_REFUSED from the fleet", err)
	}
	if handshakes.Load() != 0 {
		t.Error("the refused device saw the fleet's certificate: its handshake went ahead")
	}
	// Each of the device's first packets is refused (a post-quantum key
	// share makes the ClientHello two packets).
	refused := h.srv.Refused()
	if refused < 1 {
		t.Errorf("Refused = %d, want at least 1", refused)
	}
	// An agent refused the same way backs off and comes back.
	_, state := startAgent(t, h, "pi-4", "pi-4", nil)
	deadline := time.Now().Add(10 * time.Second)
	for h.srv.Refused() <= refused {
		if time.Now().After(deadline) {
			t.Fatalf("Refused = %d: the agent was not refused during the handshake", h.srv.Refused())
		}
		time.Sleep(5 * time.Millisecond)
	}
	letGo()
	if err := <-slow; err != nil {
		t.Fatalf("the slow handshake, once let go: %v", err)
	}
	waitState(t, state, true)
	if n := h.srv.handshaking.Load(); n != 0 {
		t.Errorf("%d connections still counted as handshaking once all are done", n)
	}
}
