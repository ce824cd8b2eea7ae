package auditexport

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Version is the export format's version (the header's "version").
const Version = 1

// Line kinds.
const (
	KindHeader     = "header"
	KindCheckpoint = "checkpoint"
	KindEvent      = "event"
	// KindEnd is the last line: an export without it was cut short.
	KindEnd = "end"
)

// End is an export's last line.
type End struct {
	Checkpoints uint64 `json:"checkpoints"`
	Events      uint64 `json:"events"`
}

// Source is one chain as the header describes it.
type Source struct {
	Source string `json:"source"`
	// AnchorSeq and AnchorHash are the last pruned event: the chain's
	// events in the export continue from it.
	AnchorSeq  uint64 `json:"anchor_seq,omitempty"`
	AnchorHash []byte `json:"anchor_hash,omitempty"`
}

// Header is an export's first line.
type Header struct {
	Version  int       `json:"version"`
	Cluster  string    `json:"cluster"`
	Exported time.Time `json:"exported"`
	// Key is the checkpoint key (KeyString).
	Key     string   `json:"key"`
	Sources []Source `json:"sources"`
	// CheckpointsOnly says the export holds no events.
	CheckpointsOnly bool `json:"checkpoints_only,omitempty"`
}

// Line is one line of an export. Kind says which fields are set.
type Line struct {
	Kind   string  `json:"kind"`
	Header *Header `json:"header,omitempty"`
	// Checkpoint is a checkpoint's encoding (base64 in JSON).
	Checkpoint []byte `json:"checkpoint,omitempty"`
	// Source, Seq and Event (an event's canonical CBOR, from which its
	// hash is recomputed) for an event; Readable is the same event as
	// JSON, for people and tools (it is not checked).
	Source   string          `json:"source,omitempty"`
	Seq      uint64          `json:"seq,omitempty"`
	Event    []byte          `json:"event,omitempty"`
	Readable json.RawMessage `json:"readable,omitempty"`
	End      *End            `json:"end,omitempty"`
}

// maxLine bounds one line of an export: a checkpoint at its largest, in
// base64, with room.
const maxLine = MaxCheckpoint*4/3 + 4096

// Writer writes an export: WriteHeader, then checkpoints, then events,
// then Close.
type Writer struct {
	w   *bufio.Writer
	enc *json.Encoder
	end End
}

// NewWriter returns a writer to w; call Flush at the end.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriterSize(w, 64<<10)
	return &Writer{w: bw, enc: json.NewEncoder(bw)}
}

// WriteHeader writes the header line.
func (w *Writer) WriteHeader(h *Header) error {
	return w.enc.Encode(&Line{Kind: KindHeader, Header: h})
}

// WriteCheckpoint writes a checkpoint line.
func (w *Writer) WriteCheckpoint(c *Checkpoint) error {
	w.end.Checkpoints++
	return w.enc.Encode(&Line{Kind: KindCheckpoint, Checkpoint: c.Encode()})
}

// WriteEvent writes an event line: raw is the event as stored (its
// canonical CBOR, proto.MarshalEvent), readable its JSON form.
func (w *Writer) WriteEvent(source string, seq uint64, raw []byte, readable *api.AuditEvent) error {
	l := &Line{Kind: KindEvent, Source: source, Seq: seq, Event: raw}
	if readable != nil {
		b, err := json.Marshal(readable)
		if err != nil {
			return err
		}
		l.Readable = b
	}
	w.end.Events++
	return w.enc.Encode(l)
}

// Close writes the end line and flushes.
func (w *Writer) Close() error {
	end := w.end
	if err := w.enc.Encode(&Line{Kind: KindEnd, End: &end}); err != nil {
		return err
	}
	return w.w.Flush()
}

// Reader reads an export line by line.
type Reader struct {
	sc   *bufio.Scanner
	line int
}

// NewReader returns a reader of the export in r.
func NewReader(r io.Reader) *Reader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	return &Reader{sc: sc}
}

// Next returns the next line, checked: a known kind with the fields it
// needs and no others. It returns io.EOF at the end.
func (r *Reader) Next() (*Line, error) {
	for r.sc.Scan() {
		r.line++
		b := bytes.TrimSpace(r.sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var l Line
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			return nil, fmt.Errorf("auditexport: line %d: %w", r.line, err)
		}
		if dec.More() {
			return nil, fmt.Errorf("auditexport: line %d: trailing data", r.line)
		}
		if err := l.check(); err != nil {
			return nil, fmt.Errorf("auditexport: line %d: %w", r.line, err)
		}
		return &l, nil
	}
	if err := r.sc.Err(); err != nil {
		return nil, fmt.Errorf("auditexport: line %d: %w", r.line+1, err)
	}
	return nil, io.EOF
}

func (l *Line) check() error {
	hasEvent := l.Source != "" || l.Seq != 0 || l.Event != nil || l.Readable != nil
	if l.End != nil && l.Kind != KindEnd {
		return errors.New("only the end line says where the export ends")
	}
	switch l.Kind {
	case KindEnd:
		if l.End == nil || l.Header != nil || l.Checkpoint != nil || hasEvent {
			return errors.New("an end line holds the counts only")
		}
	case KindHeader:
		if l.Header == nil || l.Checkpoint != nil || hasEvent {
			return errors.New("a header line holds a header only")
		}
		if l.Header.Version != Version {
			return fmt.Errorf("export format version %d; this fleetctl reads %d", l.Header.Version, Version)
		}
	case KindCheckpoint:
		if l.Checkpoint == nil || l.Header != nil || hasEvent {
			return errors.New("a checkpoint line holds a checkpoint only")
		}
	case KindEvent:
		if l.Source == "" || l.Seq == 0 || l.Event == nil || l.Header != nil || l.Checkpoint != nil {
			return errors.New("an event line needs a source, a sequence number and the event")
		}
	default:
		return fmt.Errorf("unknown line kind %q", l.Kind)
	}
	return nil
}

// Chain is what checking found of one source's chain in an export.
type Chain struct {
	Source        string   `json:"source"`
	Events        uint64   `json:"events"`
	First         uint64   `json:"first,omitempty"`
	Last          uint64   `json:"last,omitempty"`
	Problems      []string `json:"problems,omitempty"`
	OK            bool     `json:"ok"`
	prev          []byte
	next          uint64
	anchorSeq     uint64
	anchorHash    []byte
	problemsTrunc bool
}

func (c *Chain) problem(format string, args ...any) {
	const most = 20
	switch {
	case len(c.Problems) < most:
		c.Problems = append(c.Problems, fmt.Sprintf(format, args...))
	case !c.problemsTrunc:
		c.problemsTrunc = true
		c.Problems = append(c.Problems, "more problems not listed")
	}
}

// Report is the result of Verify.
type Report struct {
	OK      bool   `json:"ok"`
	Cluster string `json:"cluster"`
	Key     string `json:"key"`
	// Checkpoints counts the export's checkpoints (and Earlier those of
	// the earlier export it was checked against); LastCheckpoint is when
	// the newest was signed.
	Checkpoints    int       `json:"checkpoints"`
	Earlier        int       `json:"earlier_checkpoints,omitempty"`
	LastCheckpoint time.Time `json:"last_checkpoint,omitzero"`
	// Problems are the checkpoints' own (signatures, gaps, another key).
	Problems []string `json:"problems,omitempty"`
	Chains   []Chain  `json:"chains"`
}

// Options adjust Verify.
type Options struct {
	// Key, when set, is the checkpoint key the export must be signed with
	// (pinned by the admin); otherwise the header's key is used.
	Key ed25519.PublicKey
	// Earlier are checkpoints from an earlier export (ReadCheckpoints): the
	// chains must still hold what they signed.
	Earlier []*Checkpoint
}

// Verify reads an export and checks it: every chain's events are numbered
// without gaps from its anchor and each hash chains to the one before; the
// checkpoints are signed, numbered and linked; and every event a
// checkpoint (the export's, or an earlier one's) names is there with the
// hash it signed. It returns an error only for an export it cannot read.
func Verify(r io.Reader, opts Options) (*Report, error) {
	rd := NewReader(r)
	first, err := rd.Next()
	if err != nil {
		return nil, fmt.Errorf("auditexport: verify: %w", err)
	}
	if first.Kind != KindHeader {
		return nil, errors.New("auditexport: verify: the export does not start with its header")
	}
	h := first.Header
	rep := &Report{Cluster: h.Cluster, Key: h.Key}
	pub, err := ParseKey(h.Key)
	if err != nil {
		return nil, fmt.Errorf("auditexport: verify: header: %w", err)
	}
	if opts.Key != nil && !pub.Equal(opts.Key) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("the export is signed with %s, not the pinned %s: the fleet's checkpoint key was replaced", h.Key, KeyString(opts.Key)))
		pub = opts.Key
	}
	chains := map[string]*Chain{}
	for _, s := range h.Sources {
		if chains[s.Source] != nil {
			return nil, fmt.Errorf("auditexport: verify: header names source %q twice", s.Source)
		}
		chains[s.Source] = &Chain{Source: s.Source, anchorSeq: s.AnchorSeq, anchorHash: s.AnchorHash, next: s.AnchorSeq + 1, prev: s.AnchorHash}
	}
	var cps []*Checkpoint
	var pending, end *Line
	for {
		l, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("auditexport: verify: %w", err)
		}
		if l.Kind == KindHeader {
			return nil, errors.New("auditexport: verify: a second header")
		}
		if l.Kind == KindEnd {
			end = l
			break
		}
		if l.Kind == KindEvent {
			pending = l
			break
		}
		c, err := DecodeCheckpoint(l.Checkpoint)
		if err != nil {
			return nil, fmt.Errorf("auditexport: verify: %w", err)
		}
		cps = append(cps, c)
	}
	rep.Checkpoints, rep.Earlier = len(cps), len(opts.Earlier)
	if len(cps) > 0 {
		rep.LastCheckpoint = time.UnixMilli(cps[len(cps)-1].Time).UTC()
	}
	// The newest signed head of each chain is enough to check it: a
	// rewrite changes every hash after the edit. An earlier export's newest
	// heads are checked too (the export's own may have been re-signed).
	expect, problems := CheckChain(cps, pub)
	rep.Problems = append(rep.Problems, problems...)
	expect = expect.Latest()
	if len(opts.Earlier) > 0 {
		earlier, problems := CheckChain(opts.Earlier, pub)
		for _, p := range problems {
			rep.Problems = append(rep.Problems, "earlier export: "+p)
		}
		for src, m := range earlier.Latest() {
			for seq, w := range m {
				expect.Add(w.Checkpoint, []Head{{Source: src, Seq: seq, Hash: w.Hash}})
			}
		}
		if len(cps) > 0 && len(opts.Earlier) > 0 {
			last, cur := opts.Earlier[len(opts.Earlier)-1], cps[len(cps)-1]
			if cur.N < last.N {
				rep.Problems = append(rep.Problems, fmt.Sprintf("the export's checkpoints end at %d, before the earlier export's %d: checkpoints were removed", cur.N, last.N))
			}
		}
	}
	// Events, source by source in sequence order.
	var events uint64
	for l := pending; l != nil; {
		if l.Kind == KindEnd {
			end = l
			break
		}
		if l.Kind != KindEvent {
			return nil, errors.New("auditexport: verify: a checkpoint after the events")
		}
		events++
		c := chains[l.Source]
		if c == nil {
			c = &Chain{Source: l.Source, next: 1}
			chains[l.Source] = c
			c.problem("the header does not list this source")
		}
		c.event(l, expect[l.Source])
		next, err := rd.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("auditexport: verify: %w", err)
		}
		l = next
	}
	switch {
	case end == nil:
		rep.Problems = append(rep.Problems, "the export has no end line: it was cut short")
	case end.End.Events != events || end.End.Checkpoints != uint64(len(cps)):
		rep.Problems = append(rep.Problems, fmt.Sprintf("the export says it holds %d checkpoints and %d events, but holds %d and %d",
			end.End.Checkpoints, end.End.Events, len(cps), events))
	default:
		if _, err := rd.Next(); err != io.EOF {
			rep.Problems = append(rep.Problems, "lines after the end line")
		}
	}
	rep.OK = len(rep.Problems) == 0
	names := make([]string, 0, len(chains))
	for s := range chains {
		names = append(names, s)
	}
	for s := range expect {
		if chains[s] == nil {
			chains[s] = &Chain{Source: s, next: 1}
			names = append(names, s)
		}
	}
	slices.Sort(names)
	for _, s := range names {
		c := chains[s]
		if !h.CheckpointsOnly {
			for seq, w := range expect[s] {
				if seq >= c.next || seq <= c.anchorSeq {
					if p := Check(s, seq, w, nil, c.anchorSeq, c.anchorHash); p != "" {
						c.problem("%s", p)
					}
				}
			}
		}
		slices.Sort(c.Problems)
		c.OK = len(c.Problems) == 0
		rep.OK = rep.OK && c.OK
		rep.Chains = append(rep.Chains, *c)
	}
	return rep, nil
}

// event checks one event line against the chain so far and the
// checkpoints' expectations.
func (c *Chain) event(l *Line, want map[uint64]Want) {
	e, err := proto.UnmarshalEvent(l.Event)
	if err != nil {
		c.problem("event %d is unreadable: %v", l.Seq, err)
		c.prev, c.next = nil, l.Seq+1
		return
	}
	c.Events++
	if c.First == 0 {
		c.First = l.Seq
	}
	switch {
	case l.Seq < c.next:
		c.problem("event %d comes after %d: out of order or twice", l.Seq, c.next-1)
		return
	case l.Seq > c.next:
		c.problem("events %d to %d are missing", c.next, l.Seq-1)
		c.prev = nil
	}
	c.Last, c.next = l.Seq, l.Seq+1
	if e.Seq != l.Seq {
		c.problem("event %d says it is %d", l.Seq, e.Seq)
	}
	if c.prev != nil || l.Seq == 1 {
		if h, err := proto.ChainHash(c.prev, e); err != nil || !bytes.Equal(h, e.Hash) {
			c.problem("event %d was altered, or the chain broke before it (hash mismatch)", l.Seq)
		}
	}
	c.prev = e.Hash
	if w, ok := want[l.Seq]; ok {
		if p := Check(c.Source, l.Seq, w, e.Hash, c.anchorSeq, c.anchorHash); p != "" {
			c.problem("%s", p)
		}
	}
}

// ReadCheckpoints reads the checkpoints of an export (an earlier one, to
// check a newer export against), and its key.
func ReadCheckpoints(r io.Reader) ([]*Checkpoint, ed25519.PublicKey, error) {
	rd := NewReader(r)
	first, err := rd.Next()
	if err != nil {
		return nil, nil, fmt.Errorf("auditexport: read checkpoints: %w", err)
	}
	if first.Kind != KindHeader {
		return nil, nil, errors.New("auditexport: read checkpoints: the export does not start with its header")
	}
	pub, err := ParseKey(first.Header.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("auditexport: read checkpoints: %w", err)
	}
	var cps []*Checkpoint
	for {
		l, err := rd.Next()
		if err == io.EOF || (err == nil && (l.Kind == KindEvent || l.Kind == KindEnd)) {
			return cps, pub, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("auditexport: read checkpoints: %w", err)
		}
		if l.Kind != KindCheckpoint {
			return nil, nil, errors.New("auditexport: read checkpoints: a second header")
		}
		c, err := DecodeCheckpoint(l.Checkpoint)
		if err != nil {
			return nil, nil, fmt.Errorf("auditexport: read checkpoints: %w", err)
		}
		cps = append(cps, c)
	}
}
