package update

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"golang.org/x/time/rate"
)

// Downloads.
//
// A download goes to DIR/SHA256.part; DIR/SHA256.part.synced holds how many
// of its bytes were fsync'd. After a blackout (the request fails) or a
// restart, the part file is cut back to that length and an HTTP Range
// request asks for the rest: nothing downloaded and synced is fetched
// twice. The whole file's SHA-256 is checked at the end; a mismatch starts
// the download over.

// syncEvery is how many bytes are written between fsyncs of a part file.
const syncEvery = 256 << 10

// stallTimeout ends a request that receives nothing for this long; the
// download then goes on with a new one.
const stallTimeout = time.Minute

// fetch is one artefact (or delta) download.
type fetch struct {
	client *http.Client
	url    string
	path   string // final file, DIR/SHA256
	size   int64
	sum    []byte
	limit  *rate.Limiter // nil: no cap
	// progress is told the bytes on disk after each sync.
	progress func(done int64)
	// log, when set, hears where each request starts.
	log *slog.Logger
}

// errCorrupt is returned when the finished download has the wrong hash.
var errCorrupt = errors.New("update: the download does not match its SHA-256")

// run downloads until the file is complete or ctx ends, retrying with
// back-off. It returns the final file's path.
func (f *fetch) run(ctx context.Context, retry func(ctx context.Context, attempt int) error) error {
	if sum, err := fileSHA256(f.path); err == nil && hexEq(sum, f.sum) {
		return nil
	}
	for attempt := 0; ; attempt++ {
		err := f.once(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, errCorrupt) && attempt > 2 {
			return err
		}
		if f.log != nil {
			// The fleet's reason (a blob no running replica holds, say).
			f.log.Info("download failed", "err", err)
		}
		if err := retry(ctx, attempt); err != nil {
			return err
		}
	}
}

func hexEq(h string, b []byte) bool { return h == hex.EncodeToString(b) }

// once makes one request for what is missing.
func (f *fetch) once(ctx context.Context) error {
	part := f.path + ".part"
	have := readSynced(part)
	pf, err := os.OpenFile(part, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("update: open %s: %w", part, err)
	}
	defer pf.Close()
	if st, err := pf.Stat(); err != nil || st.Size() < have || have > f.size {
		have = 0
	}
	if err := pf.Truncate(have); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	if have < f.size {
		if f.log != nil {
			f.log.Info("downloading", "from_byte", have, "size", f.size)
		}
		if err := f.get(ctx, pf, part, have); err != nil {
			return err
		}
	}
	// Check the whole file.
	if _, err := pf.Seek(0, io.SeekStart); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, pf); err != nil {
		return fmt.Errorf("update: read %s: %w", part, err)
	}
	if !hexEq(hex.EncodeToString(h.Sum(nil)), f.sum) {
		pf.Truncate(0)
		writeSynced(part, 0)
		return errCorrupt
	}
	pf.Close()
	if err := os.Rename(part, f.path); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	os.Remove(part + ".synced")
	return nil
}

// get appends the bytes from have on to pf.
func (f *fetch) get(ctx context.Context, pf *os.File, part string, have int64) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.url, nil)
	if err != nil {
		return err
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("update: download: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
	case resp.StatusCode == http.StatusOK:
		have = 0 // the server sent it all
		if err := pf.Truncate(0); err != nil {
			return err
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		pf.Truncate(0)
		writeSynced(part, 0)
		return fmt.Errorf("update: download: the fleet refused the range from %d", have)
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("update: download: %s: %s", resp.Status, msg)
	}
	if _, err := pf.Seek(have, io.SeekStart); err != nil {
		return err
	}
	// A request that stalls is ended and the next one resumes.
	stall := time.AfterFunc(stallTimeout, func() { cancel(errors.New("update: download stalled")) })
	defer stall.Stop()
	buf := make([]byte, 32<<10)
	unsynced := 0
	body := io.LimitReader(resp.Body, f.size-have)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			stall.Reset(stallTimeout)
			if f.limit != nil {
				if err := f.limit.WaitN(ctx, n); err != nil {
					return err
				}
			}
			if _, err := pf.Write(buf[:n]); err != nil {
				return fmt.Errorf("update: write %s: %w", part, err)
			}
			have += int64(n)
			unsynced += n
			if unsynced >= syncEvery || have == f.size {
				if err := pf.Sync(); err != nil {
					return fmt.Errorf("update: sync %s: %w", part, err)
				}
				writeSynced(part, have)
				unsynced = 0
				if f.progress != nil {
					f.progress(have)
				}
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			pf.Sync()
			writeSynced(part, have)
			if c := context.Cause(ctx); c != nil {
				rerr = c
			}
			return fmt.Errorf("update: download: %w", rerr)
		}
	}
	if have != f.size {
		return fmt.Errorf("update: download ended at %d of %d bytes", have, f.size)
	}
	return nil
}

// readSynced returns how many bytes of part were fsync'd.
func readSynced(part string) int64 {
	b, err := os.ReadFile(part + ".synced")
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

func writeSynced(part string, n int64) {
	writeFileSync(part+".synced", []byte(strconv.FormatInt(n, 10)), 0o600)
}
