package auditq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"slices"

	"remoteler.dev/edge/proto"
)

// The queue reads a damaged file without bbolt, page by page, because bbolt
// trusts its file: a truncated one makes it read past the end of its
// memory map (a fatal fault, not a panic) and a corrupted one makes it
// panic. These constants are bbolt's file layout (version 2), which is
// fixed: pages start with a 16-byte header (id, flags, count, overflow);
// leaf pages hold 16-byte elements (flags, pos, ksize, vsize) whose key
// starts pos bytes after the element; meta pages hold the meta record.
// Integers are in the machine's byte order.
const (
	pageHeaderSize  = 16
	leafElementSize = 16
	leafPageFlag    = 0x02
	bucketLeafFlag  = 0x01
	metaMagic       = 0xED0CDAED
	metaVersion     = 2
	metaSize        = 64 // the meta record, checksum included
	freelistFlag    = 0x10
	noFreelist      = ^uint64(0) // a meta's free list id when none is kept
)

var native = binary.NativeEndian

// fileMeta is what checkFile learned from a file's meta pages.
type fileMeta struct {
	pageSize int
	freelist uint64 // the free list's page
	hwm      uint64 // high water mark: pages in use
	txid     uint64
}

// readMeta decodes the meta record at b (after a page header), or fails
// when its magic, version or checksum is wrong.
func readMeta(b []byte) (fileMeta, error) {
	if len(b) < metaSize {
		return fileMeta{}, errors.New("meta page cut short")
	}
	if native.Uint32(b[0:]) != metaMagic {
		return fileMeta{}, errors.New("bad magic")
	}
	if native.Uint32(b[4:]) != metaVersion {
		return fileMeta{}, errors.New("bad version")
	}
	h := fnv.New64a()
	h.Write(b[:56])
	if h.Sum64() != native.Uint64(b[56:]) {
		return fileMeta{}, errors.New("bad checksum")
	}
	m := fileMeta{pageSize: int(native.Uint32(b[8:])), freelist: native.Uint64(b[32:]), hwm: native.Uint64(b[40:]), txid: native.Uint64(b[48:])}
	if m.pageSize < 512 || m.pageSize > 1<<20 || m.pageSize&(m.pageSize-1) != 0 {
		return fileMeta{}, fmt.Errorf("bad page size %d", m.pageSize)
	}
	return m, nil
}

// checkFile reports whether the bbolt file at path is safe to open: a
// valid meta page whose pages all lie within the file. It reads only the
// first pages.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	head := make([]byte, 2*65536)
	n, _ := f.ReadAt(head, 0)
	head = head[:n]
	m0, err0 := readMeta(sub(head, pageHeaderSize, metaSize))
	best, err := m0, err0
	// The second meta page sits one page in; its size comes from the first
	// meta when that one is good, else try the usual sizes.
	sizes := []int{os.Getpagesize(), 4096, 16384, 65536}
	if err0 == nil {
		sizes = []int{m0.pageSize}
	}
	for _, ps := range sizes {
		m1, err1 := readMeta(sub(head, ps+pageHeaderSize, metaSize))
		if err1 == nil && (err != nil || m1.txid > best.txid) {
			best, err = m1, nil
		}
	}
	if err != nil {
		return fmt.Errorf("no valid meta page: %v", err0)
	}
	if need := int64(best.hwm) * int64(best.pageSize); fi.Size() < need {
		return fmt.Errorf("file is %d bytes, its meta says %d: truncated", fi.Size(), need)
	}
	return checkFreelist(f, best)
}

// checkFreelist reports whether the free list page that m names lies
// within the pages in use and holds the ids it says it does: bbolt reads
// it when it opens the file, and trusts its count (a count past the page
// makes it copy out of its memory map, or ask for more memory than there
// is: either is fatal).
func checkFreelist(f *os.File, m fileMeta) error {
	if m.freelist == noFreelist {
		return nil
	}
	if m.freelist < 2 || m.freelist >= m.hwm {
		return fmt.Errorf("free list page %d outside the %d pages in use", m.freelist, m.hwm)
	}
	off := int64(m.freelist) * int64(m.pageSize)
	hdr := make([]byte, pageHeaderSize+8)
	if _, err := f.ReadAt(hdr, off); err != nil {
		return fmt.Errorf("free list page %d: %v", m.freelist, err)
	}
	flags, count, overflow := native.Uint16(hdr[8:]), uint64(native.Uint16(hdr[10:])), uint64(native.Uint32(hdr[12:]))
	if flags&freelistFlag == 0 {
		return fmt.Errorf("page %d is not a free list (flags %#x)", m.freelist, flags)
	}
	if m.freelist+overflow >= m.hwm {
		return fmt.Errorf("free list page %d runs past the %d pages in use", m.freelist, m.hwm)
	}
	size := uint64(pageHeaderSize)
	if count == 0xFFFF { // the count is in the first id's place
		count = native.Uint64(hdr[pageHeaderSize:])
		size += 8
	}
	if room := (overflow + 1) * uint64(m.pageSize); count > (room-size)/8 {
		return fmt.Errorf("free list page %d says it holds %d ids, more than its %d bytes can", m.freelist, count, room)
	}
	return nil
}

// sub returns b[off:off+n], or nil when b is too short.
func sub(b []byte, off, n int) []byte {
	if off < 0 || n < 0 || off > len(b) || n > len(b)-off {
		return nil
	}
	return b[off : off+n]
}

// salvaged is what scan found in a damaged file.
type salvaged struct {
	events []*proto.AuditEvent // in sequence order, one per sequence number
	state  *state              // the newest state found, or nil
	// rejected counts events that decoded but do not chain to the
	// event before them: damaged.
	rejected int
}

// scan reads every leaf page it can find in data, the bytes of a bbolt
// file, and keeps the audit events (8-byte keys whose value decodes to an
// event of that sequence number) and the newest state record. It never
// trusts a length or offset it has not checked, so any bytes are safe.
func scan(data []byte) salvaged {
	ps := os.Getpagesize()
	if m, err := readMeta(sub(data, pageHeaderSize, metaSize)); err == nil {
		ps = m.pageSize
	}
	found := map[uint64][]*proto.AuditEvent{}
	var best *state
	visit := func(key, val []byte) {
		switch {
		case bytes.Equal(key, stateKey):
			if s, err := unmarshalState(val); err == nil && (best == nil || s.Gen > best.Gen) {
				best = s
			}
		case len(key) == 8:
			seq := binary.BigEndian.Uint64(key)
			e, err := proto.UnmarshalEvent(val)
			if err == nil && e.Seq == seq && seq != 0 {
				found[seq] = append(found[seq], e)
			}
		}
	}
	for off := 0; off+pageHeaderSize <= len(data); off += ps {
		scanPage(data[off:], ps, visit, 0)
	}
	out := salvaged{state: best}
	seqs := make([]uint64, 0, len(found))
	for s := range found {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	// Freed pages may hold older copies of a sequence number, and damage
	// may have changed an event so that it still decodes: where the event
	// before it was kept, keep only a copy that chains to it (a damaged
	// event is lost, and so is visible as a gap rather than as an edit).
	var prev []byte
	var prevSeq uint64
	for _, s := range seqs {
		cands := found[s]
		pick := cands[0]
		if prevSeq == s-1 {
			pick = nil
			for _, c := range cands {
				if h, err := proto.ChainHash(prev, c); err == nil && bytes.Equal(h, c.Hash) {
					pick = c
					break
				}
			}
			if pick == nil {
				out.rejected++
				continue
			}
		}
		out.events = append(out.events, pick)
		prev, prevSeq = pick.Hash, s
	}
	return out
}

// scanPage visits the key/value pairs of the leaf page at the start of b
// (pages are ps bytes, overflow pages included in its span), descending
// into inline buckets up to a small depth.
func scanPage(b []byte, ps int, visit func(k, v []byte), depth int) {
	if len(b) < pageHeaderSize || depth > 2 {
		return
	}
	flags := native.Uint16(b[8:])
	count := int(native.Uint16(b[10:]))
	overflow := int(native.Uint32(b[12:]))
	if flags != leafPageFlag || count == 0 {
		return
	}
	span := len(b)
	if depth == 0 {
		if overflow < 0 || overflow > len(b)/ps {
			return
		}
		span = min(len(b), (overflow+1)*ps)
	}
	page := b[:span]
	for i := range count {
		eoff := pageHeaderSize + i*leafElementSize
		el := sub(page, eoff, leafElementSize)
		if el == nil {
			return
		}
		eflags := native.Uint32(el[0:])
		pos, ksize, vsize := int(native.Uint32(el[4:])), int(native.Uint32(el[8:])), int(native.Uint32(el[12:]))
		key := sub(page, eoff+pos, ksize)
		if key == nil || pos < 0 || ksize < 0 || vsize < 0 {
			continue
		}
		val := sub(page, eoff+pos+ksize, vsize)
		if val == nil {
			continue
		}
		if eflags&bucketLeafFlag != 0 {
			// A bucket: 16 bytes of header (root page, sequence), then,
			// for an inline bucket (root 0), its one page.
			if len(val) > 16 && native.Uint64(val) == 0 {
				scanPage(val[16:], ps, visit, depth+1)
			}
			continue
		}
		visit(key, val)
	}
}
