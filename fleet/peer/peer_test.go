package peer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/tools/logtest"
)

func newCA(t *testing.T) *ca.Authority {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a, err := ca.LoadOrCreate(context.Background(), st, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// serve runs a node with handler on a loopback port until the test ends.
func serve(t *testing.T, a CA, id string, h http.Handler) (*Node, Target) {
	t.Helper()
	n, err := New(Config{CA: a, ID: id, Hosts: []string{"127.0.0.1"}, Handler: h, Logger: logtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		n.CloseIdle()
		cancel()
		<-done
	})
	return n, Target{ID: id, Addr: ln.Addr().String()}
}

// echo answers /echo with a stream that sends back what it reads, upper-
// cased, and ends its side when the caller ends theirs; /who names the
// calling replica.
func echo() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		s, err := Accept(w, r, nil)
		if err != nil {
			return
		}
		defer s.Close()
		buf := make([]byte, 32<<10)
		for {
			n, err := s.Read(buf)
			if n > 0 {
				if _, werr := s.Write(bytes.ToUpper(buf[:n])); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	mux.HandleFunc("GET /who", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, Caller(r.Context()))
	})
	mux.HandleFunc("POST /refuse", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no such device here", http.StatusNotFound)
	})
	return mux
}

func TestStream(t *testing.T) {
	a := newCA(t)
	_, tb := serve(t, a, "b", echo())
	na, _ := serve(t, a, "a", nil)
	ctx := context.Background()

	who, err := na.Do(ctx, tb, http.MethodGet, "/who", nil, nil)
	if err != nil || string(who) != "a" {
		t.Fatalf("Do /who = %q, %v; want the caller's ID a", who, err)
	}

	s, err := na.Stream(ctx, tb, "/echo", nil, []byte("first "))
	if err != nil {
		t.Fatal(err)
	}
	// More than the stream windows, both ways at once.
	want := bytes.Repeat([]byte("remoteler "), 1<<20)
	go func() {
		s.Write(want)
		s.CloseWrite()
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	want = append([]byte("first "), want...)
	if !bytes.Equal(got, bytes.ToUpper(want)) {
		t.Fatalf("echo of %d bytes came back as %d bytes, or altered", len(want), len(got))
	}
	s.Close()

	if _, err := na.Stream(ctx, tb, "/refuse", nil, nil); err == nil {
		t.Fatal("a refused stream opened")
	} else {
		var pe *Error
		if !errors.As(err, &pe) || pe.Status != http.StatusNotFound || !strings.Contains(pe.Message, "no such device") {
			t.Errorf("refused stream: %v, want a 404 *Error with the peer's message", err)
		}
	}
}

// TestIdentity: a replica must be the one the caller meant, and only
// replicas of the same fleet get in.
func TestIdentity(t *testing.T) {
	a := newCA(t)
	other := newCA(t)
	na, _ := serve(t, a, "a", nil)
	_, tb := serve(t, a, "b", echo())
	ctx := context.Background()

	t.Run("wrong replica at the address", func(t *testing.T) {
		_, err := na.Do(ctx, Target{ID: "c", Addr: tb.Addr}, http.MethodGet, "/who", nil, nil)
		if err == nil || !strings.Contains(err.Error(), `answered as replica "b", want "c"`) {
			t.Errorf("Do = %v, want the wrong replica refused", err)
		}
	})
	t.Run("another fleet's replica", func(t *testing.T) {
		no, _ := serve(t, other, "a", nil)
		if _, err := no.Do(ctx, tb, http.MethodGet, "/who", nil, nil); err == nil {
			t.Error("a replica of another fleet got in")
		}
	})
	t.Run("a user's certificate", func(t *testing.T) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		der, err := a.SignUserX509(csr, "alice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		conf := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{ALPN},
			Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
		c, err := tls.Dial("tcp", tb.Addr, conf)
		if err == nil {
			// TLS 1.3: the server's refusal arrives with the first read.
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Read(make([]byte, 1))
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Errorf("a user's certificate: %v, want the handshake refused", err)
		}
	})
}

func TestStreamOpenCancelled(t *testing.T) {
	a := newCA(t)
	block := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("POST /slow", func(w http.ResponseWriter, r *http.Request) {
		<-block
	})
	_, tb := serve(t, a, "b", mux)
	defer close(block)
	na, _ := serve(t, a, "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := na.Stream(ctx, tb, "/slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Stream to a handler that never answers: %v, want the context's deadline", err)
	}
}
