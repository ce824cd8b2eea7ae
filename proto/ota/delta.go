package ota

import (
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Deltas.
//
// A delta turns one agent binary into another: a zstd frame of the new
// binary compressed with the old binary as a raw dictionary
// (github.com/klauspost/compress/zstd), so that what the two share costs
// a few bytes a match. Applying one needs the old binary in memory and
// writes the new one; the result is then checked against the signed
// manifest like a full download.

// MaxBinary bounds the binaries deltas are made from and applied to.
const MaxBinary = 256 << 20

// deltaDictID is the dictionary ID deltas are made with; raw
// dictionaries have no ID of their own.
const deltaDictID = 0x6f7461 // "ota"

// MakeDelta returns the delta from old to new.
func MakeDelta(old, new []byte) ([]byte, error) {
	if len(old) > MaxBinary || len(new) > MaxBinary {
		return nil, errors.New("ota: make delta: binary too large")
	}
	window := zstd.MaxWindowSize
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedBestCompression),
		zstd.WithEncoderDictRaw(deltaDictID, old),
		zstd.WithWindowSize(window),
		zstd.WithEncoderConcurrency(1),
		zstd.WithEncoderCRC(true))
	if err != nil {
		return nil, fmt.Errorf("ota: make delta: %w", err)
	}
	defer enc.Close()
	return enc.EncodeAll(new, nil), nil
}

// ApplyDelta reads a delta from patch, applies it to old and writes the
// result to w, at most max bytes of it.
func ApplyDelta(old []byte, w io.Writer, patch io.Reader, max int64) error {
	dec, err := zstd.NewReader(patch,
		zstd.WithDecoderDictRaw(deltaDictID, old),
		zstd.WithDecoderMaxWindow(zstd.MaxWindowSize),
		zstd.WithDecoderMaxMemory(uint64(max)),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true))
	if err != nil {
		return fmt.Errorf("ota: apply delta: %w", err)
	}
	defer dec.Close()
	n, err := io.Copy(w, io.LimitReader(dec, max+1))
	if err != nil {
		return fmt.Errorf("ota: apply delta: %w", err)
	}
	if n > max {
		return fmt.Errorf("ota: apply delta: the result is larger than %d bytes", max)
	}
	return nil
}

// Patcher applies deltas for github.com/minio/selfupdate (its Patcher
// interface): old is the running binary, patch the delta.
type Patcher struct {
	// Max bounds the result; default the manifest's size is not known
	// here, so MaxBinary.
	Max int64
}

// Patch implements selfupdate.Patcher.
func (p Patcher) Patch(old io.Reader, new io.Writer, patch io.Reader) error {
	var ob bytes.Buffer
	if _, err := io.Copy(&ob, io.LimitReader(old, MaxBinary+1)); err != nil {
		return fmt.Errorf("ota: read the running binary: %w", err)
	}
	if ob.Len() > MaxBinary {
		return errors.New("ota: the running binary is too large for a delta")
	}
	max := p.Max
	if max <= 0 {
		max = MaxBinary
	}
	return ApplyDelta(ob.Bytes(), new, patch, max)
}
