package memstore_test

import (
	"testing"

	"go.uber.org/goleak"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/store/storetest"
)

const (
	testQueue   = 64
	testHistory = 128
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestContract(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) store.Store {
			return memstore.NewWith(memstore.Options{Watch: hub.Options{Queue: testQueue, History: testHistory}})
		},
		WatchQueue: testQueue,
		Forget:     storetest.ForgetByWriting(testHistory),
	})
}
