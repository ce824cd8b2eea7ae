package service

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"
)

func TestPriority(t *testing.T) {
	tests := []struct {
		level slog.Level
		want  journal.Priority
	}{
		{slog.LevelDebug - 4, journal.PriDebug},
		{slog.LevelDebug, journal.PriDebug},
		{slog.LevelInfo, journal.PriInfo},
		{slog.LevelInfo + 2, journal.PriInfo},
		{slog.LevelWarn, journal.PriWarning},
		{slog.LevelError, journal.PriErr},
		{slog.LevelError + 3, journal.PriErr},
		{slog.LevelError + 4, journal.PriCrit},
	}
	for _, tt := range tests {
		t.Run(tt.level.String(), func(t *testing.T) {
			if got := Priority(tt.level); got != tt.want {
				t.Errorf("Priority(%v) = %v, want %v", tt.level, got, tt.want)
			}
		})
	}
}

type sent struct {
	msg  string
	pri  journal.Priority
	vars map[string]string
}

func TestJournalHandler(t *testing.T) {
	var got []sent
	send := func(msg string, pri journal.Priority, vars map[string]string) error {
		got = append(got, sent{msg, pri, vars})
		return nil
	}
	var fallback bytes.Buffer
	h := newJournalHandler(send, "edge-agent", slog.LevelInfo, slog.NewTextHandler(&fallback, nil))
	log := slog.New(h).With("device", "gw-7")

	log.Debug("hidden")
	log.Info("tunnel up", "fleet", "fleet.example:443", "rtt_ms", 42)
	log.WithGroup("sess").Warn("replay", "id", "s1", "message", "clash", "9lives", "x")
	log.Error("join failed", slog.Group("err", "code", 3))

	if len(got) != 3 {
		t.Fatalf("sent %d records, want 3 (debug filtered): %+v", len(got), got)
	}
	tests := []struct {
		name    string
		rec     sent
		wantMsg string
		wantPri journal.Priority
		want    map[string]string
		absent  []string
	}{
		{"info", got[0], "tunnel up device=gw-7 fleet=fleet.example:443 rtt_ms=42", journal.PriInfo,
			map[string]string{"DEVICE": "gw-7", "FLEET": "fleet.example:443", "RTT_MS": "42", "SYSLOG_IDENTIFIER": "edge-agent"}, nil},
		{"group", got[1], "replay device=gw-7 sess.id=s1 sess.message=clash sess.9lives=x", journal.PriWarning,
			map[string]string{"DEVICE": "gw-7", "SESS_ID": "s1", "SESS_MESSAGE": "clash", "SESS_9LIVES": "x"}, nil},
		{"nested group", got[2], "join failed device=gw-7 err.code=3", journal.PriErr,
			map[string]string{"ERR_CODE": "3"}, []string{"MESSAGE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rec.msg != tt.wantMsg {
				t.Errorf("MESSAGE = %q, want %q", tt.rec.msg, tt.wantMsg)
			}
			if tt.rec.pri != tt.wantPri {
				t.Errorf("priority = %v, want %v", tt.rec.pri, tt.wantPri)
			}
			for k, v := range tt.want {
				if tt.rec.vars[k] != v {
					t.Errorf("field %s = %q, want %q", k, tt.rec.vars[k], v)
				}
			}
			for _, k := range tt.absent {
				if _, ok := tt.rec.vars[k]; ok {
					t.Errorf("field %s set, want it left to journald", k)
				}
			}
			if !strings.HasSuffix(tt.rec.vars["CODE_FILE"], "logger_test.go") || tt.rec.vars["CODE_LINE"] == "" {
				t.Errorf("CODE_FILE/CODE_LINE = %q/%q, want this test file", tt.rec.vars["CODE_FILE"], tt.rec.vars["CODE_LINE"])
			}
		})
	}
	if fallback.Len() != 0 {
		t.Errorf("fallback got %q, want nothing while the journal accepts", fallback.String())
	}
}

func TestJournalHandlerFallsBackToText(t *testing.T) {
	send := func(string, journal.Priority, map[string]string) error { return errors.New("journald away") }
	var fallback bytes.Buffer
	log := slog.New(newJournalHandler(send, "edge-agent", slog.LevelInfo, slog.NewTextHandler(&fallback, nil)))
	log.With("device", "gw-7").Info("still logged")
	if got := fallback.String(); !strings.Contains(got, `msg="still logged" device=gw-7`) {
		t.Errorf("fallback = %q, want the record as text", got)
	}
}

func TestFieldName(t *testing.T) {
	tests := map[string]string{
		"device":                      "DEVICE",
		"rtt.ms":                      "RTT_MS",
		"_hidden":                     "HIDDEN",
		"9lives":                      "LIVES",
		"ünï":                         "N__",
		"":                            "",
		"___":                         "",
		"a-b c":                       "A_B_C",
		"x" + strings.Repeat("y", 80): "X" + strings.Repeat("Y", 63),
	}
	for in, want := range tests {
		if got := fieldName(in); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJournalWanted(t *testing.T) {
	var st syscall.Stat_t
	if err := syscall.Fstat(2, &st); err != nil {
		t.Fatalf("fstat stderr: %v", err)
	}
	stderrID := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	tests := []struct {
		name    string
		env     string
		enabled bool
		want    bool
	}{
		{"not under systemd", "", true, false},
		{"stream is stderr and journald up", stderrID, true, true},
		{"stream is stderr but journald down", stderrID, false, false},
		{"stderr redirected elsewhere", fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), true, false},
		{"malformed", "journal", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("JOURNAL_STREAM", tt.env)
			got := journalWanted(journal.StderrIsJournalStream, func() bool { return tt.enabled })
			if got != tt.want {
				t.Errorf("journalWanted = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNewLoggerTextOutsideSystemd(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	var buf bytes.Buffer
	log := NewLogger(&buf, slog.LevelWarn)
	log.Info("quiet")
	log.Warn("loud", "k", "v")
	got := buf.String()
	if strings.Contains(got, "quiet") || !strings.Contains(got, `level=WARN msg=loud k=v`) {
		t.Errorf("text output = %q, want only the warning", got)
	}
}

func TestMain(m *testing.M) {
	// The tests set NOTIFY_SOCKET and JOURNAL_STREAM themselves; a test
	// binary started by systemd must not notify the real manager.
	for _, k := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"} {
		os.Unsetenv(k)
	}
	os.Exit(m.Run())
}
