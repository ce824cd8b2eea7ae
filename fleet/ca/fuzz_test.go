package ca

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzDecode feeds stored CA values (bytes from disk or a remote store) to
// the decoder: it must return an error or a usable key set, never panic.
func FuzzDecode(f *testing.F) {
	for _, typ := range types {
		kr, err := newKey(typ, "c", time.Unix(1700000000, 0))
		if err != nil {
			f.Fatal(err)
		}
		b, err := json.Marshal(record{Version: recordVersion, Active: kr.ID, Keys: []keyRecord{kr}})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"version":1,"active":"a","keys":[{"id":"a","key":"AAAA","cert":"AAAA"}]}`))
	f.Add([]byte(`{"version":1,"keys":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, typ := range types {
			_, set, err := decode(typ, data)
			if err != nil {
				continue
			}
			if set.active() == nil || set.active().signer == nil {
				t.Fatalf("decode %s: ok but no active signer", typ)
			}
		}
	})
}

// FuzzSignCSR feeds CSR bytes (from the network, at join and login) to the
// signer: it must refuse bad ones with an error, never panic.
func FuzzSignCSR(f *testing.F) {
	clk := newClock()
	a, err := LoadOrCreate(f.Context(), openStore(f), "c", clk.Now)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(makeCSR(f, newECKey(f)))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, csr []byte) {
		der, err := a.SignDeviceX509(csr, "dev", time.Hour)
		if err != nil {
			return
		}
		if len(der) == 0 {
			t.Fatal("SignDeviceX509: no error and no certificate")
		}
	})
}
