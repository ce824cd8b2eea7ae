package service

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// NewLogger returns the agent's logger at the given minimum level.
//
// Under systemd it logs to journald natively, with each slog level mapped to
// a journal priority (see Priority) and each attribute also stored as a
// journal field (KEY=value, upper-cased), so `journalctl -u edge-agent -p
// warning` and `journalctl DEVICE=gw-7` work. Otherwise it writes text
// (slog.TextHandler) to w, which callers pass as os.Stderr.
//
// How "under systemd" is detected: systemd sets JOURNAL_STREAM to
// "DEVICE:INODE" of the stream it connected to stdout/stderr
// (StandardError=journal, the default). The journal is used when that pair
// matches what fstat reports for this process's stderr (fd 2) and journald's
// native socket answers. This is the "automatic protocol upgrading" that
// systemd documents: a child that inherited JOURNAL_STREAM but whose stderr
// was redirected (a shell in an SSH session, `edge-agent ... 2>file`) does
// not match and keeps writing text. A malformed JOURNAL_STREAM means text.
//
// If a journal write fails (journald restarting, a record over the socket's
// size limit) the record is written as text to w instead, which systemd also
// collects, so no record is lost.
func NewLogger(w io.Writer, level slog.Level) *slog.Logger {
	text := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	if !journalWanted(journal.StderrIsJournalStream, journal.Enabled) {
		return slog.New(text)
	}
	return slog.New(newJournalHandler(journal.Send, identifier(), level, text))
}

// journalWanted reports whether stderr is systemd's journal stream and the
// journal's native socket is reachable.
func journalWanted(stderrIsJournal func() (bool, error), enabled func() bool) bool {
	ok, err := stderrIsJournal()
	return err == nil && ok && enabled()
}

// identifier is the SYSLOG_IDENTIFIER the records carry: the program name.
func identifier() string {
	if len(os.Args) == 0 || os.Args[0] == "" {
		return "edge-agent"
	}
	return filepath.Base(os.Args[0])
}

// Priority maps a slog level to a journal (syslog) priority:
// below Info is debug, Info up to Warn is info, Warn up to Error is warning,
// Error up to Error+4 is err, and anything above is crit.
func Priority(l slog.Level) journal.Priority {
	switch {
	case l < slog.LevelInfo:
		return journal.PriDebug
	case l < slog.LevelWarn:
		return journal.PriInfo
	case l < slog.LevelError:
		return journal.PriWarning
	case l < slog.LevelError+4:
		return journal.PriErr
	default:
		return journal.PriCrit
	}
}

// sendFunc is journal.Send's signature; tests pass a fake.
type sendFunc func(message string, priority journal.Priority, vars map[string]string) error

// journalHandler is a slog.Handler that sends each record to journald as
// one entry. MESSAGE is the record's message followed by its attributes in
// slog's text form (journalctl shows MESSAGE only); every attribute is also
// a field of its own.
type journalHandler struct {
	send  sendFunc
	ident string
	level slog.Leveler
	// fallback receives records the journal refused (text on stderr).
	fallback slog.Handler
	// attrs renders attributes in text form into buf; it carries the
	// handler's WithAttrs/WithGroup state. buf is shared by every handler
	// derived from the same NewLogger call and guarded by mu.
	attrs slog.Handler
	mu    *sync.Mutex
	buf   *bytes.Buffer
	// fields are the journal fields of the attributes added by WithAttrs,
	// and prefix the field-name prefix of the open groups ("G1_G2_").
	fields map[string]string
	prefix string
}

func newJournalHandler(send sendFunc, ident string, level slog.Leveler, fallback slog.Handler) *journalHandler {
	buf := new(bytes.Buffer)
	return &journalHandler{
		send:     send,
		ident:    ident,
		level:    level,
		fallback: fallback,
		attrs: slog.NewTextHandler(buf, &slog.HandlerOptions{
			ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
				if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
					return slog.Attr{} // journald records time and priority itself
				}
				return a
			},
		}),
		mu:     new(sync.Mutex),
		buf:    buf,
		fields: map[string]string{},
	}
}

func (h *journalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	vars := make(map[string]string, len(h.fields)+r.NumAttrs()+4)
	for k, v := range h.fields {
		vars[k] = v
	}
	r.Attrs(func(a slog.Attr) bool {
		addField(vars, h.prefix, a)
		return true
	})
	vars["SYSLOG_IDENTIFIER"] = h.ident
	if r.PC != 0 {
		f, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		vars["CODE_FILE"] = f.File
		vars["CODE_LINE"] = strconv.Itoa(f.Line)
		vars["CODE_FUNC"] = f.Function
	}

	h.mu.Lock()
	h.buf.Reset()
	err := h.attrs.Handle(ctx, r)
	text := strings.TrimSuffix(h.buf.String(), "\n")
	h.mu.Unlock()
	msg := r.Message
	if err == nil && text != "" {
		msg += " " + text
	}

	if err := h.send(msg, Priority(r.Level), vars); err != nil {
		return h.fallback.Handle(ctx, r)
	}
	return nil
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	h2 := *h
	h2.fields = make(map[string]string, len(h.fields)+len(as))
	for k, v := range h.fields {
		h2.fields[k] = v
	}
	for _, a := range as {
		addField(h2.fields, h.prefix, a)
	}
	h2.attrs = h.attrs.WithAttrs(as)
	h2.fallback = h.fallback.WithAttrs(as)
	return &h2
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix = h.prefix + name + "_"
	h2.attrs = h.attrs.WithGroup(name)
	h2.fallback = h.fallback.WithGroup(name)
	return &h2
}

// reserved are journal fields the handler sets itself; attributes of the
// same name are kept in MESSAGE only.
var reserved = map[string]bool{
	"MESSAGE": true, "MESSAGE_ID": true, "PRIORITY": true, "SYSLOG_IDENTIFIER": true,
	"CODE_FILE": true, "CODE_LINE": true, "CODE_FUNC": true,
}

// addField stores attribute a (flattening groups) as journal fields.
func addField(vars map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "_"
		}
		for _, ga := range v.Group() {
			addField(vars, p, ga)
		}
		return
	}
	if a.Key == "" {
		return
	}
	name := fieldName(prefix + a.Key)
	if name == "" || reserved[name] {
		return
	}
	vars[name] = v.String()
}

// fieldName turns an attribute key into a valid journal field name:
// upper-case letters, digits and underscores, starting with a letter, at
// most 64 bytes. It returns "" when nothing valid remains.
func fieldName(key string) string {
	b := make([]byte, 0, len(key))
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z':
			c -= 'a' - 'A'
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		default:
			c = '_'
		}
		b = append(b, c)
	}
	s := strings.TrimLeft(string(b), "_0123456789")
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}
