package etcdstore_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/etcdstore"
	"remoteler.dev/edge/fleet/store/storetest"
	"remoteler.dev/edge/tools/etcdcluster"
	"remoteler.dev/edge/tools/logtest"
)

const testQueue = 64

// tWriter writes log lines to t.Log.
// randomPrefix gives each store of a test its own part of the cluster.
func randomPrefix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "/test-" + hex.EncodeToString(b) + "/"
}

// open opens a store on c under prefix; the test closes it.
func open(t testing.TB, c *etcdcluster.Cluster, prefix string) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.Open(t.Context(), etcdstore.Config{
		Endpoints: c.Endpoints(), Prefix: prefix, TLS: c.ClientTLS(t), WatchQueue: testQueue, Logger: logtest.Logger(t),
	})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

// harness runs the contract suite on c: every store under its own prefix,
// peers as second clients on the same prefix, history forgotten by
// compacting the cluster.
func harness(c *etcdcluster.Cluster) storetest.Harness {
	return storetest.Harness{
		New: func(t *testing.T) store.Store { return open(t, c, randomPrefix()) },
		Peer: func(t *testing.T, s store.Store) store.Store {
			return open(t, c, s.(*etcdstore.Store).Prefix())
		},
		WatchQueue: testQueue,
		Forget: func(t *testing.T, s store.Store) {
			_, rev, err := s.ListRevision(t.Context(), "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Client(t).Compact(context.Background(), rev); err != nil {
				t.Fatalf("compact: %v", err)
			}
		},
	}
}

// TestContract runs the contract suite against a real three-member etcd
// cluster.
func TestContract(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3})
	storetest.Run(t, harness(c))
}

// TestContractTLS runs it again with TLS and client certificates between
// the store and etcd.
func TestContractTLS(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3, TLS: true})
	storetest.Run(t, harness(c))
}
