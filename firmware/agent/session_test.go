package agent

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
)

// TestSessionEndReachesTheSession: the fleet's session-end message on the
// control stream cancels that session, with the fleet's reason as the
// cause sshd shows the user, and no other.
func TestSessionEndReachesTheSession(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	ctx1, cancel1 := context.WithCancelCause(context.Background())
	ctx2, cancel2 := context.WithCancelCause(context.Background())
	a.live.add("s1", cancel1)
	a.live.add("s2", cancel2)
	a.onMessage(&proto.SessionEnd{SessionID: "s1", Message: "the fleet user \"alice\" was removed"})
	var end *services.Ended
	if !errors.As(context.Cause(ctx1), &end) || end.Message != "the fleet user \"alice\" was removed" {
		t.Errorf("s1's cause = %v, want the fleet's reason", context.Cause(ctx1))
	}
	if ctx2.Err() != nil {
		t.Error("another session was ended too")
	}
	a.live.remove("s2")
	a.onMessage(&proto.SessionEnd{SessionID: "s2", Message: "x"})
	if ctx2.Err() != nil {
		t.Error("a session that had ended was ended again")
	}
}
