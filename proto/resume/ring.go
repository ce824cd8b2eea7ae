package resume

// ring is a byte queue in a circular buffer. It grows by doubling as far as
// it must (the Conn bounds how far), and it lets go of a large buffer when
// released empty (the Conn does so a second after it empties), so an idle
// session holds no more than keepEmpty a ring.
type ring struct {
	buf  []byte
	head int // index of the first byte
	n    int // bytes held
}

// keepEmpty is the largest buffer an empty ring keeps when released.
const keepEmpty = 64 << 10

func (r *ring) Len() int { return r.n }

// push appends p, growing the buffer if it must.
func (r *ring) push(p []byte) {
	if r.n+len(p) > len(r.buf) {
		size := max(4<<10, 2*len(r.buf))
		for size < r.n+len(p) {
			size *= 2
		}
		nb := make([]byte, size)
		r.copyOut(nb, 0, r.n)
		r.buf, r.head = nb, 0
	}
	tail := (r.head + r.n) % len(r.buf)
	k := copy(r.buf[tail:], p)
	copy(r.buf, p[k:])
	r.n += len(p)
}

// copyOut copies n bytes starting off bytes after the head into dst.
func (r *ring) copyOut(dst []byte, off, n int) {
	if n == 0 {
		return
	}
	start := (r.head + off) % len(r.buf)
	k := copy(dst[:n], r.buf[start:])
	copy(dst[k:n], r.buf)
}

// segments returns the n bytes starting off bytes after the head as up to
// two slices of the buffer itself (the second empty unless they wrap).
// They stay valid while those bytes are held: push writes only past them,
// and a buffer that grows is copied, not overwritten.
func (r *ring) segments(off, n int) (a, b []byte) {
	if n == 0 {
		return nil, nil
	}
	start := (r.head + off) % len(r.buf)
	if end := start + n; end <= len(r.buf) {
		return r.buf[start:end], nil
	}
	return r.buf[start:], r.buf[:n-(len(r.buf)-start)]
}

// drop discards the first k bytes.
func (r *ring) drop(k int) {
	if k == 0 {
		return
	}
	r.head = (r.head + k) % len(r.buf)
	r.n -= k
	if r.n == 0 {
		r.head = 0
	}
}

// big says whether the ring is empty with a buffer release would free.
func (r *ring) big() bool { return r.n == 0 && len(r.buf) > keepEmpty }

// release frees the buffer of an empty ring, if it is large. A bulk stream
// empties its rings and fills them again all the time: freeing at once, as
// they empty, had it allocate (and the collector clear) megabytes a
// second.
func (r *ring) release() {
	if r.big() {
		r.buf = nil
	}
}

// read moves up to len(p) bytes into p.
func (r *ring) read(p []byte) int {
	k := min(len(p), r.n)
	r.copyOut(p, 0, k)
	r.drop(k)
	return k
}

// reset empties the ring and frees its buffer.
func (r *ring) reset() { *r = ring{} }
