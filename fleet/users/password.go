package users

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// HashParams are the argon2id parameters for new password hashes. Stored
// hashes carry their own parameters, so changing these later only affects
// new hashes, and a user's hash is upgraded at their next successful login.
// The zero value means the defaults given per field.
type HashParams struct {
	// Time is the number of passes. Default 1.
	Time uint32
	// MemoryKiB is the memory used, in KiB. Default 64 MiB (65536).
	MemoryKiB uint32
	// Threads is the parallelism. Default 4.
	Threads uint8
}

// Defaults: argon2id with t=1, m=64 MiB, p=4, 16-byte salt, 32-byte key,
// the choice that golang.org/x/crypto/argon2 recommends and one of the
// settings RFC 9106 (section 4) lists; about 50 ms on a server core.
// OWASP's lighter minimum (m=19 MiB, t=2, p=1) is weaker against GPUs.
const (
	defaultTime   = 1
	defaultMemory = 64 * 1024
	defaultThread = 4
	saltLen       = 16
	keyLen        = 32
)

// Bounds for decoding stored hashes, so a corrupt record cannot make a
// login allocate without limit.
const (
	maxTime   = 64
	maxMemory = 1 << 20 // 1 GiB in KiB
)

func (p HashParams) withDefaults() HashParams {
	if p.Time == 0 {
		p.Time = defaultTime
	}
	if p.MemoryKiB == 0 {
		p.MemoryKiB = defaultMemory
	}
	if p.Threads == 0 {
		p.Threads = defaultThread
	}
	// argon2 needs at least 8 KiB per thread; it silently raises memory
	// otherwise, and the stored string must say what was really used.
	if p.MemoryKiB < 8*uint32(p.Threads) {
		p.MemoryKiB = 8 * uint32(p.Threads)
	}
	return p
}

// phc is a decoded password hash.
type phc struct {
	params HashParams
	salt   []byte
	key    []byte
}

// hashPassword returns a PHC-style string:
//
//	$argon2id$v=19$m=65536,t=1,p=4$SALT$KEY
//
// with SALT and KEY in unpadded standard base64.
func hashPassword(password string, p HashParams) string {
	p = p.withDefaults()
	salt := make([]byte, saltLen)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, keyLen)
	return encodePHC(phc{params: p, salt: salt, key: key})
}

func encodePHC(h phc) string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, h.params.MemoryKiB, h.params.Time, h.params.Threads,
		b64.EncodeToString(h.salt), b64.EncodeToString(h.key))
}

var errBadHash = errors.New("users: stored password hash is malformed")

// decodePHC parses a string made by hashPassword, refusing anything else.
func decodePHC(s string) (phc, error) {
	var h phc
	if strings.ContainsAny(s, "\r\n") { // base64 decoding skips them
		return h, errBadHash
	}
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return h, errBadHash
	}
	if parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return h, errBadHash
	}
	var m, t, p uint64
	seen := 0
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || v == "" || (len(v) > 1 && v[0] == '0') {
			return h, errBadHash
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return h, errBadHash
		}
		switch {
		case k == "m" && seen == 0:
			m = n
		case k == "t" && seen == 1:
			t = n
		case k == "p" && seen == 2:
			p = n
		default:
			return h, errBadHash
		}
		seen++
	}
	if seen != 3 || t < 1 || t > maxTime || p < 1 || p > 255 || m < 8*p || m > maxMemory {
		return h, errBadHash
	}
	b64 := base64.RawStdEncoding.Strict()
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) < 8 || len(salt) > 64 {
		return h, errBadHash
	}
	key, err := b64.DecodeString(parts[5])
	if err != nil || len(key) < 16 || len(key) > 64 {
		return h, errBadHash
	}
	h.params = HashParams{Time: uint32(t), MemoryKiB: uint32(m), Threads: uint8(p)}
	h.salt, h.key = salt, key
	return h, nil
}

// verify reports whether password matches the decoded hash, in time that
// does not depend on where they differ.
func (h phc) verify(password string) bool {
	got := argon2.IDKey([]byte(password), h.salt, h.params.Time, h.params.MemoryKiB, h.params.Threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(got, h.key) == 1
}
