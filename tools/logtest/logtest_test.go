package logtest

import (
	"strings"
	"testing"
)

func TestRecorderKeepsLines(t *testing.T) {
	r := NewRecorder(t)
	log := r.Logger()
	log.Debug("first", "k", 1)
	log.Info("second")
	got := r.String()
	if !strings.Contains(got, "level=DEBUG msg=first k=1\n") || !strings.Contains(got, "level=INFO msg=second\n") {
		t.Errorf("recorded %q, want both lines", got)
	}
}

// A goroutine that logs after its test ended must not make testing panic.
func TestLogAfterTheTestEnded(t *testing.T) {
	var late *Recorder
	t.Run("inner", func(t *testing.T) {
		late = NewRecorder(t)
		Logger(t).Info("during")
	})
	late.Write([]byte("after\n")) // dropped, kept
	if !strings.Contains(late.String(), "after") {
		t.Errorf("the recorder lost a late line: %q", late.String())
	}
}
