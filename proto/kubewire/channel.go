package kubewire

import (
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"time"

	"remoteler.dev/edge/proto/kubestatus"
)

// Channels of Kubernetes' remote command protocols over WebSocket
// (v4.channel.k8s.io, v5.channel.k8s.io): the first byte of each binary
// message names its channel.
const (
	ChStdin  = 0
	ChStdout = 1
	ChStderr = 2
	ChError  = 3
	ChResize = 4
)

// FollowsProtocol reports whether ChannelTap can follow the channels of
// WebSocket subprotocol p; the base64 variants are passed through
// unfollowed.
func FollowsProtocol(p string) bool {
	return p == "v4.channel.k8s.io" || p == "v5.channel.k8s.io"
}

// maxResizeMessage bounds a terminal size message.
const maxResizeMessage = 4 << 10

// ChannelTap follows one direction of a remote command WebSocket and hands
// each channel's data to out, and terminal sizes to resized (either may be
// nil).
type ChannelTap struct {
	ws      wsStream
	ch      int // the current message's channel; -1 before its first byte
	resize  []byte
	out     func(ch int, p []byte)
	resized func(cols, rows int)
}

// NewChannelTap returns a tap that calls out and resized.
func NewChannelTap(out func(ch int, p []byte), resized func(cols, rows int)) *ChannelTap {
	t := &ChannelTap{ch: -1, out: out, resized: resized}
	t.ws.data, t.ws.end = t.data, t.end
	return t
}

// Feed follows p, the next bytes of the direction. After a framing error
// (returned, and from then on) it follows nothing more.
func (t *ChannelTap) Feed(p []byte) error { return t.ws.feed(p) }

// AtBoundary reports whether the bytes so far end between messages, so
// that a message can be put in here.
func (t *ChannelTap) AtBoundary() bool { return t.ws.atBoundary() }

func (t *ChannelTap) data(start bool, p []byte) {
	if start {
		t.ch, t.resize = -1, t.resize[:0]
	}
	if t.ch == -1 {
		if len(p) == 0 {
			return
		}
		t.ch, p = int(p[0]), p[1:]
	}
	if len(p) == 0 {
		return
	}
	if t.ch == ChResize {
		if len(t.resize)+len(p) <= maxResizeMessage {
			t.resize = append(t.resize, p...)
		}
		return
	}
	if t.out != nil {
		t.out(t.ch, p)
	}
}

func (t *ChannelTap) end() {
	if t.ch == ChResize && t.resized != nil {
		var size struct{ Width, Height uint16 }
		if json.Unmarshal(t.resize, &size) == nil && size.Width > 0 && size.Height > 0 {
			t.resized(int(size.Width), int(size.Height))
		}
	}
	t.ch = -1
}

// TapConn is the user's side of an upgraded connection. Writes carry the
// cluster's bytes to the user; reads the user's to the cluster. When it
// follows a remote command WebSocket (down and up not nil), it feeds each
// direction to its tap, and EndWith can put an error message and a close
// frame between the cluster's messages.
type TapConn struct {
	net.Conn
	down, up *ChannelTap

	wmu   sync.Mutex // serialises writes to the user; guards ended
	ended bool       // ended: no more bytes to the user
}

// NewTapConn follows conn with down (what goes to the user) and up (what
// comes from them); nil taps follow nothing.
func NewTapConn(conn net.Conn, down, up *ChannelTap) *TapConn {
	return &TapConn{Conn: conn, down: down, up: up}
}

func (c *TapConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.ended {
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Write(b)
	if c.down != nil && n > 0 {
		c.down.Feed(b[:n])
	}
	return n, err
}

func (c *TapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.up != nil && n > 0 {
		c.up.Feed(b[:n])
	}
	return n, err
}

// EndWith tells the user why the session ends, as a Status on the error
// channel (what kubectl prints), when the WebSocket stands between
// messages, and lets no more of the cluster's bytes through. It does not
// close the connection.
func (c *TapConn) EndWith(reason string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	if c.down == nil || !c.down.AtBoundary() {
		return
	}
	msg := append([]byte{ChError}, kubestatus.JSON(http.StatusForbidden, reason)...)
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.Conn.Write(append(Frame(wsBinary, msg, nil), Frame(wsClose, []byte{0x03, 0xe8}, nil)...))
}
