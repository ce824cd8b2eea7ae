// Command otabench measures OTA deltas of real agent binaries (the
// benchmark in docs/benchmarks.md):
//
//	otabench make OLD NEW DELTA   make the zstd delta (proto/ota) from OLD to NEW; print sizes and time
//	otabench apply OLD DELTA OUT  apply it (run under /usr/bin/time -v, natively or under qemu, for peak memory)
//	otabench rollout DEVICES      time a rollout to DEVICES simulated devices on a real fleetd
//
// It is a developer tool; product code does not import it.
package main

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"remoteler.dev/edge/proto/ota"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "rollout" {
		if err := rolloutCmd(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "otabench:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: otabench make OLD NEW DELTA | otabench apply OLD DELTA OUT | otabench rollout DEVICES")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3], os.Args[4]); err != nil {
		fmt.Fprintln(os.Stderr, "otabench:", err)
		os.Exit(1)
	}
}

func run(cmd, a, b, c string) error {
	old, err := os.ReadFile(a)
	if err != nil {
		return err
	}
	switch cmd {
	case "make":
		nw, err := os.ReadFile(b)
		if err != nil {
			return err
		}
		start := time.Now()
		d, err := ota.MakeDelta(old, nw)
		if err != nil {
			return err
		}
		took := time.Since(start)
		fmt.Printf("full %d bytes, zstd delta %d bytes (%.2f%% of full), made in %s\n", len(nw), len(d), float64(len(d))*100/float64(len(nw)), took.Round(time.Millisecond))
		return os.WriteFile(c, d, 0o644)
	case "apply":
		d, err := os.ReadFile(b)
		if err != nil {
			return err
		}
		start := time.Now()
		var out bytes.Buffer
		if err := ota.ApplyDelta(old, &out, bytes.NewReader(d), ota.MaxBinary); err != nil {
			return err
		}
		fmt.Printf("applied %d-byte delta to %d bytes in %s\n", len(d), out.Len(), time.Since(start).Round(time.Millisecond))
		return os.WriteFile(c, out.Bytes(), 0o644)
	}
	return fmt.Errorf("unknown command %q", cmd)
}
