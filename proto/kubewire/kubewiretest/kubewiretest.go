// Package kubewiretest has the remote command WebSocket ends that tests of
// Kubernetes access need: an exec server that stands in for a kubelet
// (FakeExec), and a client that speaks to it as kubectl would (DialExec).
// Only tests import it.
package kubewiretest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/proto/kubewire"
)

// mask masks the client's frames.
var mask = &[4]byte{0x12, 0x34, 0x56, 0x78}

// FakeExec stands in for a kubelet's exec over WebSocket (v5.channel.k8s.io)
// with a terminal: what comes on stdin goes back on stdout upper-cased, as
// a terminal echoes it; "exit" ends the command with success.
func FakeExec(w http.ResponseWriter, r *http.Request) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n")
	brw.Flush()
	var mu sync.Mutex
	send := func(ch byte, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		conn.Write(kubewire.Frame(kubewire.OpBinary, append([]byte{ch}, p...), nil))
	}
	done := false
	tap := kubewire.NewChannelTap(func(ch int, p []byte) {
		if ch != kubewire.ChStdin || done {
			return
		}
		if strings.Contains(string(p), "exit") {
			done = true
			send(kubewire.ChError, []byte(`{"metadata":{},"status":"Success"}`))
			mu.Lock()
			conn.Write(kubewire.Frame(kubewire.OpClose, []byte{0x03, 0xe8}, nil))
			mu.Unlock()
			return
		}
		send(kubewire.ChStdout, bytes.ToUpper(p))
	}, nil)
	buf := make([]byte, 4096)
	for !done {
		n, err := brw.Read(buf)
		if n > 0 && tap.Feed(buf[:n]) != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

// Client is a remote command client on an upgraded connection: it
// collects what arrives on each channel.
type Client struct {
	Conn net.Conn
	// Done is closed when the connection ends.
	Done chan struct{}
	mu   sync.Mutex // guards got
	got  map[int][]byte
}

// DialExec asks for the exec at path over a new connection to addr (a
// remote command WebSocket, v5.channel.k8s.io) and returns the client, or
// fails t.
func DialExec(t testing.TB, addr, path string) *Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return Upgrade(t, conn, path)
}

// Upgrade asks for the exec at path on conn (see DialExec).
func Upgrade(t testing.TB, conn net.Conn, path string) *Client {
	t.Helper()
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n", path)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %v %v, want 101", resp, err)
	}
	c := &Client{Conn: conn, got: map[int][]byte{}, Done: make(chan struct{})}
	tap := kubewire.NewChannelTap(func(ch int, p []byte) {
		c.mu.Lock()
		c.got[ch] = append(c.got[ch], p...)
		c.mu.Unlock()
	}, nil)
	go func() {
		defer close(c.Done)
		buf := make([]byte, 4096)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				tap.Feed(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return c
}

// Send sends p on channel ch.
func (c *Client) Send(ch byte, p string) {
	c.Conn.Write(kubewire.Frame(kubewire.OpBinary, append([]byte{ch}, p...), mask))
}

// Resize sends a terminal size.
func (c *Client) Resize(cols, rows int) {
	c.Send(kubewire.ChResize, fmt.Sprintf(`{"Width":%d,"Height":%d}`, cols, rows))
}

// Channel returns what arrived on channel ch so far.
func (c *Client) Channel(ch int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.got[ch])
}

// WaitFor waits up to 10 s for channel ch to contain want, or fails t.
func (c *Client) WaitFor(t testing.TB, ch int, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.Channel(ch), want) {
		if time.Now().After(deadline) {
			t.Fatalf("channel %d has %q, want %q", ch, c.Channel(ch), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
