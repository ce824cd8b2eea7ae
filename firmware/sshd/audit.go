package sshd

import (
	"context"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/proto"
)

// SessionInfo describes a session that starts, for Config.Record.
type SessionInfo struct {
	// Kind is "shell", "exec", "sftp" or "scp" (legacy scp, an exec);
	// Command the exec command.
	Kind    string
	Command string
	// Term, Cols and Rows describe the terminal, when there is one (zero
	// without a terminal).
	Term       string
	Cols, Rows int
}

// Recorder records a session's terminal output (the agent writes asciicast
// files). Its methods must be safe for concurrent use and must not block
// for long: the user's output waits for Output.
type Recorder interface {
	// Output records bytes as they are sent to the user.
	Output(p []byte)
	// Resize records a new terminal size.
	Resize(cols, rows int)
	// Close ends the recording.
	Close() error
}

// InputRecorder is a Recorder that also records what the user types; a
// Recorder that implements it gets the terminal's input.
type InputRecorder interface {
	Input(p []byte)
}

// inputFrom returns r, teeing what is read into the recorder's input
// events when it records input.
func inputFrom(r io.Reader, rec Recorder) io.Reader {
	if ir, ok := rec.(InputRecorder); ok {
		return io.TeeReader(r, inputWriter{ir})
	}
	return r
}

type inputWriter struct{ ir InputRecorder }

func (w inputWriter) Write(p []byte) (int, error) {
	w.ir.Input(p)
	return len(p), nil
}

// audit records ev through Config.Audit; an error means the action must
// not go ahead.
func (s *Server) audit(ctx context.Context, ev *proto.AuditEvent) error {
	if s.cfg.Audit == nil {
		return nil
	}
	if ev.Outcome == "" {
		ev.Outcome = proto.OutcomeSuccess
	}
	return s.cfg.Audit(ctx, ev)
}

// deny records a refusal; the refusal stands whatever the audit says.
func (s *Server) deny(ctx context.Context, what, reason string) {
	s.audit(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Message: reason,
		Fields: map[string]string{"action": what}})
}

// begin records a session command that is about to start and sets up its
// recording; a non-nil error refuses the request.
func (s *session) begin(info SessionInfo) error {
	typ := proto.EventExec
	if info.Kind == "sftp" || info.Kind == "scp" {
		typ = proto.EventFileTransfer
	}
	fields := map[string]string{"kind": info.Kind, "pty": strconv.FormatBool(s.pty != nil)}
	if info.Command != "" {
		fields["command"] = info.Command
	}
	if info.Kind == "sftp" || info.Kind == "scp" {
		fields["protocol"] = info.Kind
	}
	if err := s.c.s.audit(s.ctx, &proto.AuditEvent{Type: typ, Fields: fields}); err != nil {
		s.log.Warn("sshd: session refused: its audit event could not be written", "err", err)
		return err
	}
	s.kind, s.command, s.began = info.Kind, info.Command, time.Now()
	// Every shell and command is recorded, with a terminal or without
	// (ssh -T host can run an interactive program too); file copies are
	// audited as transfers instead.
	if (info.Kind == "shell" || info.Kind == "exec") && s.c.s.cfg.Record != nil {
		if s.pty != nil {
			info.Term, info.Cols, info.Rows = s.pty.Term, int(clamp16(s.pty.Cols)), int(clamp16(s.pty.Rows))
		}
		s.rec = s.c.s.cfg.Record(s.ctx, info)
	}
	return nil
}

// end records how a session command ended and closes its recording.
func (s *session) end(info exitInfo) {
	if s.rec != nil {
		if err := s.rec.Close(); err != nil {
			s.log.Warn("sshd: session recording", "err", err)
		}
	}
	fields := map[string]string{
		"kind":      s.kind,
		"bytes_out": strconv.FormatInt(s.out.Load(), 10),
		"duration":  time.Since(s.began).Round(time.Millisecond).String(),
	}
	if s.command != "" {
		fields["command"] = s.command
	}
	outcome := proto.OutcomeSuccess
	switch {
	case info.err != nil:
		outcome, fields["error"] = proto.OutcomeFailure, info.err.Error()
	case info.signal != "":
		fields["signal"] = info.signal
	default:
		fields["status"] = strconv.Itoa(info.status)
	}
	if s.rec != nil {
		fields["recorded"] = "true"
	}
	s.c.s.audit(s.ctx, &proto.AuditEvent{Type: proto.EventExecEnd, Outcome: outcome, Fields: fields})
}

// outputTo returns the writer a command's output goes through on its way
// to w: it counts the bytes and, for a terminal, records them once sent.
func (c *command) outputTo(w io.Writer) io.Writer {
	return &tapWriter{w: w, n: c.out, rec: c.rec}
}

type tapWriter struct {
	w   io.Writer
	n   *atomic.Int64
	rec Recorder
}

func (t *tapWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if t.n != nil {
		t.n.Add(int64(n))
	}
	if t.rec != nil && n > 0 {
		t.rec.Output(p[:n])
	}
	return n, err
}

// tapRW counts what an in-process sftp server writes to its channel.
type tapRW struct {
	io.ReadWriteCloser
	n *atomic.Int64
}

func (t *tapRW) Write(p []byte) (int, error) {
	n, err := t.ReadWriteCloser.Write(p)
	t.n.Add(int64(n))
	return n, err
}
