package auditq

import (
	"github.com/fxamacker/cbor/v2"
)

// state is the queue's bookkeeping, kept under one key next to the events
// and rewritten in every transaction.
type state struct {
	// Gen counts transactions; salvage prefers the newest state it finds.
	Gen uint64 `cbor:"1,keyasint"`
	// Next is the sequence number the next event gets; Head the chain
	// hash of event Next-1.
	Next uint64 `cbor:"2,keyasint"`
	Head []byte `cbor:"3,keyasint,omitempty"`
	// Acked is the highest sequence number the fleet has confirmed.
	Acked uint64 `cbor:"4,keyasint,omitempty"`
	// Count and Bytes describe the events in the queue.
	Count uint64 `cbor:"5,keyasint,omitempty"`
	Bytes uint64 `cbor:"6,keyasint,omitempty"`
	// DroppedPending counts drops not yet reported by a marker event;
	// DroppedTotal every drop. DropReason, DropFirst and DropLast (Unix
	// milliseconds) describe the pending ones.
	DroppedPending uint64 `cbor:"7,keyasint,omitempty"`
	DroppedTotal   uint64 `cbor:"8,keyasint,omitempty"`
	DropReason     string `cbor:"9,keyasint,omitempty"`
	DropFirst      int64  `cbor:"10,keyasint,omitempty"`
	DropLast       int64  `cbor:"11,keyasint,omitempty"`
	// Damaged counts the times the file was found damaged.
	Damaged uint64 `cbor:"12,keyasint,omitempty"`
	// Based says the sequence numbers continue the fleet's chain for
	// Owner; a queue that is not (new, or rebuilt without its state) is
	// renumbered onto the fleet's head at the next sync.
	Based bool   `cbor:"13,keyasint,omitempty"`
	Owner string `cbor:"14,keyasint,omitempty"`
	// Salvaged is the highest sequence number salvaged from a damaged
	// file whose state was lost; such events at or below the fleet's head
	// were already delivered and are dropped at the next sync.
	Salvaged uint64 `cbor:"15,keyasint,omitempty"`
	// Attrs are small values the queue's user remembers (Remember).
	Attrs map[string]string `cbor:"16,keyasint,omitempty"`
}

var (
	stEnc cbor.EncMode
	stDec cbor.DecMode
)

func init() {
	var err error
	if stEnc, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	stDec, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   4,
		MaxArrayElements:  64,
		MaxMapPairs:       256,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

func (s *state) marshal() []byte {
	b, err := stEnc.Marshal(s)
	if err != nil {
		panic("auditq: encode state: " + err.Error()) // plain struct: cannot fail
	}
	return b
}

func unmarshalState(b []byte) (*state, error) {
	var s state
	if err := stDec.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// clone returns a deep copy of s.
func (s *state) clone() state {
	c := *s
	c.Head = append([]byte(nil), s.Head...)
	if s.Attrs != nil {
		c.Attrs = make(map[string]string, len(s.Attrs))
		for k, v := range s.Attrs {
			c.Attrs[k] = v
		}
	}
	return c
}
