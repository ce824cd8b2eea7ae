package harness

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

// WritePayload writes size random bytes to path, for a copy to carry, and
// returns their SHA-256.
func WritePayload(path string, size int64) ([32]byte, error) {
	f, err := os.Create(path)
	if err != nil {
		return [32]byte{}, fmt.Errorf("write payload: %w", err)
	}
	h := sha256.New()
	_, err = io.CopyN(io.MultiWriter(f, h), rand.Reader, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return [32]byte{}, fmt.Errorf("write payload: %w", err)
	}
	return [32]byte(h.Sum(nil)), nil
}

// CheckFile checks that path holds size bytes and, when sum is not nil,
// that their SHA-256 is *sum: that a copy arrived whole.
func CheckFile(path string, size int64, sum *[32]byte) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("check copy: %w", err)
	}
	if st.Size() != size {
		return fmt.Errorf("check copy: %s has %d bytes, want %d", path, st.Size(), size)
	}
	if sum == nil {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("check copy: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("check copy: %w", err)
	}
	if !bytes.Equal(h.Sum(nil), sum[:]) {
		return fmt.Errorf("check copy: %s differs from the payload", path)
	}
	return nil
}
