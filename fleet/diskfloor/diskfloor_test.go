package diskfloor

import (
	"errors"
	"testing"
)

func TestCheck(t *testing.T) {
	var free uint64 = 100 << 20
	f := &Floor{Dir: t.TempDir(), Min: func() int64 { return 64 << 20 },
		Free: func(string) (uint64, uint64, error) { return free, 1 << 30, nil }}
	if err := f.Check(); err != nil {
		t.Fatalf("100 MiB free over a 64 MiB floor: %v", err)
	}
	free = 10 << 20
	if err := f.Check(); !errors.Is(err, ErrLow) || err.Error() != "diskfloor: the fleet's disk is nearly full: 10 MiB free, the floor is 64 MiB" {
		t.Errorf("10 MiB free: %v", err)
	}
	f.Min = func() int64 { return 0 }
	if err := f.Check(); err != nil {
		t.Errorf("no floor: %v", err)
	}
	var none *Floor
	if err := none.Check(); err != nil {
		t.Errorf("nil floor: %v", err)
	}
}

func TestSpaceOfARealDir(t *testing.T) {
	free, total, err := (&Floor{Dir: t.TempDir()}).Space()
	if err != nil || total == 0 || free > total {
		t.Errorf("Space = %d of %d, %v", free, total, err)
	}
}
