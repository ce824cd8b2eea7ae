package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/firmware/identity"
	"remoteler.dev/edge/proto"

	"remoteler.dev/edge/tools/harness"
)

func TestFleetRestartKeepsStateAndAgentReconnects(t *testing.T) {
	f, a, u := setup(t)
	pinBefore := f.Pin
	f.Restart()
	if f.Pin != pinBefore {
		t.Errorf("CA pin changed across restart: %s then %s", pinBefore, f.Pin)
	}
	f.WaitOnline("pi-1")
	// The login from before the restart still works: users and CAs kept.
	if out := u.Tsh("ssh", "root@pi-1", "echo", "again"); out != "again\n" {
		t.Errorf("after restart: %q", out)
	}
	if !strings.Contains(f.Ctl("", "users", "ls"), "alice") {
		t.Error("user alice lost across restart")
	}
	if strings.Contains(a.Proc.Output(), "joining the fleet") && strings.Count(a.Proc.Output(), "joining the fleet") > 1 {
		t.Error("agent joined again instead of reconnecting")
	}
}

// agentTLS returns a QUIC client config with a joined device's identity.
func agentTLS(t *testing.T, a *harness.Agent) *tls.Config {
	t.Helper()
	a.Proc.Stop() // release agent.db
	st, err := identity.Open(filepath.Join(a.DataDir, "agent.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	id, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := id.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := id.CertPool()
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: "127.0.0.1", NextProtos: []string{proto.ALPN}}
}

func TestMalformedInputKeepsServing(t *testing.T) {
	f, a, u := setup(t)
	tlsConf := agentTLS(t, a)

	t.Run("https garbage", func(t *testing.T) {
		for _, junk := range []string{"\x16\x03\x01\xff\xff garbage", "GET / HTTP/1.1\r\n\r\n", strings.Repeat("\x00", 70000)} {
			c, err := net.Dial("tcp", f.Addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte(junk))
			buf := make([]byte, 512)
			for {
				if _, err := c.Read(buf); err != nil {
					break // closed by fleetd: what we want
				}
			}
			c.Close()
		}
	})
	t.Run("https oversized header", func(t *testing.T) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+f.Addr+"/v1/ping", nil)
		req.Header.Set("X-Big", strings.Repeat("a", 200<<10))
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("status = %d, want 431", resp.StatusCode)
			}
		}
	})
	t.Run("https bad json", func(t *testing.T) {
		tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post("https://"+f.Addr+"/v1/login", "application/json", strings.NewReader(`{"user": [1,2,`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status = %d, want 400", resp.StatusCode)
		}
	})
	t.Run("udp garbage", func(t *testing.T) {
		c, err := net.Dial("udp", f.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := range 200 {
			c.Write([]byte(strings.Repeat(string(rune('a'+i%26)), 1+i*7)))
		}
	})
	frames := []struct {
		name  string
		bytes []byte
	}{
		{"garbage frame", []byte("\xff\xfe garbage")},
		{"oversized frame", []byte{byte(proto.KindHello), 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"bad cbor", []byte{byte(proto.KindHello), 3, 0xff, 0x00, 0x01}},
	}
	for _, fr := range frames {
		t.Run("quic "+fr.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			qc, err := quic.DialAddr(ctx, f.Addr, tlsConf, nil)
			if err != nil {
				t.Fatal(err)
			}
			st, err := qc.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Write(fr.bytes)
			proto.ReadMsg(bufio.NewReader(st), proto.MaxControlFrame)
			select {
			case <-qc.Context().Done():
			case <-ctx.Done():
				t.Fatal("fleetd kept a connection that sent a malformed frame")
			}
		})
	}
	f.Proc.WaitOutput("bad hello", 5*time.Second)

	// fleetd still serves: the agent comes back and ssh works.
	a.Proc = start(t, "edge-agent pi-1 (again)", nil, "edge-agent", "start", "--data-dir", a.DataDir)
	f.WaitOnline("pi-1")
	if out := u.Tsh("ssh", "root@pi-1", "echo", "still"); out != "still\n" {
		t.Errorf("after malformed input: %q", out)
	}
}
