package resume

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestRingAgainstSlice drives a ring and a plain slice with the same random
// operations and compares them.
func TestRingAgainstSlice(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var rg ring
	var model []byte
	next := byte(0)
	for i := range 20000 {
		switch op := r.IntN(4); {
		case op <= 1:
			p := make([]byte, r.IntN(9000))
			for j := range p {
				p[j] = next
				next++
			}
			rg.push(p)
			model = append(model, p...)
		case op == 2 && len(model) > 0:
			k := r.IntN(len(model) + 1)
			rg.drop(k)
			model = model[k:]
		default:
			p := make([]byte, r.IntN(9000))
			n := rg.read(p)
			if !bytes.Equal(p[:n], model[:n]) {
				t.Fatalf("op %d: read %d bytes differ", i, n)
			}
			model = model[n:]
		}
		if rg.Len() != len(model) {
			t.Fatalf("op %d: len %d, want %d", i, rg.Len(), len(model))
		}
		if len(model) > 0 {
			off := r.IntN(len(model))
			n := r.IntN(len(model) - off + 1)
			if a, b := rg.segments(off, n); !bytes.Equal(append(slices.Clip(a), b...), model[off:off+n]) {
				t.Fatalf("op %d: segments(%d, %d) differ", i, off, n)
			}
		}
	}
}

func TestRingKeepsItsBufferUntilReleased(t *testing.T) {
	var rg ring
	rg.push(make([]byte, 1<<20))
	rg.drop(1 << 20)
	if len(rg.buf) != 1<<20 {
		t.Errorf("an emptied ring keeps %d bytes, want its 1 MiB until released (a busy stream refills it)", len(rg.buf))
	}
	rg.push([]byte("x"))
	if rg.release(); rg.buf == nil {
		t.Error("release freed a ring that holds a byte")
	}
	rg.drop(1)
	if rg.release(); rg.buf != nil {
		t.Errorf("a released empty ring keeps %d bytes", len(rg.buf))
	}
}
