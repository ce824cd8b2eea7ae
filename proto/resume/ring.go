package resume

import "slices"

// ring is a byte queue in a circular buffer. It grows by doubling as far as
// it must (the Conn bounds how far), and it lets go of a large buffer when it
// empties, so an idle session holds no memory.
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

// appendTo appends n bytes starting off bytes after the head to dst.
func (r *ring) appendTo(dst []byte, off, n int) []byte {
	l := len(dst)
	dst = slices.Grow(dst, n)[:l+n] // no zeroing: copyOut fills it
	r.copyOut(dst[l:], off, n)
	return dst
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
