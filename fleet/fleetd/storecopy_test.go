package fleetd

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/fleet/store/storetest"
	"remoteler.dev/edge/tools/etcdcluster"
)

// runStore runs fleetd store with args (after "store") and returns its
// exit code and output.
func runStore(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := StoreMain(t.Context(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// boltFleet writes items into DIR/fleet.db, as a fleetd's data dir.
func boltFleet(t *testing.T, dir string, kv ...string) {
	t.Helper()
	s, err := boltstore.Open(filepath.Join(dir, "fleet.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := 0; i < len(kv); i += 2 {
		if err := s.Put(t.Context(), kv[i], []byte(kv[i+1])); err != nil {
			t.Fatal(err)
		}
	}
}

func boltDump(t *testing.T, path string) string {
	t.Helper()
	s, err := boltstore.Open(path, boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return storetest.Dump(t, s)
}

// TestStoreCopy migrates a bbolt data dir to a real etcd (TLS, client
// certificate) and back: the copy refuses a non-empty destination unless
// told, prints progress and counts, and the round trip is exact.
func TestStoreCopy(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 1, TLS: true})
	etcdURL := c.StoreURL("migrated")
	toTLS := []string{"--to-ca", c.CAFile, "--to-cert", c.CertFile, "--to-key", c.KeyFile}
	fromTLS := []string{"--from-ca", c.CAFile, "--from-cert", c.CertFile, "--from-key", c.KeyFile}

	old := t.TempDir()
	kv := []string{"ca/x509", "ca-json", "users/alice", "alice-json", "users/bob", "bob-json", "roles/access", "role", "fleet/quic-keys", "keys"}
	for i := range 250 {
		kv = append(kv, fmt.Sprintf("devices/%03d", i), fmt.Sprintf("device %d", i))
	}
	boltFleet(t, old, kv...)
	want := boltDump(t, filepath.Join(old, "fleet.db"))

	code, out, errOut := runStore(t, append([]string{"copy", "--data-dir", old, "--from", "bolt", "--to", etcdURL}, toTLS...)...)
	if code != 0 {
		t.Fatalf("copy to etcd: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("%s", out)
	for _, w := range []string{"Copying bbolt " + filepath.Join(old, "fleet.db"), "into etcd " + c.Endpoints()[0] + " prefix /migrated/ (TLS)",
		"100/255 items", "255/255 items", "Copied 255 items (ca 1, devices 250, fleet 1, roles 1, users 2).", "Checked"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}

	t.Run("refuses a non-empty destination", func(t *testing.T) {
		code, out, errOut := runStore(t, append([]string{"copy", "--from", old, "--to", etcdURL}, toTLS...)...)
		if code != 1 || !strings.Contains(errOut, "not empty") || !strings.Contains(errOut, "holds 255 items") || !strings.Contains(errOut, "--overwrite") {
			t.Errorf("exit %d, stderr %q; want 1 and a refusal naming the count and --overwrite\n%s", code, errOut, out)
		}
	})

	t.Run("and back", func(t *testing.T) {
		back := t.TempDir()
		code, out, errOut := runStore(t, append([]string{"copy", "--from", etcdURL, "--to", back}, fromTLS...)...)
		if code != 0 {
			t.Fatalf("copy back: exit %d\n%s%s", code, out, errOut)
		}
		if got := boltDump(t, filepath.Join(back, "fleet.db")); got != want {
			t.Errorf("after the round trip:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("overwrite an older copy", func(t *testing.T) {
		stale := t.TempDir()
		boltFleet(t, stale, "users/alice", "old", "users/mallory", "removed since")
		code, out, errOut := runStore(t, append([]string{"copy", "--from", etcdURL, "--to", stale, "--overwrite"}, fromTLS...)...)
		if code != 0 {
			t.Fatalf("exit %d\n%s%s", code, out, errOut)
		}
		if !strings.Contains(out, "Deleted 1 items") {
			t.Errorf("output does not say it deleted mallory:\n%s", out)
		}
		if got := boltDump(t, filepath.Join(stale, "fleet.db")); got != want {
			t.Errorf("after overwriting:\n%s\nwant:\n%s", got, want)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		inUse := t.TempDir()
		running, err := boltstore.Open(filepath.Join(inUse, "fleet.db"), boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer running.Close()
		tests := []struct {
			name string
			args []string
			code int
			want string
		}{
			{"no --to", []string{"copy", "--from", old}, 2, "--from and --to are required"},
			{"missing source", []string{"copy", "--from", filepath.Join(t.TempDir(), "none"), "--to", t.TempDir()}, 1, "no such file"},
			{"same store", []string{"copy", "--from", old, "--to", filepath.Join(old, "fleet.db")}, 1, "the same store"},
			{"bad etcd URL", []string{"copy", "--from", old, "--to", "etcd://nohost/x"}, 1, "not HOST:PORT"},
			{"source in use", []string{"copy", "--from", inUse, "--to", t.TempDir()}, 1, "in use by another fleetd"},
			{"TLS for bbolt", []string{"copy", "--from", old, "--to", t.TempDir(), "--to-ca", c.CAFile}, 1, "TLS files are for etcd"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, out, errOut := runStore(t, tt.args...)
				if code != tt.code || !strings.Contains(errOut, tt.want) {
					t.Errorf("exit %d, stderr %q; want %d and %q\n%s", code, errOut, tt.code, tt.want, out)
				}
			})
		}
	})
}
