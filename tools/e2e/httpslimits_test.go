package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// dialTLSFrom opens a TLS connection to the fleet from the loopback
// address src.
func dialTLSFrom(t *testing.T, src, addr string) (*tls.Conn, error) {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

// ping sends GET /v1/ping on c and reports whether it was answered 200.
func ping(c net.Conn) error {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	defer c.SetDeadline(time.Time{})
	fmt.Fprintf(c, "GET /v1/ping HTTP/1.1\r\nHost: fleet\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(line, " 200 ") {
		return fmt.Errorf("answered %q", strings.TrimSpace(line))
	}
	return nil
}

// TestHTTPSPortLimits: on the fleet's HTTPS port, a client that sends a
// request body slowly is cut off; a brokered SSH session that lasts longer
// than every body timeout is not; and one source address cannot hold more
// than its share of connections.
func TestHTTPSPortLimits(t *testing.T) {
	f := startFleetWith(t, "http_body_idle_timeout: 1s\nhttp_body_timeout: 2s\nmax_conns_per_source: 6\n")
	f.StartAgent("pi-1", "site=north")
	u := f.Login("alice", f.AddUser("alice", "access", "root"))

	t.Run("slow body", func(t *testing.T) {
		c, err := dialTLSFrom(t, "127.0.0.1", f.Addr)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		fmt.Fprintf(c, "POST /v1/login HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"user\":")
		c.SetReadDeadline(time.Now().Add(60 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(line, "408") {
			t.Fatalf("a stalled body got %q, %v after %v; want 408", line, err, time.Since(start))
		}
		t.Logf("stalled body cut after %v", time.Since(start).Round(time.Millisecond))
	})

	t.Run("long session", func(t *testing.T) {
		// Input arrives in pauses longer than the idle timeout, and the
		// session outlasts the total one.
		script := "for i in 1 2 3; do read x; echo got-$x; done"
		cmd := tshCmd(u, "ssh", "root@pi-1", script)
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for i := range 3 {
			time.Sleep(1500 * time.Millisecond) // the pause under test, not a wait for anything
			fmt.Fprintf(in, "line%d\n", i)
		}
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("session of %v: %v\n%s", time.Since(start), err, out.String())
		}
		if want := "got-line0\ngot-line1\ngot-line2\n"; out.String() != want {
			t.Errorf("session output %q, want %q", out.String(), want)
		}
	})

	t.Run("connections per source", func(t *testing.T) {
		var held []*tls.Conn
		for i := range 6 {
			c, err := dialTLSFrom(t, "127.0.0.3", f.Addr)
			if err != nil {
				t.Fatalf("connection %d of 6: %v", i+1, err)
			}
			if err := ping(c); err != nil {
				t.Fatalf("connection %d of 6: %v", i+1, err)
			}
			held = append(held, c)
		}
		if c, err := dialTLSFrom(t, "127.0.0.3", f.Addr); err == nil {
			if err := ping(c); err == nil {
				t.Fatal("a seventh connection from the same source was served")
			}
		}
		// Another source is served meanwhile.
		c, err := dialTLSFrom(t, "127.0.0.4", f.Addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := ping(c); err != nil {
			t.Fatalf("another source was refused: %v", err)
		}
		// A closed connection frees its place.
		held[0].Close()
		if !harness.Eventually(20*time.Second, func() bool {
			c, err := dialTLSFrom(t, "127.0.0.3", f.Addr)
			return err == nil && ping(c) == nil
		}) {
			t.Fatal("the source was still refused after closing a connection")
		}
	})
}
