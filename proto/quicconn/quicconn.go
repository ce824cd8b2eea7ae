// Package quicconn adapts a QUIC stream to net.Conn, so that SSH and other
// byte-stream protocols run over the tunnel's streams unchanged. Both edge-agent
// and fleetd import it; it imports neither.
package quicconn

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Conn is a QUIC stream seen as a net.Conn. Reads come first from the
// buffered reader that was used to parse the stream's header frame, so no
// byte the peer sent after the header is lost.
type Conn struct {
	st     *quic.Stream
	r      io.Reader
	local  net.Addr
	remote net.Addr
	once   sync.Once
}

// New wraps st, a stream of qc. r, when not nil, is a reader that wraps st and
// may hold buffered bytes; reads go through it.
func New(qc *quic.Conn, st *quic.Stream, r io.Reader) *Conn {
	if r == nil {
		r = st
	}
	return &Conn{st: st, r: r, local: qc.LocalAddr(), remote: qc.RemoteAddr()}
}

func (c *Conn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.st.Write(p) }

// CloseWrite closes the sending side only: the peer reads EOF after the
// bytes already written.
func (c *Conn) CloseWrite() error { return c.st.Close() }

// Close closes both directions. Bytes already written are still delivered.
func (c *Conn) Close() error {
	var err error
	c.once.Do(func() {
		err = c.st.Close()
		c.st.CancelRead(0)
	})
	return err
}

// Abort drops the stream at once in both directions, waking blocked reads
// and writes; unsent bytes are discarded.
func (c *Conn) Abort() {
	c.st.CancelWrite(0)
	c.st.CancelRead(0)
}

// LocalAddr returns the local address of the QUIC connection.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the remote address of the QUIC connection.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Stream returns the underlying QUIC stream.
func (c *Conn) Stream() *quic.Stream { return c.st }

// SetDeadline sets the read and write deadlines of the stream.
func (c *Conn) SetDeadline(t time.Time) error { return c.st.SetDeadline(t) }

// SetReadDeadline sets the stream's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.st.SetReadDeadline(t) }

// SetWriteDeadline sets the stream's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.st.SetWriteDeadline(t) }
