package proto

import (
	"bytes"
	"testing"
)

func TestLinkReset(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	tag := []byte("tag-1234")
	token := LinkResetToken(key, tag)
	if len(token) != LinkMACSize {
		t.Fatalf("token is %d bytes, want %d", len(token), LinkMACSize)
	}
	if !bytes.Equal(token, LinkResetToken(key, tag)) {
		t.Fatal("the same key and tag give different tokens")
	}
	reset := AppendLinkReset(nil, token)
	if len(reset) != LinkResetSize || len(reset) > 1+LinkTagSize {
		t.Fatalf("reset is %d bytes, want %d and no more than a keep-alive", len(reset), LinkResetSize)
	}
	otherTag := LinkResetToken(key, []byte("tag-9999"))
	otherKey := LinkResetToken(bytes.Repeat([]byte{8}, 32), tag)
	tests := []struct {
		name  string
		b     []byte
		token []byte
		want  bool
	}{
		{"the right token", reset, token, true},
		{"the bare reset byte of the earlier revision", []byte{LinkResetByte}, token, false},
		{"a token for another connection", AppendLinkReset(nil, otherTag), token, false},
		{"a token under another fleet's key", AppendLinkReset(nil, otherKey), token, false},
		{"one bit flipped", append(AppendLinkReset(nil, token[:7]), token[7]^1), token, false},
		{"too long", append(AppendLinkReset(nil, token), 0), token, false},
		{"a poke", []byte{LinkPokeByte}, token, false},
		{"no token known", reset, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsLinkReset(tt.b, tt.token); got != tt.want {
				t.Errorf("IsLinkReset(%x) = %v, want %v", tt.b, got, tt.want)
			}
		})
	}
}

func TestLinkHurry(t *testing.T) {
	key := bytes.Repeat([]byte{3}, LinkKeySize)
	want := LinkHurry{Seq: 42, Reason: HurryReceiving, Session: SessionTag([]byte("secret")), Received: 1 << 33}
	h := AppendLinkHurry(nil, key, want)
	if len(h) != LinkHurrySize {
		t.Fatalf("hurry is %d bytes, want %d", len(h), LinkHurrySize)
	}
	if got, ok := ParseLinkHurry(h, key); !ok || got != want {
		t.Fatalf("ParseLinkHurry = %+v, %v; want %+v, true", got, ok, want)
	}
	forged := append([]byte{}, h...)
	forged[8]++ // a later sequence number, the old MAC
	moved := append([]byte{}, h...)
	moved[LinkHurrySize-LinkMACSize-1]++ // another position, the old MAC
	tests := []struct {
		name string
		b    []byte
		key  []byte
	}{
		{"another key", h, bytes.Repeat([]byte{4}, LinkKeySize)},
		{"no key", h, nil},
		{"sequence number changed", forged, key},
		{"position changed", moved, key},
		{"truncated", h[:LinkHurrySize-1], key},
		{"a ping of the same size", append([]byte{LinkPingByte}, h[1:]...), key},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, ok := ParseLinkHurry(tt.b, tt.key); ok {
				t.Errorf("ParseLinkHurry(%x) accepted it", tt.b)
			}
		})
	}
	if SessionTag([]byte("a")) == SessionTag([]byte("b")) {
		t.Error("two secrets have the same session tag")
	}
}

func FuzzLinkDatagrams(f *testing.F) {
	key := bytes.Repeat([]byte{5}, LinkKeySize)
	token := LinkResetToken(key, []byte("12345678"))
	f.Add(AppendLinkHurry(nil, key, LinkHurry{Seq: 1, Reason: HurrySending, Received: 9}))
	f.Add(AppendLinkReset(nil, token))
	f.Add([]byte{LinkPokeByte})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, ok := ParseLinkHurry(b, key); ok && !bytes.Equal(b, AppendLinkHurry(nil, key, h)) {
			t.Fatalf("accepted hurry %x differs from the encoding of what it says", b)
		}
		if IsLinkReset(b, token) && !bytes.Equal(b, AppendLinkReset(nil, token)) {
			t.Fatalf("accepted reset %x differs from the real one", b)
		}
	})
}
